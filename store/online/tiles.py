"""Aggregation families online: partial aggregates per (family, key, tile) in Redis (docs/aggregations.md).

Layout: one hash per tile, `fsa:{<family>:<key>}:<tile seconds>:<tile start seconds>` (`...:L` for the
lifetime state), holding per feature its partial aggregate (`c:` count, `s:` sum, `n:` count of values, `m:`
min, `M:` max, `l:` last value with `o:` its order) and one `i:<message id>` field per event applied, so a
redelivered message changes nothing. The hash tag keeps a key's tiles on one cluster slot. A tile expires once
it has left the widest window that reads it, plus the allowed lateness (lifetime states do not expire).

Writes: one EVALSHA per event (all its tiles), pipelined per batch. Reads: the tiles of each window for the
request time, one HMGET per tile, pipelined, merged here. Known gaps: MIN/MAX compare as doubles in Lua
(exact up to 2^53), and a read is the definition's value at the time of the read only (tiles do not keep
ingest times, so a read "as of" an earlier time cannot leave out events ingested since).
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
local id = 'i:' .. ARGV[1]
local pos = 2
local applied = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local expire_ms, ops = ARGV[pos], tonumber(ARGV[pos + 1])
  pos = pos + 2
  local fresh = redis.call('HSETNX', key, id, '1') == 1
  for _ = 1, ops do
    local op, field, value = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
    pos = pos + 3
    if fresh then
      if op == 'incr' then redis.call('HINCRBY', key, field, value)
      elseif op == 'incrf' then redis.call('HINCRBYFLOAT', key, field, value)
      elseif op == 'min' or op == 'max' then
        local current = redis.call('HGET', key, field)
        local v, c = tonumber(value), tonumber(current)
        if not current or (op == 'min' and v < c) or (op == 'max' and v > c) then
          redis.call('HSET', key, field, value)
        end
      elseif op == 'last' then
        local order = ARGV[pos]
        local current = redis.call('HGET', key, 'o' .. field)
        if not current or order > current then redis.call('HSET', key, field, value, 'o' .. field, order) end
      end
    end
    if op == 'last' then pos = pos + 1 end
  end
  if fresh then
    applied = 1
    if expire_ms ~= '0' then redis.call('PEXPIREAT', key, expire_ms) end
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


def tile_key(family: str, key: int | str, size: int | None, start: int) -> str:
    tag = f"{{{family}:{key}}}"
    return f"fsa:{tag}:L" if size is None else f"fsa:{tag}:{size // 1_000_000}:{start // 1_000_000}"


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
        self.client = client
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

    def apply(self, family: FamilySpec, events: Sequence[TileEvent]) -> tuple[int, int]:
        """Fold accepted events into their tiles; returns (applied, too late). A message id already applied to
        a tile changes nothing there, so a redelivered batch is harmless."""
        by_size: dict[int | None, list[AggregationSpec]] = defaultdict(list)
        for feature in family.features:
            by_size[feature.tile].append(feature)
        retention = {
            size: max(f.window or 0 for f in features) + family.allowed_lateness + RETENTION_MARGIN
            for size, features in by_size.items()
        }
        calls, late = [], 0
        now_ms = time.time_ns() // 1_000_000
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
                keys.append(tile_key(family.name, event.key, size, start))
                ops = [op for f in features for op in _ops(f, event)]
                args += [str(expire_ms), str(len(ops))]
                for op in ops:
                    args += op
            if keys:
                calls.append((keys, args))
        if not calls:
            return 0, late
        sha = self._script()
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return sum(int(r) for r in pipe.execute()), late

    def read(self, family: FamilySpec, keys: Sequence[int | str], at_us: int | None = None) -> list[dict[str, Any]]:
        """Every feature of the family for each key at time `at_us` (default now; see the module's note)."""
        at_us = time.time_ns() // 1_000 if at_us is None else at_us
        wanted: list[tuple[int, AggregationSpec, list[str]]] = []
        tiles: list[str] = []
        for n, key in enumerate(keys):
            for feature in family.features:
                if feature.tile is None or feature.window is None:
                    names = [tile_key(family.name, key, None, 0)]
                else:
                    now = tile(at_us, feature.tile)
                    starts = range(now - feature.window + feature.tile, now + feature.tile, feature.tile)
                    names = [tile_key(family.name, key, feature.tile, s) for s in starts]
                wanted.append((n, feature, names))
                tiles += names
        unique = list(dict.fromkeys(tiles))
        pipe = self.client.pipeline(transaction=False)
        for name in unique:
            pipe.hgetall(name)
        contents = dict(zip(unique, pipe.execute(), strict=True))
        rows: list[dict[str, Any]] = [{} for _ in keys]
        for n, feature, names in wanted:
            rows[n][feature.name] = _merge(feature, [contents[name] for name in names])
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


def _merge(feature: AggregationSpec, tiles: list[dict[bytes, bytes]]) -> Any:
    name = feature.name.encode()
    if feature.function == "count":
        return sum(int(t.get(b"c:" + name, 0)) for t in tiles)
    assert feature.field is not None
    decode = _decoder(feature.field.kind)
    if feature.function == "sum":
        parts = [t[b"s:" + name] for t in tiles if b"s:" + name in t]
        return (
            math.fsum(float(p) for p in parts)
            if feature.field.kind in ("float", "double")
            else sum(int(p) for p in parts)
        )
    if feature.function == "mean":
        count = sum(int(t.get(b"n:" + name, 0)) for t in tiles)
        return math.fsum(float(t[b"s:" + name]) for t in tiles if b"s:" + name in t) / count if count else None
    if feature.function in ("min", "max"):
        field = (b"m:" if feature.function == "min" else b"M:") + name
        values = [decode(t[field]) for t in tiles if field in t]
        return (min if feature.function == "min" else max)(values) if values else None
    ordered = [(t[b"ol:" + name], t[b"l:" + name]) for t in tiles if b"l:" + name in t]
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
