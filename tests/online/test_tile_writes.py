"""The script's arguments `key_records` builds for a batch, read back without Redis: each key's deltas are
its events' per-tile aggregates, its LAST deltas the latest event per tile, a message id counts once per
key, and the batch's two sources (Arrow table, `TileEvent`s) give the same arguments."""

from __future__ import annotations

import dataclasses
import math
import random
import struct
import time
from collections import defaultdict
from typing import Any

import numpy as np

from fstore.schema.aggregations import DAY
from fstore.store.online.tile_layout import TileLayout, id_member
from fstore.store.online.tile_writes import KeyRecord, TileBatch, key_records
from tests.offline.test_aggregations import history_table, random_events
from tests.online.test_tiles import tile_events, wide_family

_LAST_HEAD = struct.Struct("<BdddII")  # list number, tile, event time, ingest time, id and value sizes


def batch_of(layout: TileLayout, events: list[dict[str, Any]]) -> TileBatch:
    return TileBatch.from_events(layout, tile_events(events))


def records_for(layout: TileLayout, events: list[dict[str, Any]], now: int) -> dict[Any, KeyRecord]:
    batch = batch_of(layout, events)
    records = key_records(layout, batch, np.arange(len(batch)), layout.oldest_numbers(now), now)
    return {r.key: r for r in records}


def deltas_of(layout: TileLayout, record: KeyRecord) -> dict[tuple[int, int], list[float]]:
    """(ring, tile) -> the ring's columns, from the record's packed deltas (rows padded to the widest ring)."""
    width = 1 + max(ring.stride for ring in layout.rings)
    rows = np.frombuffer(record.args[-2 if layout.lasts else -1], "<f8").reshape(-1, width)
    found = {}
    for row in rows.tolist():
        ring = layout.rings[int(row[0]) - 1]
        found[(int(row[0]) - 1, int(row[1]))] = row[1 : 1 + ring.stride]
    return found


def expected_deltas(layout: TileLayout, events: list[dict[str, Any]], now: int) -> dict[tuple[int, int], list[float]]:
    """The per-tile aggregates of one key's events, event by event (each message id once)."""
    oldest = layout.oldest_numbers(now)
    cells: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    seen = set()
    for e in events:
        if e["message_id"] in seen:
            continue
        seen.add(e["message_id"])
        for r, (ring, floor) in enumerate(zip(layout.rings, oldest, strict=True)):
            tile = 0 if ring.size is None else e["event_us"] // ring.size
            if floor is None or tile >= floor:
                cells[(r, tile)].append(e)
    out = {}
    for (r, tile), members in cells.items():
        row: list[float] = []
        for kind, name in layout.rings[r].columns:
            values = [e[name] for e in members if name is not None and e[name] is not None]
            row.append(
                {
                    "index": float(tile),
                    "count": float(len(members)),
                    "n": float(len(values)),
                    "sum": math.fsum(values),
                    "min": min(values, default=math.inf),
                    "max": max(values, default=-math.inf),
                }[kind]
            )
        out[(r, tile)] = row
    return out


def test_each_keys_deltas_are_its_events_per_tile_aggregates() -> None:
    layout = TileLayout(wide_family())
    now = time.time_ns() // 1_000
    events = random_events(random.Random(5), 2_000, origin=now - 40 * DAY)
    events += random.Random(6).sample(events, 50)  # redelivered within the batch
    records = records_for(layout, events, now)
    for key, record in records.items():
        mine = [e for e in events if e["user_id"] == key]
        got, want = deltas_of(layout, record), expected_deltas(layout, mine, now)
        assert got.keys() == want.keys()
        for cell, row in want.items():
            assert np.allclose(got[cell], row, rtol=1e-12), (key, cell)
        folded = {e["message_id"] for e in mine if reaches(layout, e, now)}
        assert sorted(record.members) == sorted(id_member(m) for m in folded)
        assert {events[i]["message_id"] for i in record.rows} == folded


def reaches(layout: TileLayout, event: dict[str, Any], now: int) -> bool:
    """The event falls in a tile some window still reads at `now`."""
    oldest = layout.oldest_numbers(now)
    return any(
        floor is None or event["event_us"] // ring.size >= floor
        for ring, floor in zip(layout.rings, oldest, strict=True)
    )


