"""Aggregation families online: partial aggregates per (family, key, tile) in Redis (docs/aggregations.md).

Layout, per family, key and tile size: one hash of partial aggregates, `fsa:{<family>:<key>}:<tile seconds>`
(`...:L` for the lifetime state), whose fields are `<tile start seconds>|<aggregate>` (`c:` count, `s:` sum,
`n:` count of values, `m:` min, `M:` max, `l:` last value with `ol:` its order); and one hash of the message
ids applied, `fsi:{...}:<tile seconds>`, fields `<tile start>|<message id>`, so a redelivered message changes
nothing. A read of one key is one HMGET per tile size (four for a family of 1 h, 7 d, 30 d and lifetime
windows), of exactly the fields its windows need. The hash tag keeps a key's hashes on one cluster slot.
Tiles that left the widest window reading them (plus the allowed lateness) are deleted when a new tile is
started, and a hash expires when its newest tile does; lifetime states never expire.

Writes: one EVALSHA per event (all its tile sizes), pipelined per batch. Known gaps: MIN/MAX compare as
doubles in Lua (exact up to 2^53), and a read is the definition's value at the time of the read only (tiles
do not keep ingest times, so a read "as of" an earlier time cannot leave out events ingested since).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fstore.schema.aggregations import AggregationSpec, FamilySpec, tile

APPLY = """
local id = ARGV[1]
local pos = 2
local applied = 0
for k = 1, #KEYS, 2 do
  local values, ids = KEYS[k], KEYS[k + 1]
  local start, cutoff, expire_ms, ops = ARGV[pos], tonumber(ARGV[pos + 1]), ARGV[pos + 2], tonumber(ARGV[pos + 3])
  pos = pos + 4
  local prefix = start .. '|'
  local fresh = redis.call('HSETNX', ids, prefix .. id, '1') == 1
  if fresh and cutoff >= 0 and redis.call('HSETNX', values, prefix .. 't', '1') == 1 then
    -- a new tile: drop the tiles no window reads any more (once per tile and key, so the scan is cheap)
    for _, hash in ipairs({values, ids}) do
      for _, field in ipairs(redis.call('HKEYS', hash)) do
        local s = tonumber(string.match(field, '^(%d+)|'))
        if s and s < cutoff then redis.call('HDEL', hash, field) end
      end
    end
  end
  for _ = 1, ops do
    local op, field, value = ARGV[pos], prefix .. ARGV[pos + 1], ARGV[pos + 2]
    pos = pos + 3
    if fresh then
      if op == 'incr' then redis.call('HINCRBY', values, field, value)
      elseif op == 'incrf' then redis.call('HINCRBYFLOAT', values, field, value)
      elseif op == 'min' or op == 'max' then
        local current = redis.call('HGET', values, field)
        local v, c = tonumber(value), tonumber(current)
        if not current or (op == 'min' and v < c) or (op == 'max' and v > c) then
          redis.call('HSET', values, field, value)
        end
      elseif op == 'last' then
        local order, order_field = ARGV[pos], prefix .. 'o' .. ARGV[pos - 2]
        local current = redis.call('HGET', values, order_field)
        if not current or order > current then redis.call('HSET', values, field, value, order_field, order) end
      end
    end
    if op == 'last' then pos = pos + 1 end
  end
  if fresh then
    applied = 1
    if expire_ms ~= '0' then
      redis.call('PEXPIREAT', values, expire_ms)
      redis.call('PEXPIREAT', ids, expire_ms)
    end
  end
end
return applied
"""
RETENTION_MARGIN = 3_600_000_000  # µs kept past a tile's last reader, so a late read or clock skew finds it


@dataclass(frozen=True)
class TileEvent:
    """One event of a family's source, as the tiles need it."""

    key: int | str
    event_us: int
    ingest_us: int
    message_id: str
    backfilled: bool
    values: dict[str, Any]  # field name -> value (None: unset)


