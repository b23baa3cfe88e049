"""Aggregation tiles in a real Redis: the merged read equals the definition's brute force at the time of the
read, a redelivered batch changes nothing, events later than allowed are counted and left out."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import redis

from fstore.schema.aggregations import DAY, HOUR
from fstore.schema.registry import Registry
from fstore.store.online.tiles import TileEvent, TileStore
from fstore.testing import RedisServer
from tests.offline.test_aggregations import brute_force, random_events


def tile_events(events: list[dict[str, Any]]) -> list[TileEvent]:
    return [
        TileEvent(
            e["user_id"],
            e["event_us"],
            e["ingest_us"],
            e["message_id"],
            e["backfilled"],
            {"amount": e["amount"], "status": e["status"]},
        )
        for e in events
    ]


def test_tiles_read_the_definitions_value_and_ignore_redeliveries() -> None:
    family = Registry.default().family("user_orders")
    now = time.time_ns() // 1_000
    rng = random.Random(3)
    events = [e for e in random_events(rng, 3_000, origin=now - 40 * DAY) if e["ingest_us"] <= now]
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        applied, late = tiles.apply(family, tile_events(events))
        want_late = sum(1 for e in events if not e["backfilled"] and e["ingest_us"] - e["event_us"] > HOUR)
        assert (applied, late) == (len(events) - want_late, want_late)
        again, _ = tiles.apply(family, tile_events(rng.sample(events, 500)))
        assert again == 0  # the same messages again: nothing applied

        rows = tiles.read(family, [1, 2, 3, 4, 5, 6], now)
        for key, row in zip([1, 2, 3, 4, 5, 6], rows, strict=True):
            for feature in family.features:
                want = brute_force(family, feature, events, key, now)
                got = row[feature.name]
                if isinstance(want, float) and got is not None:
                    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (feature.name, key, got, want)
                else:
                    assert got == want, (feature.name, key, got, want)
        assert rows[5] == {f.name: (0 if f.function in ("count", "sum") else None) for f in family.features}


def snapshot(client: Any) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(match="fs[ai]:*")}


def test_every_message_delivered_twice_leaves_the_same_state() -> None:
    family = Registry.default().family("user_orders")
    now = time.time_ns() // 1_000
    events = [e for e in random_events(random.Random(4), 1_000, origin=now - 10 * DAY) if e["ingest_us"] <= now]
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        tiles.apply(family, tile_events(events))
        once = snapshot(client)
        shuffled = tile_events(events)
        random.Random(5).shuffle(shuffled)
        assert tiles.apply(family, shuffled)[0] == 0
        assert snapshot(client) == once


def test_tiles_at_the_window_edges_and_old_tiles_retired() -> None:
    family = Registry.default().family("user_orders")
    hour = family.feature("order_count_1h")
    five = 5 * 60 * 1_000_000
    t = (time.time_ns() // 1_000) // five * five + 2 * 60 * 1_000_000  # two minutes into a tile
    oldest = t // five * five - HOUR + five  # the window's oldest tile starts here (inclusive)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        edge = [
            TileEvent(7, oldest, oldest, "at-edge", False, {}),
            TileEvent(7, oldest - 1, oldest - 1, "before", False, {}),
        ]
        tiles.apply(family, edge, now_us=t)
        assert tiles.read(family, [7], t)[0][hour.name] == 1  # at the edge counts, a microsecond before does not
        # four hours on, a new 5-minute tile retires the ones no window reads any more
        later = t + 4 * HOUR
        tiles.apply(family, [TileEvent(7, later, later, "later", False, {})], now_us=later)
        starts = {f.split(b"|")[0] for f in client.hkeys(f"fsa:{{user_orders:7}}:{five // 1_000_000}")}
        assert starts == {str(later // five * five // 1_000_000).encode()}
        assert client.pttl(f"fsa:{{user_orders:7}}:{five // 1_000_000}") > 0
        assert client.pttl("fsi:{user_orders:7}:L") == -1  # lifetime states do not expire