def test_a_message_id_counts_once_per_key_and_in_every_key_it_comes_with() -> None:
    layout = TileLayout(wide_family())
    now = time.time_ns() // 1_000
    base: dict[str, Any] = {
        "event_us": now - 1_000,
        "ingest_us": now,
        "backfilled": False,
        "amount": 2.0,
        "status": "paid",
    }
    events = [
        {**base, "user_id": 1, "message_id": "7"},
        {**base, "user_id": 1, "message_id": "7"},
        {**base, "user_id": 2, "message_id": "7"},
    ]
    records = records_for(layout, events, now)
    assert records[1].members == ["7"] and records[1].rows == [0]
    assert records[2].members == ["7"] and records[2].rows == [2]
    count = layout.rings[0].column("count", None)
    assert all(row[count] == 1.0 for row in deltas_of(layout, records[1]).values())


def test_last_deltas_are_the_latest_event_per_tile_by_event_ingest_and_id() -> None:
    layout = TileLayout(wide_family())
    now = time.time_ns() // 1_000
    t = now - 10_000_000
    base: dict[str, Any] = {"user_id": 3, "event_us": t, "ingest_us": now, "backfilled": False, "amount": 1.0}
    events = [
        {**base, "message_id": "b", "status": "tie-b"},
        {**base, "message_id": "a", "status": "tie-a"},  # same times: the larger id wins
        {**base, "message_id": "c", "event_us": t - 1, "status": "earlier"},
        {**base, "message_id": "d", "ingest_us": now - 1, "status": "ingested-before"},
        {**base, "message_id": "e", "status": None},  # no value: no candidate
    ]
    record = records_for(layout, events, now)[3]
    packed, at, chosen = record.args[-1], 0, {}
    while at < len(packed):
        number, tile, _, _, id_size, value_size = _LAST_HEAD.unpack_from(packed, at)
        start = at + _LAST_HEAD.size
        message_id, value = packed[start : start + id_size], packed[start + id_size : start + id_size + value_size]
        chosen[(number, tile)] = (message_id, value)
        at = start + id_size + value_size
    status = 1 + [last.field for last in layout.last_lists].index("status")
    assert {number for number, _ in chosen} == set(range(1, len(layout.last_lists) + 1))  # a delta per list
    # per tile: status's latest with a value is "b" (a tie on both times, the larger id; "e" has none),
    # amount's is "e" (every event has one)
    assert {held for (number, _), (held, _) in chosen.items() if number == status} == {b"b"}
    assert {held for (number, _), (held, _) in chosen.items() if number != status} == {b"e"}
    assert {value for (number, _), (_, value) in chosen.items() if number == status} == {b"tie-b"}


def test_a_table_and_its_events_give_the_same_arguments() -> None:
    layout = TileLayout(wide_family())
    now = time.time_ns() // 1_000
    events = [e for e in random_events(random.Random(8), 500, origin=now - 10 * DAY) if e["ingest_us"] <= now]
    oldest = layout.oldest_numbers(now)
    from_table = TileBatch.from_table(layout, history_table(events))
    from_events = batch_of(layout, events)
    assert (from_table.backfilled == from_events.backfilled).all()
    a = key_records(layout, from_table, np.arange(len(events)), oldest, now)
    b = key_records(layout, from_events, np.arange(len(events)), oldest, now)
    assert [(r.key, r.rows, r.keys, r.args) for r in a] == [(r.key, r.rows, r.keys, r.args) for r in b]


def test_events_no_window_reads_any_more_make_no_record() -> None:
    layout = TileLayout(wide_family())
    now = time.time_ns() // 1_000
    windowed = tuple(f for f in layout.family.features if f.window is not None)
    lifetime_free = TileLayout(dataclasses.replace(layout.family, features=windowed))
    old = {"user_id": 4, "event_us": now - 90 * DAY, "ingest_us": now, "backfilled": True, "message_id": "old",
           "amount": 1.0, "status": "x"}  # fmt: skip
    assert records_for(lifetime_free, [old], now) == {}
    assert list(records_for(layout, [old], now)) == [4]  # the lifetime features still fold it
