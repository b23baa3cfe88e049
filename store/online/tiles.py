"""Aggregation families online: partial aggregates per key and tile in Redis (docs/aggregations.md).

`TileStore.apply` folds a batch of accepted events (`apply_table`: the rows of an offline-shaped Arrow
table, which is how the streaming job, the backfills and `materialize` call it): grouped by key and
pre-aggregated per tile in Python, then one Lua script (`apply_tiles.lua`) per few hundred keys, pipelined,
which skips a key's batch holding a message id already applied (the caller folds that key again without it)
and merges the rest into the key's state. `TileStore.read` is one MGET of the keys' states, merged in numpy
for the time of the read. `store/online/tile_layout.py` has the layout.

Known gaps: counts, sums, min and max are doubles in Redis (exact to 2^53); a read is the definition's value
at the time of the read only (tiles keep no ingest times, so a read "as of" an earlier time cannot leave out
events ingested since); a message id is remembered while a window reads its tile and at least 7 days, so a
lifetime state counts an event again when it is replayed later than that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from redis.exceptions import NoScriptError

from fstore.schema.aggregations import FamilySpec
from fstore.store.online.redis import _UNAVAILABLE, _exchange, cycle_collector_paused, unavailable
from fstore.store.online.tile_layout import FUTURE, TileLayout, layout_digest
from fstore.store.online.tile_writes import KeyRecord, TileBatch, key_records

APPLY = (Path(__file__).with_name("apply_tiles.lua")).read_bytes()
KEYS_PER_SCRIPT = 200  # one script call runs this many keys: Redis serves nothing else meanwhile
_KEYS, _ARGS, _MEMBERS = attrgetter("keys"), attrgetter("args"), attrgetter("members")  # of a KeyRecord


class TileEvent(NamedTuple):
    """One event of a family's source, as the tiles need it (a named tuple: a batch makes thousands)."""

    key: int | str
    event_us: int
    ingest_us: int
    message_id: str
    backfilled: bool
    values: dict[str, Any]  # field name -> value (None: unset)