def tile_hashes(family: str, key: int | str, size: int | None) -> tuple[str, str]:
    """The hash of partial aggregates and the hash of applied message ids for one key and tile size."""
    tag, suffix = f"{{{family}:{key}}}", "L" if size is None else str(size // 1_000_000)
    return f"fsa:{tag}:{suffix}", f"fsi:{tag}:{suffix}"


def _start(size: int | None, start: int) -> str:
    return "0" if size is None else str(start // 1_000_000)


def _order(event: TileEvent) -> str:
    # compares as text in Lua: zero-padded times (events are after 2000), then the message id
    return f"{event.event_us:020d}|{event.ingest_us:020d}|{event.message_id}"


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class TileStore:
    """The partial aggregates of aggregation families in one Redis (a standalone client; on a cluster, every
    command of one event names keys of one slot)."""

    def __init__(self, client: Any) -> None:
        from redis.cluster import RedisCluster

        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._sha: str | None = None

    @classmethod
    def beside(cls, online: Any) -> TileStore:
        """Tiles in the same Redis as a RedisOnlineStore (its URL: the embedded server's socket too)."""
        import redis
        from redis.cluster import RedisCluster

        if online.options.cluster:
            return cls(RedisCluster.from_url(online.url))
        return cls(redis.Redis.from_url(online.url))

    def close(self) -> None:
        self.client.close()

    def apply(self, family: FamilySpec, events: Sequence[TileEvent], now_us: int | None = None) -> tuple[int, int]:
        """Fold accepted events into their tiles; returns (applied, too late). A message id already applied to
        a tile changes nothing there, so a redelivered batch is harmless. `now_us`: the clock that retires old
        tiles (tests move it)."""
        by_size: dict[int | None, list[AggregationSpec]] = defaultdict(list)
        for feature in family.features:
            by_size[feature.tile].append(feature)
        retention = {
            size: max(f.window or 0 for f in features) + family.allowed_lateness + RETENTION_MARGIN
            for size, features in by_size.items()
        }
        calls, late = [], 0
        now_ms = (time.time_ns() // 1_000 if now_us is None else now_us) // 1_000
        for event in events:
            if not event.backfilled and event.ingest_us - event.event_us > family.allowed_lateness:
                late += 1
                continue
            keys: list[str] = []
            args: list[str] = [event.message_id]
            for size, features in by_size.items():
                start = 0 if size is None else tile(event.event_us, size)
                expire_ms = 0 if size is None else (start + size + retention[size]) // 1_000
                if expire_ms and expire_ms <= now_ms:
                    continue  # a tile no window reads any more
                cutoff = -1 if size is None else (tile(now_ms * 1_000, size) - retention[size]) // 1_000_000
                keys += tile_hashes(family.name, event.key, size)
                ops = [op for f in features for op in _ops(f, event)]
                args += [_start(size, start), str(cutoff), str(expire_ms), str(len(ops))]
                for op in ops:
                    args += op
            if keys:
                calls.append((keys, args))
        if not calls:
            return 0, late
        sha = self._script()
        if self._cluster:  # redis-py refuses scripts in a cluster pipeline: one call each, routed by key
            return sum(int(self.client.evalsha(sha, len(keys), *keys, *args)) for keys, args in calls), late
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return sum(int(r) for r in pipe.execute()), late

    def read(self, family: FamilySpec, keys: Sequence[int | str], at_us: int | None = None) -> list[dict[str, Any]]:
        """Every feature of the family for each key at time `at_us` (default now; see the module's note)."""
        at_us = time.time_ns() // 1_000 if at_us is None else at_us
        windows = {f.name: _tile_starts(f, at_us) for f in family.features}
        sizes = sorted({f.tile for f in family.features}, key=lambda t: -1 if t is None else t)
        fields = {
            size: [f"{start}|{name}" for f in family.features if f.tile == size
                   for start in windows[f.name] for name in _fields(f)]
            for size in sizes
        }  # fmt: skip
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            for size in sizes:
                pipe.hmget(tile_hashes(family.name, key, size)[0], fields[size])
        replies = iter(pipe.execute())
        rows = []
        for _ in keys:
            found: dict[str, bytes] = {}
            for size in sizes:
                found.update((k, v) for k, v in zip(fields[size], next(replies), strict=True) if v is not None)
            rows.append({f.name: _merge(f, windows[f.name], found) for f in family.features})
        return rows

    def _script(self) -> str:
        if self._sha is None:
            self._sha = str(self.client.script_load(APPLY))
        return self._sha


def tile_events(family: FamilySpec, events: Sequence[Any]) -> list[TileEvent]:
    """The ingest job's decoded events (fstore.ingest.events.Event) of the family's source, for `apply`."""
    source = family.source
    names = {f.field.name for f in family.features if f.field is not None}
    out = []
    for e in events:
        m = e.message
        stamp = getattr(m, source.event_time.name)
        values = {n: getattr(m, n) if not _has_presence(m, n) or m.HasField(n) else None for n in names}
        out.append(
            TileEvent(
                getattr(m, family.group_by.name),
                stamp.seconds * 1_000_000 + stamp.nanos // 1_000,
                e.ingest_micros,
                e.message_id,
                e.message_id.startswith("backfill:"),
                values,
            )
        )
    return out


def tile_events_from_table(family: FamilySpec, table: Any) -> list[TileEvent]:
    """The rows of an offline-shaped Arrow table (a parquet backfill's batch) of the family's source."""
    import pyarrow.compute as pc

    names = sorted({f.field.name for f in family.features if f.field is not None})

    def micros(column: str) -> list[int]:
        return pc.cast(table.column(column), "int64").to_pylist()  # type: ignore[no-any-return]

    keys, ids = table.column(family.group_by.name).to_pylist(), table.column("message_id").to_pylist()
    events, ingests = micros(family.source.event_time.name), micros("ingest_time")
    values = {n: table.column(n).to_pylist() for n in names}
    return [
        TileEvent(
            keys[i], events[i], ingests[i], ids[i], ids[i].startswith("backfill:"), {n: values[n][i] for n in names}
        )
        for i in range(table.num_rows)
    ]


def _has_presence(message: Any, name: str) -> bool:
    return bool(message.DESCRIPTOR.fields_by_name[name].has_presence)


def _ops(feature: AggregationSpec, event: TileEvent) -> list[list[str]]:
    name = feature.name
    if feature.function == "count":
        return [["incr", f"c:{name}", "1"]]
    assert feature.field is not None
    value = event.values.get(feature.field.name)
    if value is None:
        return []
    floating = feature.field.kind in ("float", "double")
    if feature.function == "sum":
        return [["incrf" if floating else "incr", f"s:{name}", _encode(value)]]
    if feature.function == "mean":
        return [["incrf", f"s:{name}", _encode(float(value))], ["incr", f"n:{name}", "1"]]
    if feature.function in ("min", "max"):
        return [[feature.function, f"{'m' if feature.function == 'min' else 'M'}:{name}", _encode(value)]]
    return [["last", f"l:{name}", _encode(value), _order(event)]]


def _tile_starts(feature: AggregationSpec, at_us: int) -> list[str]:
    if feature.tile is None or feature.window is None:
        return ["0"]
    now = tile(at_us, feature.tile)
    return [str(s // 1_000_000) for s in range(now - feature.window + feature.tile, now + feature.tile, feature.tile)]


def _fields(feature: AggregationSpec) -> list[str]:
    name = feature.name
    return {
        "count": [f"c:{name}"], "sum": [f"s:{name}"], "mean": [f"s:{name}", f"n:{name}"],
        "min": [f"m:{name}"], "max": [f"M:{name}"], "last": [f"l:{name}", f"ol:{name}"],
    }[feature.function]  # fmt: skip


def _merge(feature: AggregationSpec, starts: list[str], found: dict[str, bytes]) -> Any:
    def values(field: str) -> list[bytes]:
        return [found[k] for k in (f"{s}|{field}:{feature.name}" for s in starts) if k in found]

    if feature.function == "count":
        return sum(int(v) for v in values("c"))
    assert feature.field is not None
    floating = feature.field.kind in ("float", "double")
    if feature.function == "sum":
        return math.fsum(float(v) for v in values("s")) if floating else sum(int(v) for v in values("s"))
    if feature.function == "mean":
        count = sum(int(v) for v in values("n"))
        return math.fsum(float(v) for v in values("s")) / count if count else None
    decode = _decoder(feature.field.kind)
    if feature.function in ("min", "max"):
        found_values = [decode(v) for v in values("m" if feature.function == "min" else "M")]
        return (min if feature.function == "min" else max)(found_values) if found_values else None
    ordered = [(found[f"{s}|ol:{feature.name}"], found[f"{s}|l:{feature.name}"]) for s in starts
               if f"{s}|l:{feature.name}" in found]  # fmt: skip
    return decode(max(ordered)[1]) if ordered else None


def _decoder(kind: str) -> Any:
    if kind in ("float", "double"):
        return lambda raw: float(raw)
    if kind in ("int32", "int64", "uint32", "uint64"):
        return lambda raw: int(raw)
    if kind == "bool":
        return lambda raw: raw == b"1"
    if kind == "bytes":
        return lambda raw: raw
    return lambda raw: raw.decode()
