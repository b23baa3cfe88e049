"""How one aggregation family's partial aggregates for one key sit in Redis, and how they fold and merge.

Per key, two strings and a few sets, under one hash tag (one cluster slot):

- `fsa:{<family>:<key>}:<layout>`, the state: little-endian doubles. A header (the newest event time
  folded in, which sets the expiry, and the LAST state's length when it was last compacted), then one
  **head** per tile size, then one **ring** per tile size. A head holds the newest tile of its size, a ring
  the older ones: `slots` tiles, tile number `i` (its start divided by the tile size) in slot `i mod slots`.
  A head holds its tile number, the event count and, per field, the count of values and their sum, min and
  max as the family's features need; a slot the same but the tile number, which is implied: with the head
  at tile H, slot j holds the tile of [H - slots, H - 1] that is j modulo `slots` (or nothing: the script
  empties the slots a head's move skips). The lifetime state is a head alone. A ring holds every tile a
  window may read (the widest window's tiles at that size, plus the tiles an event may be ahead of its
  ingest time, plus one), so a tile leaves its ring only once no window at or after the read reads it. The
  script reads and writes the header and the heads in one range each (a live event falls in its heads'
  tiles), a ring's slots only when a head moves on (the old head goes to its slot, the slots it skips are
  emptied) or an event is older than its head.
- `fsl:{...}:<layout>`, for LAST features: per field, one list its LAST features share (`LastList`): the
  newest tiles holding a value, in tiles of the finest of those features' sizes (as many as an event may be
  ahead of its ingest time, plus two; one for lifetime; of those at or before the settled tile, an hour
  before the writer's clock, only the newest), newest first, each its tile number, order (event time and
  ingest time as doubles, message id) and value. The newest tile at or before a window's end is the
  window's, whatever events ahead of their time have filled. Then a tail of the entries folded since the
  lists were last compacted (appended, compacted into the lists past 384 bytes); a read takes the newest of
  a list's choice and the tail's entries.
- `fsi:{...}:<layout>:<bucket>`: sets of the message ids folded in, per 7 days of event time, kept while
  a window may read their tiles and at least the redelivery horizon after the fold. Each set also holds
  the member `0` (no id maps to it), so the script knows a set it creates and gives it its expiry once.

MIN and MAX are NaN once a NaN is folded in, as the offline SQL computes them (IEEE 754-2019's minimum and
maximum); the infinities are values like any other, and a zero reads as +0.0.

`<layout>` is a digest of the layout, so a family whose features change starts afresh instead of misreading
old bytes. A read is one MGET of the keys' states; the merge runs in numpy over all keys of the read at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fstore.schema.aggregations import DAY, HOUR, AggregationSpec, FamilySpec
from fstore.store.events import MAX_FUTURE_SECONDS

FUTURE = MAX_FUTURE_SECONDS * 1_000_000  # how far ahead of its ingest time a stored event's time may be
RETENTION_MARGIN = HOUR  # kept past a tile's last reader, for clock skew between writer and reader
REDELIVERY_HORIZON = 7 * DAY  # Pub/Sub keeps an unacknowledged message for at most 7 days
ID_BUCKET = 7 * DAY
_LAYOUT_VERSION = "6"
# a LAST feature's list in its state: bytes and entry count; an entry: tile, event time, ingest time, the
# message id's and the value's sizes, then the id and the value
_LIST, _ENTRY = struct.Struct("<II"), struct.Struct("<dddII")
_DELTA = struct.Struct("<BdddII")  # a LAST delta (and a tail entry): feature number, entry head
_OPS = {"index": "i", "count": "a", "n": "a", "sum": "a", "min": "m", "max": "M"}
_EMPTY = {"index": -math.inf, "count": 0.0, "n": 0.0, "sum": 0.0, "min": math.inf, "max": -math.inf}
# Each thread keeps one merge buffer (for every family) up to 2 MB, ~220 keys of `bench_orders`: a larger read
# allocates its own, so a thread pool of readers holds at most 2 MB a thread.
_KEPT_BUFFER = 1 << 21
_buffers = threading.local()
SENTINEL = b"0"  # in every id set: the script creating a set sees it added (no id maps to it: `id_member`)


@dataclass(frozen=True)
class Ring:
    """The tiles of one size (None: the lifetime state, one slot)."""

    size: int | None
    slots: int  # in the ring, the head apart (0: lifetime, its head alone)
    head: int  # where the head slot starts, in doubles from the blob's start
    offset: int  # where the ring's slots start
    columns: tuple[tuple[str, str | None], ...]  # (kind, field): index, count, then n/sum/min/max per field

    @property
    def stride(self) -> int:
        return len(self.columns)

    @property
    def slot_stride(self) -> int:
        """A ring slot's columns: the head's but its tile number, which the slot's position and the head's say."""
        return len(self.columns) - 1

    @property
    def additive(self) -> list[int]:
        """The columns a window sums: count, and per field n and sum."""
        return [c for c, (kind, _) in enumerate(self.columns) if kind in ("count", "n", "sum")]

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


class TileLayout:
    """One family's layout (see the module's note): built once per family, shared by writes and reads."""

    def __init__(self, family: FamilySpec) -> None:
        self.family = family
        sizes = sorted({f.tile for f in family.features if f.tile is not None})
        planned = [(size, [f for f in family.features if f.tile == size]) for size in [*sizes, None]]
        planned = [(size, features) for size, features in planned if size is not None or features]
        shapes = [_ring(size, features) for size, features in planned]
        # after the header (the newest event time, the LAST state's compacted length): the heads, then the rings
        head_at, offset = 2, 2 + sum(shape.stride for shape in shapes)
        rings = []
        for shape in shapes:
            rings.append(dataclasses.replace(shape, head=head_at, offset=offset))
            head_at, offset = head_at + shape.stride, offset + shape.slots * shape.slot_stride
        self.rings: tuple[Ring, ...] = tuple(rings)
        self.width = offset
        self.fields = tuple(tuple(_field_columns(ring)) for ring in self.rings)
        self.empty_slots = tuple([_EMPTY[kind] for kind, _ in ring.columns] for ring in self.rings)
        # LAST: one list per field, shared by the field's LAST features (see LastList)
        last_features = [(f, f.field.name) for f in family.features if f.function == "last" and f.field is not None]
        last_fields = list(dict.fromkeys(name for _, name in last_features))
        self.last_lists = tuple(
            _last_list(name, [f for f, of in last_features if of == name], self.rings) for name in last_fields
        )
        self.lasts = tuple((f, last_fields.index(name)) for f, name in last_features)
        # what `tile_writes.key_records` does per ring, planned once: (ring, tile size, empty slot, per field
        # (name, column of n, sum, min, max or -1))
        self.write_plan = tuple(
            (r, ring.size, self.empty_slots[r], tuple((c.name, c.n, c.sum, c.min, c.max) for c in self.fields[r]))
            for r, ring in enumerate(self.rings)
        )
        # per ring, the columns a window sums and how `merge` reads each feature off the ring (LAST features
        # read their lists instead), planned once: a 1-key read is mostly this fixed work
        self._merge_plan = tuple(
            (
                ring,
                [c - 1 for c in ring.additive],  # in a slot's columns
                [_read_plan(f, ring) for f in family.features if f.tile == ring.size and f.function != "last"],
            )
            for ring in self.rings
        )
        self.numeric_fields = sorted({c.name for ring_fields in self.fields for c in ring_fields})
        self.value_fields = sorted({*self.numeric_fields, *last_fields})
        windowed = [(f.window or 0) + (f.tile or 0) for f in family.features if f.window is not None]
        self.tile_keep = (max(windowed) + FUTURE + RETENTION_MARGIN) if windowed else 0
        lifetime = any(f.window is None for f in family.features)
        self.keep_ms = 0 if lifetime else self.tile_keep // 1_000
        heads = [v for slot in self.empty_slots for v in slot]
        slots = [v for r, empty in zip(self.rings, self.empty_slots, strict=True) for _ in range(r.slots)
                 for v in empty[1:]]  # fmt: skip
        self.empty = struct.pack(f"<{self.width}d", -math.inf, 0.0, *heads, *slots)
        description = repr([(r.size, r.slots, r.columns) for r in self.rings]) + repr(self.last_lists)
        self.digest = hashlib.blake2b(f"{_LAYOUT_VERSION}{description}".encode(), digest_size=4).hexdigest()
        head: list[Any] = [len(self.rings)]
        for ring in self.rings:
            head += [ring.head, ring.offset, ring.slots, ring.stride, "".join(_OPS[k] for k, _ in ring.columns)]
        head += [len(self.last_lists), *(last.keep for last in self.last_lists), self.keep_ms, self.empty]
        self.script_head: list[bytes] = [v if isinstance(v, bytes) else str(v).encode() for v in head]

    def call_head(self, now_us: int) -> list[bytes]:
        """The script's arguments before the keys' for a call at `now_us`: the layout's, then per LAST list its
        settled tile, the newest one every read from now on reaches past (a margin left for readers' clocks):
        of the entries at or before it the script keeps only the newest."""
        settled = [0 if last.size is None else (now_us - RETENTION_MARGIN) // last.size for last in self.last_lists]
        return [*self.script_head, *(str(tile).encode() for tile in settled)]

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

    def merge(self, states: Sequence[bytes | None], last_states: Sequence[bytes | None], at_us: int
              ) -> list[dict[str, Any]]:  # fmt: skip
        """Every feature of the family for each key's state and LAST state (None: none) at time `at_us`."""
        table = self._table(states)
        values: dict[str, list[Any]] = {}
        # inf + -inf is NaN, as IEEE (and offline) say; a sum beyond the doubles' range is an infinity
        with np.errstate(invalid="ignore", over="ignore"):
            for ring, additive, reads in self._merge_plan:
                # the head is one more slot of the ring: the tile numbers say which slots a window reads
                heads = table[:, ring.head : ring.head + ring.stride]
                block = table[:, ring.offset : ring.offset + ring.slots * ring.slot_stride]
                slots = block.reshape(len(states), ring.slots, ring.slot_stride)
                numbers = _slot_numbers(heads[:, 0], ring.slots) if ring.slots and any(r.tiles for r in reads) else None
                now = ring.number(at_us)
                totals: dict[int | None, tuple[Any, Any, Any]] = {}
                for read in reads:
                    if read.tiles not in totals:
                        totals[read.tiles] = _window(heads, slots, numbers, now, read.tiles, additive)
                    values[read.name] = _feature_values(read, heads, slots, *totals[read.tiles])
        if self.lasts:
            empty = _LIST.pack(0, 0) * len(self.last_lists)
            values.update(self._last_values([b or empty for b in last_states], at_us))
        names = [f.name for f in self.family.features]
        columns = [values[n] for n in names]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def _table(self, states: Sequence[bytes | None]) -> Any:
        """The states as one (keys, width) array of doubles, in this thread's buffer (a fresh megabyte per
        read cost ~420 page faults per 100-key read, measured), valid until the thread's next merge."""
        size = self.width * 8
        buffer: bytearray | None = getattr(_buffers, "buffer", None)
        if buffer is None or len(buffer) < len(states) * size:
            buffer = bytearray(len(states) * size)
            if len(buffer) <= _KEPT_BUFFER:
                _buffers.buffer = buffer
        view = memoryview(buffer)
        for i, state in enumerate(states):
            view[i * size : (i + 1) * size] = state if state is not None and len(state) == size else self.empty
        return np.frombuffer(buffer, dtype="<f8", count=len(states) * self.width).reshape(len(states), self.width)

    def _last_values(self, states: Sequence[bytes], at_us: int) -> dict[str, list[Any]]:
        """Per LAST feature, the value of the newest entry of its field's list whose tile is in the window at
        `at_us`. A list's tiles are its finest feature's; a window of coarser tiles is a range of them."""
        # per list, its features: (their column, the window's bounds in the list's tile numbers, exclusive
        # and inclusive, and the decoder)
        plans: list[list[tuple[int, float, float, Any]]] = [[] for _ in self.last_lists]
        for k, (feature, i) in enumerate(self.lasts):
            last = self.last_lists[i]
            assert feature.field is not None
            decode = decoder(feature.field.kind)
            if last.size is None or feature.window is None or feature.tile is None:
                plans[i].append((k, -math.inf, math.inf, decode))
            else:
                ratio, high = feature.tile // last.size, at_us // feature.tile
                low = high - feature.window // feature.tile
                plans[i].append((k, (low + 1) * ratio - 1, (high + 1) * ratio - 1, decode))
        for plan in plans:  # the widest window's end first: a walk of the list, newest first, meets it first
            plan.sort(key=lambda item: -item[2])
        found: list[list[Any]] = [[] for _ in self.lasts]
        head, entry, delta = _LIST.size, _ENTRY.size, _DELTA.size
        list_at, entry_at, delta_at = _LIST.unpack_from, _ENTRY.unpack_from, _DELTA.unpack_from
        for state in states:
            # per feature its choice: ((tile, event time, ingest time), where its id starts, id size, value
            # size), or None
            pos = 0
            best: list[tuple[tuple[Any, Any, Any], int, int, int] | None] = [None] * len(self.lasts)
            for plan in plans:
                length, _ = list_at(state, pos)
                at, stop = pos + head, pos + head + length
                pos, f = stop, 0
                while at < stop and f < len(plan):  # a feature's choice: the first entry by its window's end
                    number, event_us, ingest_us, id_size, value_size = entry_at(state, at)
                    while f < len(plan) and number <= plan[f][2]:
                        if number > plan[f][1]:
                            best[plan[f][0]] = ((number, event_us, ingest_us), at + entry, id_size, value_size)
                        f += 1
                    at += entry + id_size + value_size
            end = len(state)
            while pos < end:  # the tail: entries not yet in the lists, each against the lists' choices
                j, number, event_us, ingest_us, id_size, value_size = delta_at(state, pos)
                start, pos = pos + delta, pos + delta + id_size + value_size
                order = (number, event_us, ingest_us)
                for k, oldest, newest, _ in plans[j - 1]:
                    if oldest < number <= newest:
                        held = best[k]
                        if (
                            held is None
                            or order > held[0]
                            or (
                                order == held[0] and state[start : start + id_size] > state[held[1] : held[1] + held[2]]
                            )
                        ):
                            best[k] = (order, start, id_size, value_size)
            for plan in plans:
                for k, _, _, decode in plan:
                    chosen = best[k]
                    if chosen is None:
                        found[k].append(None)
                    else:
                        value_at = chosen[1] + chosen[2]
                        found[k].append(decode(state[value_at : value_at + chosen[3]]))
        return {feature.name: column for (feature, _), column in zip(self.lasts, found, strict=True)}


@dataclass(frozen=True)
class LastList:
    """The LAST state's list for one field, shared by the field's LAST features: per tile of `size` (the
    finest of its windowed features' tiles, which the coarser ones are multiples of; None: lifetime only)
    the latest entry, the `keep` newest tiles. The newest entry before a window's end is the newest one of
    a tile that ends by it, so each feature reads its window off the one list."""

    field: str
    size: int | None
    keep: int
    rings: tuple[int, ...]  # the rings of its features: an event one of them folds is a candidate


def _last_list(name: str, features: list[AggregationSpec], rings: Sequence[Ring]) -> LastList:
    sizes = sorted({f.tile for f in features if f.tile is not None})
    size = sizes[0] if sizes else None
    assert all(s % sizes[0] == 0 for s in sizes), "tile sizes are multiples of each other"
    keep = 1 if size is None else -(-FUTURE // size) + 2
    used = tuple(sorted({r for r, ring in enumerate(rings) for f in features if ring.size == f.tile}))
    return LastList(name, size, keep, used)


def _ring(size: int | None, features: list[AggregationSpec]) -> Ring:
    """The ring's shape; where its head and slots sit is the layout's to say."""
    fields = sorted({f.field.name for f in features if f.field is not None and f.function != "last"})
    columns: list[tuple[str, str | None]] = [("index", None), ("count", None)]
    for name in fields:
        functions = {f.function for f in features if f.field is not None and f.field.name == name}
        columns.append(("n", name))
        if functions & {"sum", "mean"}:
            columns.append(("sum", name))
        columns += [(kind, name) for kind in ("min", "max") if kind in functions]
    if size is None:
        slots = 0
    else:
        widest = max((f.window or 0) for f in features)
        slots = widest // size + -(-FUTURE // size) + 1
    return Ring(size, slots, 0, 0, tuple(columns))


def _field_columns(ring: Ring) -> list[FieldColumns]:
    names = [name for kind, name in ring.columns if kind == "n" and name is not None]
    found = {(kind, name): i for i, (kind, name) in enumerate(ring.columns)}
    return [
        FieldColumns(
            n, found[("n", n)], found.get(("sum", n), -1), found.get(("min", n), -1), found.get(("max", n), -1)
        )
        for n in names
    ]


def _slot_numbers(head_numbers: Any, slots: int) -> Any:
    """Each ring slot's tile number, from its ring's head (tile H): slot j holds the tile in [H - slots, H - 1]
    that is j modulo `slots` (the script clears the slots a head's move skips); -inf where no head is."""
    known = np.isfinite(head_numbers)
    newest = np.where(known, head_numbers, 0.0) - 1.0
    lap = newest - np.mod(newest, slots)  # per key, the tile in slot 0 of the newest's lap
    numbers = lap[:, None] + np.arange(slots, dtype=np.float64)
    numbers -= np.where(numbers > newest[:, None], float(slots), 0.0)  # a slot past the newest: the lap before
    return np.where(known[:, None], numbers, -math.inf)


def _window(heads: Any, slots: Any, numbers: Any, now: int, tiles: int | None, additive: Any
            ) -> tuple[Any, Any, Any]:  # fmt: skip
    """A window of `tiles` tiles ending with tile `now` (None: all) over a ring: every column's sum over the
    slots and the head it reads, in the slots' columns (a head's column c is a slot's c - 1; only the
    additive columns' sums are used), and which slots and heads it reads (None: all). `numbers`: the slots'
    tile numbers; `additive`: the columns summed (count, n, sum), in the slots' columns."""
    if tiles is None:
        return slots.sum(axis=1) + heads[:, 1:], None, None
    head_mask = (heads[:, 0] > now - tiles) & (heads[:, 0] <= now)
    slot_mask = (numbers > now - tiles) & (numbers <= now)
    # A product with the mask as 0/1 weights sums every column at once (a sum along the slots, which are
    # strided, costs as much per column). A term x * 1 is x; one x * 0 is 0 unless x is infinite or NaN,
    # which then shows in that sum: a key with such a sum is summed again by masking instead.
    sums = np.matmul(slot_mask.astype(np.float64)[:, None, :], slots)[:, 0, :]
    unsure = ~np.isfinite(sums[:, additive]).all(axis=1)
    if unsure.any():
        sums[unsure] = np.where(slot_mask[unsure][:, :, None], slots[unsure], 0.0).sum(axis=1)
    return sums + np.where(head_mask[:, None], heads[:, 1:], 0.0), head_mask, slot_mask


@dataclass(frozen=True)
class _ReadPlan:
    """How `merge` reads one feature off its ring: its window in the ring's tiles (None: all of them), the
    column of its count of values (-1: a COUNT) and the column it sums or compares."""

    name: str
    function: str
    tiles: int | None
    n: int
    column: int
    floating: bool


def _read_plan(feature: AggregationSpec, ring: Ring) -> _ReadPlan:
    tiles = None if ring.size is None or feature.window is None else feature.window // ring.size
    if feature.function == "count":
        return _ReadPlan(feature.name, "count", tiles, -1, ring.column("count", None), False)
    assert feature.field is not None
    name = feature.field.name
    kind = "sum" if feature.function in ("sum", "mean") else feature.function
    floating = feature.field.kind in ("float", "double")
    return _ReadPlan(feature.name, feature.function, tiles, ring.column("n", name), ring.column(kind, name), floating)


def _feature_values(read: _ReadPlan, heads: Any, slots: Any, sums: Any, head_mask: Any, slot_mask: Any) -> list[Any]:
    function, head_column = read.function, read.column
    column = head_column - 1  # in the slots and the window's sums, which leave the tile number out
    if function == "count":
        return [int(v) for v in sums[:, column].tolist()]
    present = sums[:, read.n - 1].tolist()
    if function == "sum":
        totals = sums[:, column].tolist()
        return totals if read.floating else [int(v) for v in totals]
    if function == "mean":
        totals = sums[:, column].tolist()
        return [s / n if n else None for s, n in zip(totals, present, strict=True)]
    # NaN once a slot holds one (numpy's minimum and maximum keep it), as offline; a zero is +0.0, as offline
    pick, fill = (np.minimum, math.inf) if function == "min" else (np.maximum, -math.inf)
    data = slots[:, :, column]
    found = pick.reduce(data if slot_mask is None else np.where(slot_mask, data, fill), axis=1, initial=fill)
    head = heads[:, head_column]
    found = pick(found, head if head_mask is None else np.where(head_mask, head, fill))
    if read.floating:
        return [v if n else None for v, n in zip((found + 0.0).tolist(), present, strict=True)]
    return [int(v) if n else None for v, n in zip(found.tolist(), present, strict=True)]


def id_member(message_id: str) -> str:
    """A message id as the id sets hold it."""
    # Pub/Sub's ids are decimal numbers: kept as they are, a set of them is Redis's compact intset
    if message_id.isdigit() and len(message_id) <= 18 and message_id[0] != "0":
        return message_id
    digest = int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=8).digest(), "big", signed=True)
    return str(digest) if digest else "d0"  # "0" is every set's SENTINEL


def encode_value(value: Any) -> bytes:
    """A LAST value as its entry holds it (`decoder` reads it back)."""
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
