"""How one aggregation family's partial aggregates for one key sit in Redis, and how they fold and merge.

Per key, two strings and a few sets, under one hash tag (one cluster slot):

- `fsa:{<family>:<key>}:<layout>`, the state: little-endian doubles. A header (the newest event time
  folded in, which sets the expiry, and the LAST state's length when it was last compacted), then one
  **ring** per tile size: `slots` tiles, tile number `i` (its start divided by the tile size) in slot
  `i mod slots`, each slot holding its tile number, the event count and, per field, the count of values and
  their sum, min and max as the family's features need. The lifetime state is a ring of one slot. A ring
  holds every tile a window may read (the widest window's tiles at that size, plus the tiles an event may
  be ahead of its ingest time, plus one), so a slot's tile is replaced only by a newer tile once no window
  at or after the read reads the older one. The script reads and writes it slot by slot.
- `fsl:{...}:<layout>`, for LAST features: per feature, the newest tiles holding a value (as many as an
  event may be ahead of its ingest time, plus two; one for lifetime), newest first, each its tile number,
  order (event time and ingest time as doubles, message id) and value. The newest tile at or before the
  read's is the window's, whatever events ahead of their time have filled. Then a tail of the entries
  folded since the lists were last compacted (appended, compacted into the lists past 384 bytes); a read
  takes the newest of a list's choice and the tail's entries.
- `fsi:{...}:<layout>:<bucket>`: sets of the message ids folded in, per 7 days of event time, kept while
  a window may read their tiles and at least the redelivery horizon after the fold. Each set also holds
  the member `0` (no id maps to it), so the script knows a set it creates and gives it its expiry once.

MIN and MAX are NaN once a NaN is folded in, as the offline SQL computes them (IEEE 754-2019's minimum and
maximum); the infinities are values like any other, and a zero reads as +0.0.

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
_LAYOUT_VERSION = "4"
# a LAST feature's list in its state: bytes and entry count; an entry: tile, event time, ingest time, the
# message id's and the value's sizes, then the id and the value
_LIST, _ENTRY = struct.Struct("<II"), struct.Struct("<dddII")
_DELTA = struct.Struct("<BdddII")  # a LAST delta (and a tail entry): feature number, entry head
_OPS = {"index": "i", "count": "a", "n": "a", "sum": "a", "min": "m", "max": "M"}
_EMPTY = {"index": -math.inf, "count": 0.0, "n": 0.0, "sum": 0.0, "min": math.inf, "max": -math.inf}
SENTINEL = b"0"  # in every id set: the script creating a set sees it added (no id maps to it: `_member`)


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
    """One key's share of a batch: the events folded and the script's keys and arguments for them (bytes)."""

    key: int | str
    events: list[Any]
    members: list[str]
    keys: list[bytes] = field(default_factory=list)
    args: list[bytes] = field(default_factory=list)


class TileLayout:
    """One family's layout (see the module's note): built once per family, shared by writes and reads."""

    def __init__(self, family: FamilySpec) -> None:
        self.family = family
        sizes = sorted({f.tile for f in family.features if f.tile is not None})
        rings, offset = [], 2  # after the header: the newest event time, the LAST state's compacted length
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
        # what `records` does per ring, planned once: (ring, tile size, empty slot, per field (name, column
        # of n, sum, min, max or -1), per LAST feature (its number, its field))
        self._plan = tuple(
            (
                r,
                ring.size,
                self.empty_slots[r],
                tuple((c.name, c.n, c.sum, c.min, c.max) for c in self.fields[r]),
                tuple((i, f.field.name) for i, f in self.lasts_of_ring[r] if f.field is not None),
            )
            for r, ring in enumerate(self.rings)
        )
        self._numeric = sorted({c.name for ring_fields in self.fields for c in ring_fields})
        self._last_names = [f.field.name for f, _ in self.lasts if f.field is not None]
        self._value_names = sorted({*self._numeric, *self._last_names})
        windowed = [(f.window or 0) + (f.tile or 0) for f in family.features if f.window is not None]
        self.tile_keep = (max(windowed) + FUTURE + RETENTION_MARGIN) if windowed else 0
        lifetime = any(f.window is None for f in family.features)
        self.keep_ms = 0 if lifetime else self.tile_keep // 1_000
        self.empty = struct.pack(
            f"<{self.width}d", -math.inf, 0.0, *(v for ring, slot in zip(self.rings, self.empty_slots, strict=True)
                                              for _ in range(ring.slots) for v in slot)
        )  # fmt: skip
        description = repr([(r.size, r.slots, r.columns) for r in self.rings]) + repr([f.name for f, _ in self.lasts])
        self.digest = hashlib.blake2b(f"{_LAYOUT_VERSION}{description}".encode(), digest_size=4).hexdigest()
        head: list[Any] = [len(self.rings)]
        for ring in self.rings:
            head += [ring.offset, ring.slots, ring.stride, "".join(_OPS[k] for k, _ in ring.columns)]
        head += [len(self.lasts), *self.last_keeps, self.keep_ms, self.empty]
        self.script_head: list[bytes] = [v if isinstance(v, bytes) else str(v).encode() for v in head]

    def tag(self, key: int | str) -> str:
        return f"{{{self.family.name}:{key}}}"

    def blob_key(self, key: int | str) -> str:
        return f"fsa:{self.tag(key)}:{self.digest}"

    def last_key(self, key: int | str) -> str:
        return f"fsl:{self.tag(key)}:{self.digest}"

    def bucket_key(self, key: int | str, bucket: int) -> str:
        return f"fsi:{self.tag(key)}:{self.digest}:{bucket}"

    def family_pattern(self) -> str:
        """A SCAN pattern for every key of the family, under any layout (`blob_key`, `last_key`, `bucket_key`)."""
        name = "".join("\\" + c if c in "*?[]\\" else c for c in self.family.name)  # matched literally
        return f"fs[ail]:{{{name}:*"

    def oldest_numbers(self, now_us: int) -> list[int | None]:
        """Per ring, the oldest tile number a window may still read at `now_us` (None: lifetime)."""
        return [None if r.size is None else r.number(now_us) - r.slots + 1 for r in self.rings]

    def records(self, by_key: dict[Any, list[Any]], oldest: list[int | None], now_us: int) -> list[KeyRecord]:
        """Pre-aggregate each key's accepted events into per-tile deltas, all keys of a batch at once in
        numpy: the script's keys and arguments per key. A key none of whose events reaches a tile a window
        still reads has no record. A message id twice in a key's events counts once."""
        starts, key_list, flat = [0], [], []
        for key, events in by_key.items():
            seen: set[str] = set()
            for event in events:
                if event.message_id not in seen:
                    seen.add(event.message_id)
                    flat.append(event)
            key_list.append(key)
            starts.append(len(flat))
        if not flat:
            return []
        bounds = np.asarray(starts)
        code = np.repeat(np.arange(len(key_list)), np.diff(bounds))
        event_us = np.fromiter((e.event_us for e in flat), np.int64, len(flat))
        raw = {name: [e.values.get(name) for e in flat] for name in self._value_names}
        present = {name: np.fromiter((v is not None for v in column), bool, len(flat)) for name, column in raw.items()}
        numbers = {name: np.array([0.0 if v is None else v for v in raw[name]], np.float64) for name in self._numeric}
        hit = np.zeros(len(flat), bool)
        rows: list[tuple[np.ndarray, bytes, int]] = []  # per ring: each delta's key code, the deltas, row bytes
        lasts: list[tuple[int, int, int]] = []  # (event, feature, tile number) of each LAST delta
        for r, size, empty, columns, last_fields in self._plan:
            number = np.zeros(len(flat), np.int64) if size is None else event_us // size
            floor = oldest[r]
            ok = np.ones(len(flat), bool) if floor is None else number >= floor
            hit |= ok
            chosen = np.flatnonzero(ok)
            if not len(chosen):
                continue
            low = int(number[chosen].min())
            span = int(number[chosen].max()) - low + 1
            groups, first, inverse = np.unique(code[chosen] * span + (number[chosen] - low), return_index=True,
                                               return_inverse=True)  # fmt: skip
            width = len(groups)
            table = np.tile(np.array([float(r + 1), *empty]), (width, 1))
            table[:, 1] = number[chosen][first]
            table[:, 2] = np.bincount(inverse, minlength=width)
            for name, n, total, least, most in columns:
                has = present[name][chosen]
                values = numbers[name][chosen]
                table[:, 1 + n] = np.bincount(inverse, weights=has, minlength=width)
                if total >= 0:
                    table[:, 1 + total] = np.bincount(inverse, weights=np.where(has, values, 0.0), minlength=width)
                with np.errstate(invalid="ignore"):  # np.minimum and np.maximum keep a NaN, as offline
                    if least >= 0:
                        np.minimum.at(table[:, 1 + least], inverse[has], values[has])
                    if most >= 0:
                        np.maximum.at(table[:, 1 + most], inverse[has], values[has])
            rows.append((groups // span, table.astype("<f8").tobytes(), table.shape[1] * 8))
            for i, name in last_fields:
                lasts += self._last_deltas(i, chosen[present[name][chosen]], number, code, flat)
        entries: dict[int, list[bytes]] = {}
        encoded: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        key_of = code.tolist()
        for j, i, tile in lasts:
            event = flat[j]
            name = self._last_names[i]
            pair = encoded.get((j, name))
            if pair is None:
                pair = encoded[(j, name)] = (event.message_id.encode(), _encode(event.values[name]))
            mid, value = pair
            head = _DELTA.pack(i + 1, tile, event.event_us, event.ingest_us, len(mid), len(value))
            found = entries.get(key_of[j])
            if found is None:
                entries[key_of[j]] = [head, mid, value]
            else:
                found += (head, mid, value)
        every = np.arange(len(key_list))
        spans = [((np.searchsorted(codes, every) * row).tolist(), (np.searchsorted(codes, every, side="right") * row
                  ).tolist(), data) for codes, data, row in rows]  # fmt: skip
        folds = hit.tolist()
        out = []
        for c, key in enumerate(key_list):
            folded = [flat[j] for j in range(starts[c], starts[c + 1]) if folds[j]]
            if folded:
                deltas = b"".join([data[lo[c] : hi[c]] for lo, hi, data in spans])
                out.append(self._key_record(key, folded, now_us, deltas, b"".join(entries.get(c, ()))))
        return out

    def _last_deltas(self, i: int, chosen: Any, number: Any, code: Any, flat: list[Any]) -> list[tuple[int, int, int]]:
        """For LAST feature i, per key and tile among the events `chosen` (with a value), the latest event by
        (event time, ingest time, message id): (event, feature, tile number)."""
        if not len(chosen):
            return []
        picked = chosen.tolist()
        codes, tiles = code[chosen].tolist(), number[chosen].tolist()
        latest: dict[tuple[int, int], tuple[tuple[int, int, str], int]] = {}
        for j, c, tile in zip(picked, codes, tiles, strict=True):
            event = flat[j]
            order = (event.event_us, event.ingest_us, event.message_id)
            held = latest.get((c, tile))
            if held is None or order > held[0]:
                latest[(c, tile)] = (order, j)
        return [(j, i, tile) for (_, tile), (_, j) in latest.items()]

    def _key_record(self, key: Any, folded: list[Any], now_us: int, deltas: bytes, last_deltas: bytes) -> KeyRecord:
        members = [_member(e.message_id) for e in folded]
        buckets: dict[int, list[bytes]] = {}
        if len(folded) == 1:  # most keys of a streamed batch
            newest = folded[0].event_us
            buckets[newest // ID_BUCKET] = [members[0].encode()]
        else:
            newest = max(e.event_us for e in folded)
            for event, member in zip(folded, members, strict=True):
                found = buckets.get(event.event_us // ID_BUCKET)
                if found is None:
                    buckets[event.event_us // ID_BUCKET] = [member.encode()]
                else:
                    found.append(member.encode())
        record = KeyRecord(key, folded, members)
        tag = f"{{{self.family.name}:{key}}}:{self.digest}"
        record.keys = keys = [f"fsa:{tag}".encode()]
        if self.lasts:
            keys.append(f"fsl:{tag}".encode())
        counts: list[float] = [newest, len(buckets)]
        ids: list[bytes] = []
        horizon_ms = (now_us + REDELIVERY_HORIZON) // 1_000
        for bucket, members_in in buckets.items():
            keys.append(f"fsi:{tag}:{bucket}".encode())
            # a set's expiry is its bucket's, unless the redelivery horizon reaches further: then it moves on
            # with every fold. Negative: the bucket's, given only to a set the script creates (it cannot change)
            fixed_ms = ((bucket + 1) * ID_BUCKET + self.tile_keep) // 1_000
            counts += [horizon_ms if horizon_ms > fixed_ms else -fixed_ms, len(members_in)]
            ids += members_in
        record.args = [struct.pack(f"<{len(counts)}d", *counts), *ids, deltas]
        if self.lasts:
            record.args.append(last_deltas)
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
                with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as IEEE (and offline) say
                    values[feature.name] = _feature_values(feature, ring, block, mask)
        if self.lasts:
            empty = _LIST.pack(0, 0) * len(self.lasts)
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
        found: list[list[Any]] = [[] for _ in self.lasts]
        head, entry, delta = _LIST.size, _ENTRY.size, _DELTA.size
        list_at, entry_at, delta_at = _LIST.unpack_from, _ENTRY.unpack_from, _DELTA.unpack_from
        for state in states:
            # per feature the list's choice: (tile, event time, ingest time, where its id starts, id size,
            # value size), or None
            pos, best = 0, []
            for oldest, newest, _ in bounds:
                length, _ = list_at(state, pos)
                pos, stop, chosen = pos + head, pos + head + length, None
                while pos < stop:
                    number, event_us, ingest_us, id_size, value_size = entry_at(state, pos)
                    if number <= newest:
                        if number > oldest:
                            chosen = (number, event_us, ingest_us, pos + entry, id_size, value_size)
                        break
                    pos += entry + id_size + value_size
                best.append(chosen)
                pos = stop
            end = len(state)
            while pos < end:  # the tail: entries not yet in the lists, each against the list's choice
                j, number, event_us, ingest_us, id_size, value_size = delta_at(state, pos)
                start, pos = pos + delta, pos + delta + id_size + value_size
                oldest, newest, _ = bounds[j - 1]
                if oldest < number <= newest:
                    held = best[j - 1]
                    if (
                        held is None
                        or (number, event_us, ingest_us) > held[:3]
                        or (
                            (number, event_us, ingest_us) == held[:3]
                            and state[start : start + id_size] > state[held[3] : held[3] + held[4]]
                        )
                    ):
                        best[j - 1] = (number, event_us, ingest_us, start, id_size, value_size)
            for column, chosen, (_, _, decode) in zip(found, best, bounds, strict=True):
                if chosen is None:
                    column.append(None)
                else:
                    value_at = chosen[3] + chosen[4]
                    column.append(decode(state[value_at : value_at + chosen[5]]))
        out = found
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
    # NaN once a slot holds one (numpy's min and max keep it), as offline; a zero is +0.0, as offline
    data = block[:, :, ring.column(feature.function, name)]
    if mask is not None:
        data = np.where(mask, data, math.inf if feature.function == "min" else -math.inf)
    found = data.min(axis=1) if feature.function == "min" else data.max(axis=1)
    if floating:
        return [v if n else None for v, n in zip((found + 0.0).tolist(), present, strict=True)]
    return [int(v) if n else None for v, n in zip(found.tolist(), present, strict=True)]


def _member(message_id: str) -> str:
    # Pub/Sub's ids are decimal numbers: kept as they are, a set of them is Redis's compact intset
    if message_id.isdigit() and len(message_id) <= 18 and message_id[0] != "0":
        return message_id
    digest = int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=8).digest(), "big", signed=True)
    return str(digest) if digest else "d0"  # "0" is every set's SENTINEL


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


def layout_digest(name: bytes) -> bytes:
    """The layout digest in a key named by `blob_key`, `last_key` or `bucket_key` (after the key's tag)."""
    return name.rsplit(b":", 2)[1] if name.startswith(b"fsi:") else name.rsplit(b":", 1)[1]
