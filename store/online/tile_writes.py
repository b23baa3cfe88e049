"""The tile script's keys and arguments for a batch, built for all keys of the batch at once in numpy.

`TileBatch` holds a batch of a family's source events as columns (`from_table`: the offline-shaped Arrow
table the streaming job stores; `from_events`: `TileEvent`s). `key_records` pre-aggregates the rows it is
given into per-key, per-tile deltas and packs each key's share as `apply_tiles.lua` reads it: per key, its
state's name, its LAST state's name (when the family has LAST features) and its message-id sets' names, then
its counts, its ids, its deltas and its LAST deltas. What is left per key in Python is naming its keys and
slicing its bytes out of buffers packed for the whole batch: a streamed batch brings most keys one event.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fstore.store.online.tile_layout import ID_BUCKET, REDELIVERY_HORIZON, TileLayout, encode_value, id_member

# a LAST delta's head, as `_DELTA` in tile_layout.py: list number, tile, event time, ingest time, id and value sizes
_DELTA_HEAD = np.dtype([("list", "u1"), ("tile", "<f8"), ("event", "<f8"), ("ingest", "<f8"), ("id", "<u4"),
                        ("value", "<u4")])  # fmt: skip


@dataclass(frozen=True)
class TileBatch:
    """A batch of a family's source events, one row each: what the tiles read of them."""

    keys: list[Any]  # the group-by value (None: the event belongs to no key)
    event_us: Any  # int64 array
    ingest_us: Any  # int64 array
    message_ids: list[str]
    backfilled: Any  # bool array: a backfill's row (its id derived, `backfill:...`), never too late
    present: dict[str, Any]  # field -> bool array: the field is set
    numbers: dict[str, Any]  # numeric field -> float64 array (0 where unset)
    values: dict[str, list[Any]]  # LAST field -> its values (None: unset)

    def __len__(self) -> int:
        return len(self.message_ids)

    @classmethod
    def from_columns(cls, layout: TileLayout, keys: list[Any], event_us: Sequence[int], ingest_us: Sequence[int],
                     message_ids: list[str], values: dict[str, list[Any]], backfilled: Sequence[bool] | None = None
                     ) -> TileBatch:  # fmt: skip
        """`values`: per field the layout reads, its values (None: unset). `backfilled` (default: the rows whose
        id a backfill derived, `backfill:...`)."""
        numeric, last = layout.numeric_fields, {list_.field for list_ in layout.last_lists}
        return cls(
            keys=keys,
            event_us=np.asarray(event_us, np.int64),
            ingest_us=np.asarray(ingest_us, np.int64),
            message_ids=message_ids,
            backfilled=np.fromiter((m.startswith("backfill:") for m in message_ids), bool, len(message_ids))
            if backfilled is None
            else np.asarray(backfilled, bool),
            present={n: np.fromiter((v is not None for v in values[n]), bool, len(values[n])) for n in values},
            numbers={n: np.array([0.0 if v is None else v for v in values[n]], np.float64) for n in numeric},
            values={n: values[n] for n in last},
        )

    @classmethod
    def from_table(cls, layout: TileLayout, table: Any) -> TileBatch:
        """The rows of an offline-shaped Arrow table of the family's source."""
        import pyarrow.compute as pc

        family = layout.family

        def micros(column: str) -> list[int]:
            return pc.cast(table.column(column), "int64").to_pylist()  # type: ignore[no-any-return]

        names = layout.value_fields
        return cls.from_columns(
            layout,
            table.column(family.group_by.name).to_pylist(),
            micros(family.source.event_time.name),
            micros("ingest_time"),
            table.column("message_id").to_pylist(),
            {n: table.column(n).to_pylist() for n in names},
        )

    @classmethod
    def from_events(cls, layout: TileLayout, events: Sequence[Any]) -> TileBatch:
        """`TileEvent`s (store/online/tiles.py)."""
        return cls.from_columns(
            layout,
            [e.key for e in events],
            [e.event_us for e in events],
            [e.ingest_us for e in events],
            [e.message_id for e in events],
            {n: [e.values.get(n) for e in events] for n in layout.value_fields},
            [e.backfilled for e in events],
        )