class TileStore:
    """The partial aggregates of aggregation families in one Redis (a standalone client, or a cluster's: a
    key's state and id sets share one slot, so each key's script runs on its node)."""

    def __init__(self, client: Any, url: str | None = None) -> None:
        from redis.cluster import RedisCluster

        self.client = client
        self.url = url or _client_url(client)  # for errors: a Redis that cannot be reached is named
        self._cluster = isinstance(client, RedisCluster)
        self._script = client.register_script(APPLY)
        self._sha: bytes | None = None
        self._layouts: dict[str, TileLayout] = {}

    @classmethod
    def beside(cls, online: Any) -> TileStore:
        """Tiles in the same Redis as a RedisOnlineStore (its URL: the embedded server's socket too)."""
        import redis
        from redis.cluster import RedisCluster

        options = online.client_options()  # its timeouts: a stalled Redis fails a tile read as it fails a row's
        if online.options.cluster:
            return cls(RedisCluster.from_url(online.url, **options), online.url)
        return cls(redis.Redis.from_url(online.url, **options), online.url)

    def close(self) -> None:
        self.client.close()

    def layout(self, family: FamilySpec) -> TileLayout:
        layout = self._layouts.get(family.name)
        if layout is None or layout.family is not family:  # a reloaded registry: its family may have changed
            layout = self._layouts[family.name] = TileLayout(family)
        return layout

    def apply(self, family: FamilySpec, events: Sequence[TileEvent], now_us: int | None = None) -> tuple[int, int]:
        """Fold accepted events into their tiles; returns (applied, not accepted: later than the allowed
        lateness, or further ahead of their ingest time than ingest allows). A message id already applied
        changes nothing, so a redelivered batch is harmless. `now_us`: the clock that decides which tiles a
        window still reads (tests move it)."""
        with cycle_collector_paused(len(events)):  # a batch's records are freed when it is done
            return self._apply(family, TileBatch.from_events(self.layout(family), events), now_us)

    def apply_table(self, family: FamilySpec, table: Any, now_us: int | None = None) -> tuple[int, int]:
        """`apply` for the rows of an offline-shaped Arrow table of the family's source: the streaming job's
        batch as it is stored offline, a backfill's parquet batch, a history replayed by `materialize`. A row
        whose group-by field is unset (an `optional` field) belongs to no key: no tile folds it, as the
        export's join on the key leaves it out."""
        with cycle_collector_paused(table.num_rows):  # the batch's columns are freed with it, too
            return self._apply(family, TileBatch.from_table(self.layout(family), table), now_us)

    def _apply(self, family: FamilySpec, batch: TileBatch, now_us: int | None) -> tuple[int, int]:
        layout = self.layout(family)
        now = time.time_ns() // 1_000 if now_us is None else now_us
        ahead = batch.event_us - batch.ingest_us
        refused = (ahead > FUTURE) | (~batch.backfilled & (-ahead > family.allowed_lateness))
        keyed = np.fromiter((k is not None for k in batch.keys), bool, len(batch))
        rows = np.flatnonzero(keyed & ~refused)
        oldest = layout.oldest_numbers(now)
        applied = 0
        while len(rows):
            records = key_records(layout, batch, rows, oldest, now)
            try:  # as StoreUnavailableError, which the job retries: a batch applied again changes nothing
                duplicates = self._run(records, layout.call_head(now))
            except _UNAVAILABLE as exc:
                raise unavailable(self.url, exc) from exc
            applied += sum(map(len, map(_MEMBERS, records)))
            if not duplicates:  # as almost always
                break
            again: list[int] = []  # a key with a duplicate changed nothing: its other rows are folded again
            for record in records:
                seen = duplicates.get(record.key)
                if seen is not None:
                    applied -= len(record.members)
                    again += [r for r, m in zip(record.rows, record.members, strict=True) if m not in seen]
            rows = np.asarray(sorted(again), np.int64)
        return applied, int((keyed & refused).sum())

    def _run(self, records: list[KeyRecord], head: list[bytes]) -> dict[int | str, set[str]]:
        """Run the script over `records` (`head`: its arguments before theirs); the duplicate ids found, by key."""
        if self._cluster:  # redis-py refuses scripts in a cluster pipeline: one call per key, routed by it
            calls = [[r] for r in records]
            replies = [self._script(keys=r.keys, args=[*head, *r.args]) for r in records]
        else:
            calls = [records[i : i + KEYS_PER_SCRIPT] for i in range(0, len(records), KEYS_PER_SCRIPT)]
            replies = self._evalsha(head, calls)
        duplicates: dict[int | str, set[str]] = {}
        for chunk, reply in zip(calls, replies, strict=True):
            at = 0
            while at < len(reply):
                number, count = int(reply[at]), int(reply[at + 1])
                ids = {i.decode() if isinstance(i, bytes) else str(i) for i in reply[at + 2 : at + 2 + count]}
                duplicates[chunk[number - 1].key] = ids
                at += 2 + count
        return duplicates

    def _evalsha(self, script_head: list[bytes], calls: list[list[KeyRecord]]) -> list[Any]:
        """One EVALSHA per chunk of records, packed in RESP here and sent in one write (redis-py's packing of
        the scripts' arguments cost more than the scripts); a Redis that lost the script (restarted) is given
        it again and the calls redone (a call refused with NOSCRIPT did nothing)."""
        head = _bulks(script_head)
        bodies = []
        for chunk in calls:
            keys = list(chain.from_iterable(map(_KEYS, chunk)))
            args = list(chain.from_iterable(map(_ARGS, chunk)))
            count = str(len(keys)).encode()
            size = 3 + len(keys) + len(script_head) + len(args)
            bodies.append((size, b"$%d\r\n%b\r\n" % (len(count), count) + _bulks(keys) + head + _bulks(args)))
        for _ in range(3):
            sha = self._sha or self._load()
            commands = [b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n%b" % (n, len(sha), sha, body) for n, body in bodies]
            replies = _exchange(self.client.connection_pool, commands)
            if not any(isinstance(r, NoScriptError) for r in replies):
                break
            self._sha = None
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _load(self) -> bytes:
        self._sha = str(self.client.script_load(APPLY)).encode()
        return self._sha

    def drop_other_layouts(self, family: FamilySpec) -> int:
        """Delete the family's keys written under any other layout than its current one (a family whose
        features changed starts afresh under a new digest; the old keys of a windowed family would expire, a
        lifetime family's never would). Returns the keys deleted. One SCAN over the family's keys (every node
        of a cluster; its client splits a DEL by slot)."""
        layout = self.layout(family)
        digest, stale, dropped = layout.digest.encode(), [], 0
        try:
            for name in self.client.scan_iter(match=layout.family_pattern(), count=1_000):
                if layout_digest(name) != digest:
                    stale.append(name)
                if len(stale) >= 1_000:
                    dropped, stale = dropped + int(self.client.delete(*stale)), []
            if stale:
                dropped += int(self.client.delete(*stale))
        except _UNAVAILABLE as exc:
            raise unavailable(self.url, exc) from exc
        return dropped

    def read(self, family: FamilySpec, keys: Sequence[int | str], at_us: int | None = None) -> list[dict[str, Any]]:
        """Every feature of the family for each key at time `at_us` (default now; see the module's note)."""
        at_us = time.time_ns() // 1_000 if at_us is None else at_us
        layout = self.layout(family)
        if not keys:
            return []
        names = [layout.blob_key(k) for k in keys]
        if layout.lasts:
            names += [layout.last_key(k) for k in keys]
        try:
            states = self.client.mget_nonatomic(names) if self._cluster else self.client.mget(names)
        except _UNAVAILABLE as exc:
            raise unavailable(self.url, exc) from exc
        with cycle_collector_paused(len(keys)):  # the merge allocates a few objects per key, none in cycles
            return layout.merge(states[: len(keys)], states[len(keys) :], at_us)


def _client_url(client: Any) -> str:
    """A URL naming the Redis a client was made for (its password left out by `unavailable`)."""
    options = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not options:
        return "redis://" + ",".join(f"{n.host}:{n.port}" for n in client.get_nodes())  # a cluster's nodes
    if "path" in options:
        return f"unix://{options['path']}"
    return f"redis://{options.get('host', 'localhost')}:{options.get('port', 6379)}/{options.get('db', 0)}"


def _bulks(items: Sequence[bytes]) -> bytes:
    """Bulk strings in RESP, one after the other: one `%` over the whole list (half the time of one per item)."""
    framing: list[Any] = [None] * (2 * len(items))
    framing[::2] = map(len, items)
    framing[1::2] = items
    return b"$%d\r\n%b\r\n" * len(items) % tuple(framing)
