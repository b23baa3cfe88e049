"""How one aggregation family's partial aggregates for one key sit in Redis, and how they fold and merge.

Per key, two strings and a few sets, under one hash tag (one cluster slot):

- `fsa:{<family>:<key>}:<layout>`, the state: little-endian doubles. A header (the newest event time
  folded in, which sets the expiry), then one **ring** per tile size: `slots` tiles, tile number `i` (its
  start divided by the tile size) in slot `i mod slots`, each slot holding its tile number, the event count
  and, per field, the count of values and their sum, min and max as the family's features need. The
  lifetime state is a ring of one slot. A ring holds every tile a window may read (the widest window's
  tiles at that size, plus the tiles an event may be ahead of its ingest time, plus one), so a slot's tile
  is replaced only by a newer tile once no window at or after the read reads the older one. The script
  reads and writes it slot by slot.
- `fsl:{...}:<layout>`, for LAST features: per feature, the newest tiles holding a value (as many as an
  event may be ahead of its ingest time, plus two; one for lifetime), newest first, each its tile number,
  order (event time, ingest time, message id) and value. The newest tile at or before the read's is the
  window's, whatever events ahead of their time have filled.
- `fsi:{...}:<layout>:<bucket>`: sets of the message ids folded in, per 7 days of event time, kept while
  a window may read their tiles and at least the redelivery horizon after the fold.

`<layout>` is a digest of the layout, so a family whose features change starts afresh instead of misreading
old bytes. A read is one MGET of the keys' states; the merge runs in numpy over all keys of the read at once.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fstore.schema.aggregations import DAY, HOUR, AggregationSpec, FamilySpec
from fstore.store.events import MAX_FUTURE_SECONDS

FUTURE = MAX_FUTURE_SECONDS * 1_000_000  # how far ahead of its ingest time a stored event's time may be
RETENTION_MARGIN = HOUR  # kept past a tile's last reader, for clock skew between writer and reader
REDELIVERY_HORIZON = 7 * DAY  # Pub/Sub keeps an unacknowledged message for at most 7 days
ID_BUCKET = 7 * DAY
_LAYOUT_VERSION = "2"
_U32, _ENTRY, _LAST_DELTA = struct.Struct("<I"), struct.Struct("<dI"), struct.Struct("<BdI")
_OPS = {"index": "i", "count": "a", "n": "a", "sum": "a", "min": "m", "max": "M"}
_EMPTY = {"index": -math.inf, "count": 0.0, "n": 0.0, "sum": 0.0, "min": math.inf, "max": -math.inf}


@dataclass(frozen=True)
class Ring:
    """The tiles of one size (None: the lifetime state, one slot)."""

    size: int | None
    slots: int
    offset: int  # in doubles, from the blob's start
    columns: tuple[tuple[str, str | None], ...]  # (kind, field): index, count, then n/sum/min/max per field

    @property
    def stride(self) -> int:
        return len(self.columns)

    def column(self, kind: str, name: str | None) -> int:
        return self.columns.index((kind, name))

    def number(self, micros: int) -> int:
        return 0 if self.size is None else micros // self.size


@dataclass(frozen=True)
class FieldColumns:
    """Where one field's aggregates sit in a ring's slot (-1: not kept)."""

    name: str
    n: int
    sum: int
    min: int
    max: int


@dataclass
class KeyRecord:
    """One key's share of a batch: the events folded and the script's keys and arguments for them."""

    key: int | str
    events: list[Any]
    members: list[str]
    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)


class TileLayout:
    """One family's layout (see the module's note): built once per family, shared by writes and reads."""

    def __init__(self, family: FamilySpec) -> None:
        self.family = family
        sizes = sorted({f.tile for f in family.features if f.tile is not None})
        rings, offset = [], 1
        for size in [*sizes, None]:
            features = [f for f in family.features if f.tile == size]
            if size is not None or features:
                ring = _ring(size, features, offset)
                rings.append(ring)
                offset += ring.slots * ring.stride
        self.rings: tuple[Ring, ...] = tuple(rings)
        self.width = offset
        self.fields = tuple(tuple(_field_columns(ring)) for ring in self.rings)
        self.empty_slots = tuple([_EMPTY[kind] for kind, _ in ring.columns] for ring in self.rings)
        self.lasts = tuple(
            (f, next(r for r, ring in enumerate(self.rings) if ring.size == f.tile))
            for f in family.features
            if f.function == "last"
        )
        self.last_keeps = tuple(1 if f.tile is None else -(-FUTURE // f.tile) + 2 for f, _ in self.lasts)
        self.lasts_of_ring = tuple(
            tuple((i, f) for i, (f, r) in enumerate(self.lasts) if r == ring_index) for ring_index in range(len(rings))
        )
        windowed = [(f.window or 0) + (f.tile or 0) for f in family.features if f.window is not None]
        self.tile_keep = (max(windowed) + FUTURE + RETENTION_MARGIN) if windowed else 0
        lifetime = any(f.window is None for f in family.features)
        self.keep_ms = 0 if lifetime else self.tile_keep // 1_000
        self.empty = struct.pack(
            f"<{self.width}d", -math.inf, *(v for ring, slot in zip(self.rings, self.empty_slots, strict=True)
                                              for _ in range(ring.slots) for v in slot)
        )  # fmt: skip
        description = repr([(r.size, r.slots, r.columns) for r in self.rings]) + repr([f.name for f, _ in self.lasts])
        self.digest = hashlib.blake2b(f"{_LAYOUT_VERSION}{description}".encode(), digest_size=4).hexdigest()
        self.script_head: list[Any] = [len(self.rings)]
        for ring in self.rings:
            self.script_head += [ring.offset, ring.slots, ring.stride, "".join(_OPS[k] for k, _ in ring.columns)]
        self.script_head += [len(self.lasts), *self.last_keeps, self.empty]

    def tag(self, key: int | str) -> str:
        return f"{{{self.family.name}:{key}}}"

    def blob_key(self, key: int | str) -> str:
        return f"fsa:{self.tag(key)}:{self.digest}"

    def last_key(self, key: int | str) -> str:
        return f"fsl:{self.tag(key)}:{self.digest}"

    def bucket_key(self, key: int | str, bucket: int) -> str:
        return f"fsi:{self.tag(key)}:{self.digest}:{bucket}"

    def oldest_numbers(self, now_us: int) -> list[int | None]:
        """Per ring, the oldest tile number a window may still read at `now_us` (None: lifetime)."""
        return [None if r.size is None else r.number(now_us) - r.slots + 1 for r in self.rings]

    def record(self, key: int | str, events: Sequence[Any], oldest: list[int | None], now_us: int) -> KeyRecord | None:
        """Pre-aggregate one key's accepted events into per-tile deltas: the script's keys and arguments.
        None when no event reaches a tile a window still reads. A message id twice in `events` counts once."""
        deltas: dict[tuple[int, int], list[float]] = {}
        lasts: dict[tuple[int, int], tuple[str, Any]] = {}
        buckets: dict[int, list[str]] = {}
        seen: set[str] = set()
        folded, members, newest = [], [], -math.inf
        for event in events:
            if event.message_id in seen:
                continue
            seen.add(event.message_id)
            hit, order = False, None
            values = event.values
            for r, ring in enumerate(self.rings):
                number = 0 if ring.size is None else event.event_us // ring.size
                floor = oldest[r]
                if floor is not None and number < floor:
                    continue
                hit = True
                delta = deltas.get((r, number))
                if delta is None:
                    delta = deltas[(r, number)] = self.empty_slots[r].copy()
                    delta[0] = number
                delta[1] += 1
                for columns in self.fields[r]:
                    value = values.get(columns.name)
                    if value is None:
                        continue
                    delta[columns.n] += 1
                    if columns.sum >= 0:
                        delta[columns.sum] += value
                    if columns.min >= 0 and value < delta[columns.min]:
                        delta[columns.min] = value
                    if columns.max >= 0 and value > delta[columns.max]:
                        delta[columns.max] = value
                for i, feature in self.lasts_of_ring[r]:
                    assert feature.field is not None
                    value = values.get(feature.field.name)
                    if value is None:
                        continue
                    order = order or _order(event)
                    held = lasts.get((i, number))
                    if held is None or order > held[0]:
                        lasts[(i, number)] = (order, value)
            if hit:
                folded.append(event)
                member = _member(event.message_id)
                members.append(member)
                buckets.setdefault(event.event_us // ID_BUCKET, []).append(member)
                newest = max(newest, event.event_us)
        if not folded:
            return None
        record = KeyRecord(key, folded, members)
        record.keys = [self.blob_key(key), self.last_key(key)]
        args: list[Any] = [len(buckets)]
        for bucket, ids in buckets.items():
            record.keys.append(self.bucket_key(key, bucket))
            expire_us = max((bucket + 1) * ID_BUCKET + self.tile_keep, now_us + REDELIVERY_HORIZON)
            args += [expire_us // 1_000, len(ids), *ids]
        packed = b"".join(struct.pack(f"<{1 + len(delta)}d", r + 1, *delta) for (r, _), delta in deltas.items())
        last_deltas = b""
        for (i, number), (order, value) in lasts.items():
            entry = f"{order}\0".encode() + _encode(value)
            last_deltas += _LAST_DELTA.pack(i + 1, number, len(entry)) + entry
        args += [self.keep_ms, newest, packed, last_deltas]
        record.args = args
        return record

    def merge(self, states: Sequence[bytes | None], last_states: Sequence[bytes | None], at_us: int
              ) -> list[dict[str, Any]]:  # fmt: skip
        """Every feature of the family for each key's state and LAST state (None: none) at time `at_us`."""
        size = self.width * 8
        data = b"".join(b if b is not None and len(b) == size else self.empty for b in states)
        table = np.frombuffer(data, dtype="<f8").reshape(len(states), self.width)
        values: dict[str, list[Any]] = {}
        for ring in self.rings:
            block = table[:, ring.offset : ring.offset + ring.slots * ring.stride].reshape(len(states), ring.slots,
                                                                                            ring.stride)  # fmt: skip
            masks: dict[int, Any] = {}
            for feature in self.family.features:
                if feature.tile != ring.size or feature.function == "last":
                    continue
                mask = None
                if ring.size is not None and feature.window is not None:
                    tiles = feature.window // ring.size
                    if tiles not in masks:
                        now, numbers = ring.number(at_us), block[:, :, 0]
                        masks[tiles] = (numbers > now - tiles) & (numbers <= now)
                    mask = masks[tiles]
                values[feature.name] = _feature_values(feature, ring, block, mask)
        if self.lasts:
            empty = b"\0\0\0\0" * len(self.lasts)
            values.update(self._last_values([b or empty for b in last_states], at_us))
        names = [f.name for f in self.family.features]
        columns = [values[n] for n in names]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def _last_values(self, states: Sequence[bytes], at_us: int) -> dict[str, list[Any]]:
        """Per LAST feature, the value of the newest entry whose tile is in the window at `at_us`."""
        bounds: list[tuple[float, float, Any]] = []
        for feature, r in self.lasts:
            ring = self.rings[r]
            assert feature.field is not None
            if ring.size is None or feature.window is None:
                bounds.append((-math.inf, math.inf, decoder(feature.field.kind)))
            else:
                high = ring.number(at_us)
                bounds.append((high - feature.window // ring.size, high, decoder(feature.field.kind)))
        out: list[list[Any]] = [[] for _ in self.lasts]
        for state in states:
            pos = 0
            for column, (oldest, newest, decode) in zip(out, bounds, strict=True):
                (length,) = _U32.unpack_from(state, pos)
                pos, stop, found = pos + 4, pos + 4 + length, None
                while pos < stop:
                    number, width = _ENTRY.unpack_from(state, pos)
                    if number <= newest:
                        if number > oldest:
                            found = decode(state[pos + 12 : pos + 12 + width].partition(b"\0")[2])
                        break
                    pos += 12 + width
                column.append(found)
                pos = stop
        return {feature.name: column for (feature, _), column in zip(self.lasts, out, strict=True)}


def _ring(size: int | None, features: list[AggregationSpec], offset: int) -> Ring:
    fields = sorted({f.field.name for f in features if f.field is not None and f.function != "last"})
    columns: list[tuple[str, str | None]] = [("index", None), ("count", None)]
    for name in fields:
        functions = {f.function for f in features if f.field is not None and f.field.name == name}
        columns.append(("n", name))
        if functions & {"sum", "mean"}:
            columns.append(("sum", name))
        columns += [(kind, name) for kind in ("min", "max") if kind in functions]
    if size is None:
        slots = 1
    else:
        widest = max((f.window or 0) for f in features)
        slots = widest // size + -(-FUTURE // size) + 1
    return Ring(size, slots, offset, tuple(columns))


def _field_columns(ring: Ring) -> list[FieldColumns]:
    names = [name for kind, name in ring.columns if kind == "n" and name is not None]
    found = {(kind, name): i for i, (kind, name) in enumerate(ring.columns)}
    return [
        FieldColumns(
            n, found[("n", n)], found.get(("sum", n), -1), found.get(("min", n), -1), found.get(("max", n), -1)
        )
        for n in names
    ]


def _feature_values(feature: AggregationSpec, ring: Ring, block: Any, mask: Any) -> list[Any]:
    def total(column: int) -> Any:
        data = block[:, :, column]
        return (data if mask is None else np.where(mask, data, 0.0)).sum(axis=1)

    if feature.function == "count":
        return [int(v) for v in total(1).tolist()]
    assert feature.field is not None
    name, floating = feature.field.name, feature.field.kind in ("float", "double")
    present = total(ring.column("n", name)).tolist()
    if feature.function == "sum":
        sums = total(ring.column("sum", name)).tolist()
        return sums if floating else [int(v) for v in sums]
    if feature.function == "mean":
        sums = total(ring.column("sum", name)).tolist()
        return [s / n if n else None for s, n in zip(sums, present, strict=True)]
    data = block[:, :, ring.column(feature.function, name)]
    if mask is not None:
        data = np.where(mask, data, math.inf if feature.function == "min" else -math.inf)
    found = (data.min(axis=1) if feature.function == "min" else data.max(axis=1)).tolist()
    cast = float if floating else int
    return [cast(v) if n else None for v, n in zip(found, present, strict=True)]


def _member(message_id: str) -> str:
    # Pub/Sub's ids are decimal numbers: kept as they are, a set of them is Redis's compact intset
    if message_id.isdigit() and len(message_id) <= 18 and message_id[0] != "0":
        return message_id
    digest = hashlib.blake2b(message_id.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big", signed=True))


def _order(event: Any) -> str:
    # compares as text in Lua: zero-padded times (events are after 2000), then the message id
    return f"{event.event_us:020d}|{event.ingest_us:020d}|{event.message_id}"


def _encode(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def decoder(kind: str) -> Any:
    """A LAST value's bytes from Redis back to the field's kind."""
    if kind in ("float", "double"):
        return lambda raw: float(raw)
    if kind in ("int32", "int64", "uint32", "uint64"):
        return lambda raw: int(raw)
    if kind == "bool":
        return lambda raw: raw == b"1"
    if kind == "bytes":
        return lambda raw: raw
    return lambda raw: raw.decode()