@dataclass(slots=True)
class KeyRecord:
    """One key's share of a batch: its rows folded (in the batch), their ids as the sets hold them, and the
    script's keys and arguments for them."""

    key: Any
    rows: list[int]
    members: list[str]
    keys: list[bytes]
    args: list[bytes]


def key_records(layout: TileLayout, batch: TileBatch, rows: Any, oldest: list[int | None], now_us: int
                ) -> list[KeyRecord]:  # fmt: skip
    """Pre-aggregate the batch's `rows` (accepted events with a key) into per-tile deltas, per key. A key none
    of whose events reaches a tile a window still reads (`oldest`: per ring, its oldest tile a window reads)
    has no record. A message id twice in a key's events counts once."""
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return []
    rows, codes, key_values = _by_key(batch, rows)
    event_us = batch.event_us[rows]
    present = {name: column[rows] for name, column in batch.present.items()}
    numbers = {name: column[rows] for name, column in batch.numbers.items()}
    every = np.arange(len(key_values) + 1)  # key numbers, and one past the last: where each key's share ends
    found = _ring_deltas(layout, codes, event_us, present, numbers, oldest, every)
    if found is None:  # no event reaches a tile a window still reads
        return []
    deltas, delta_at, in_ring, hit = found
    last_at, last_deltas = _last_deltas(layout, batch, rows, codes, event_us, present, in_ring, every)
    folded_rows = rows[hit]
    folded_at = np.searchsorted(codes[hit], every).tolist()
    folded_event_us = event_us[hit]
    one = _one_bucket_counts(layout, folded_event_us, now_us)
    one_counts, one_buckets, one_expiries = (
        one[:, :4].tobytes(),
        one[:, 4].astype(np.int64).tolist(),
        one[:, 2].tolist(),
    )
    folded_times = folded_event_us.tolist()
    members = [id_member(batch.message_ids[i]) for i in folded_rows.tolist()]
    row_list = folded_rows.tolist()
    prefix, suffix = f"{{{layout.family.name}:", f"}}:{layout.digest}"
    with_last = bool(layout.lasts)
    out = []
    for c, key in enumerate(key_values):
        lo, hi = folded_at[c], folded_at[c + 1]
        if lo == hi:
            continue
        tag = f"{prefix}{key}{suffix}".encode()
        names = [b"fsa:" + tag, b"fsl:" + tag] if with_last else [b"fsa:" + tag]
        key_deltas = deltas[delta_at[c] : delta_at[c + 1]]
        if hi - lo == 1:  # most keys of a streamed batch: one id in one bucket
            names.append(b"fsi:%b:%d" % (tag, one_buckets[lo]))
            args = [one_counts[32 * lo : 32 * lo + 32], members[lo].encode(), key_deltas]
        else:
            args = _counts_and_ids(tag, names, folded_times[lo:hi], one_buckets[lo:hi], one_expiries[lo:hi],
                                   members[lo:hi])  # fmt: skip
            args.append(key_deltas)
        if with_last:
            args.append(last_deltas[last_at[c] : last_at[c + 1]])
        out.append(KeyRecord(key, row_list[lo:hi], members[lo:hi], names, args))
    return out


def _ring_deltas(layout: TileLayout, codes: Any, event_us: Any, present: dict[str, Any], numbers: dict[str, Any],
                 oldest: list[int | None], every: Any) -> tuple[bytes, list[int], list[Any], Any] | None:  # fmt: skip
    """Per key and ring, one delta per tile its events fall in (those a window still reads): the ring's number,
    then its columns, padded to the widest ring's. Returns every key's deltas side by side (ring after ring)
    as bytes, where each key's start, per ring which rows it folds, and which rows any ring folds; None when
    no row reaches a ring."""
    rows = len(codes)
    hit = np.zeros(rows, bool)
    tables, table_codes, in_ring = [], [], []
    width = 1 + max(ring.stride for ring in layout.rings)
    for r, size, empty, columns in layout.write_plan:
        number = np.zeros(rows, np.int64) if size is None else event_us // size
        floor = oldest[r]
        ok = np.ones(rows, bool) if floor is None else number >= floor
        hit |= ok
        in_ring.append(ok)
        chosen = np.flatnonzero(ok)
        if not len(chosen):
            continue
        low = int(number[chosen].min())
        span = int(number[chosen].max()) - low + 1
        groups, first, inverse = np.unique(codes[chosen] * span + (number[chosen] - low), return_index=True,
                                           return_inverse=True)  # fmt: skip
        count = len(groups)
        table = np.zeros((count, width))
        table[:, : 1 + len(empty)] = [float(r + 1), *empty]
        table[:, 1] = number[chosen][first]
        table[:, 2] = np.bincount(inverse, minlength=count)
        for name, n, total, least, most in columns:
            has = present[name][chosen]
            values = numbers[name][chosen]
            table[:, 1 + n] = np.bincount(inverse, weights=has, minlength=count)
            if total >= 0:
                table[:, 1 + total] = np.bincount(inverse, weights=np.where(has, values, 0.0), minlength=count)
            with np.errstate(invalid="ignore"):  # np.minimum and np.maximum keep a NaN, as offline
                if least >= 0:
                    np.minimum.at(table[:, 1 + least], inverse[has], values[has])
                if most >= 0:
                    np.maximum.at(table[:, 1 + most], inverse[has], values[has])
        tables.append(table)
        table_codes.append(groups // span)
    if not tables:
        return None
    delta_codes = np.concatenate(table_codes)
    order = np.argsort(delta_codes, kind="stable")  # stable: a key's deltas keep the rings' order
    deltas = np.concatenate(tables)[order].astype("<f8").tobytes()
    delta_at = (np.searchsorted(delta_codes[order], every) * (width * 8)).tolist()
    return deltas, delta_at, in_ring, hit


def _by_key(batch: TileBatch, rows: Any) -> tuple[Any, Any, list[Any]]:
    """The rows ordered by key (keys in order of first appearance, a key's rows in batch order), less a
    message id a key's rows repeat; each row's key number; the keys."""
    index: dict[Any, int] = {}
    keys = batch.keys
    row_list = rows.tolist()
    codes = np.fromiter((index.setdefault(keys[i], len(index)) for i in row_list), np.int64, len(row_list))
    ids = [batch.message_ids[i] for i in row_list]
    if len(set(ids)) != len(ids):  # a message delivered twice within the batch
        seen: set[tuple[int, str]] = set()
        kept = []
        for j, pair in enumerate(zip(codes.tolist(), ids, strict=True)):
            if pair not in seen:
                seen.add(pair)
                kept.append(j)
        rows, codes = rows[kept], codes[kept]
    order = np.argsort(codes, kind="stable")
    return rows[order], codes[order], list(index)


def _one_bucket_counts(layout: TileLayout, event_us: Any, now_us: int) -> Any:
    """Per row, the counts of a key whose only event it is (newest event time, 1 bucket, the bucket's
    expiry, 1 id), then its bucket number: one (rows, 5) array of doubles. A set's expiry is its bucket's,
    unless the redelivery horizon reaches further: then it moves on with every fold. Negative: the bucket's,
    given only to a set the script creates (it cannot change)."""
    bucket = event_us // ID_BUCKET
    fixed_ms = ((bucket + 1) * ID_BUCKET + layout.tile_keep) // 1_000
    horizon_ms = (now_us + REDELIVERY_HORIZON) // 1_000
    table = np.empty((len(event_us), 5))
    table[:, 0] = event_us
    table[:, 1] = 1.0
    table[:, 2] = np.where(horizon_ms > fixed_ms, horizon_ms, -fixed_ms)
    table[:, 3] = 1.0
    table[:, 4] = bucket
    return table.astype("<f8")


def _counts_and_ids(tag: bytes, names: list[bytes], event_us: list[int], buckets: list[int], expiries: list[float],
                    members: list[str]) -> list[bytes]:  # fmt: skip
    """A key with several events (per event its bucket and the bucket's expiry, as `_one_bucket_counts` has
    them): its sets' names appended to `names`; its counts (newest event time, bucket count, per bucket its
    expiry and id count) and its ids, bucket after bucket."""
    grouped: dict[int, tuple[float, list[bytes]]] = {}
    for bucket, expiry, member in zip(buckets, expiries, members, strict=True):
        found = grouped.get(bucket)
        if found is None:
            grouped[bucket] = (expiry, [member.encode()])
        else:
            found[1].append(member.encode())
    counts: list[float] = [max(event_us), len(grouped)]
    ids: list[bytes] = []
    for bucket, (expiry, members_in) in grouped.items():
        names.append(b"fsi:%b:%d" % (tag, bucket))
        counts += [expiry, len(members_in)]
        ids += members_in
    return [struct.pack(f"<{len(counts)}d", *counts), *ids]


def _last_deltas(layout: TileLayout, batch: TileBatch, rows: Any, codes: Any, event_us: Any,
                 present: dict[str, Any], in_ring: list[Any], every: Any) -> tuple[list[int], bytes]:  # fmt: skip
    """The LAST deltas, per key: for each LAST list, per key and tile among the events one of its features'
    rings folds and that have a value, the latest event by (event time, ingest time, message id), as the
    script reads it (head, id, value). Returns where each key's deltas start in the bytes, and the bytes."""
    if not layout.last_lists:
        return [], b""
    picked_lists, picked_rows, picked_tiles, picked_codes = [], [], [], []
    for i, last in enumerate(layout.last_lists):
        ok = np.logical_or.reduce([in_ring[r] for r in last.rings]) & present[last.field]
        chosen = np.flatnonzero(ok)
        if not len(chosen):
            continue
        tiles = np.zeros(len(chosen), np.int64) if last.size is None else event_us[chosen] // last.size
        ids = np.array([batch.message_ids[j] for j in rows[chosen].tolist()])  # by code point: UTF-8's byte order
        ingest = batch.ingest_us[rows[chosen]]
        order = np.lexsort((ids, ingest, event_us[chosen], tiles, codes[chosen]))
        key_tile = np.stack([codes[chosen][order], tiles[order]])
        latest = np.ones(len(order), bool)  # the last row of each (key, tile) run
        latest[:-1] = (key_tile[:, 1:] != key_tile[:, :-1]).any(axis=0)
        taken = chosen[order[latest]]
        picked_lists.append(np.full(len(taken), i + 1))
        picked_rows.append(taken)
        picked_tiles.append(tiles[order[latest]])
        picked_codes.append(codes[taken])
    if not picked_rows:
        return [0] * len(every), b""
    taken = np.concatenate(picked_rows)
    order = np.argsort(np.concatenate(picked_codes), kind="stable")
    taken = taken[order]
    batch_rows = rows[taken].tolist()
    lists = np.concatenate(picked_lists)[order]
    fields = [layout.last_lists[j - 1].field for j in lists.tolist()]
    mids = [batch.message_ids[j].encode() for j in batch_rows]
    values = [encode_value(batch.values[f][j]) for f, j in zip(fields, batch_rows, strict=True)]
    head = np.empty(len(taken), _DELTA_HEAD)
    head["list"], head["tile"] = lists, np.concatenate(picked_tiles)[order]
    head["event"], head["ingest"] = event_us[taken], batch.ingest_us[rows[taken]]
    head["id"] = [len(m) for m in mids]
    head["value"] = [len(v) for v in values]
    heads, size = head.tobytes(), _DELTA_HEAD.itemsize
    parts: list[bytes] = []
    for p, (mid, value) in enumerate(zip(mids, values, strict=True)):
        parts += (heads[p * size : (p + 1) * size], mid, value)
    ends = np.zeros(len(taken) + 1, np.int64)
    np.cumsum(size + head["id"].astype(np.int64) + head["value"], out=ends[1:])
    return ends[np.searchsorted(codes[taken], every)].tolist(), b"".join(parts)
