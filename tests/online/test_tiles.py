"""Aggregation tiles in a real Redis: the merged read equals the definition's brute force at the time of the
read while time moves on (rings reusing their slots, events ahead of their ingest time, late and duplicated
events), a redelivered batch changes nothing, events later than allowed are counted and left out, and old
tiles expire."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any

import pyarrow as pa
import redis

from fstore.schema.aggregations import DAY, HOUR, MINUTE, AggregationSpec, FamilySpec, tile_size
from fstore.schema.registry import Registry
from fstore.store.online.tile_layout import FUTURE, TileLayout
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


def wide_family() -> FamilySpec:
    """`user_orders` and more: every function, a windowed LAST and two windows on one tile size."""
    family = Registry.default().family("user_orders")
    amount, status = family.feature("amount_sum_7d").field, family.feature("last_status").field

    def feature(name: str, function: str, window: int | None, field: Any = amount) -> AggregationSpec:
        return AggregationSpec(name, function, None if function == "count" else field, window, tile_size(window))

    extra = (
        feature("amount_min_1h", "min", HOUR),
        feature("amount_sum_6h", "sum", 6 * HOUR),
        feature("amount_mean_30d", "mean", 30 * DAY),
        feature("order_count_lifetime", "count", None),
        feature("amount_max_lifetime", "max", None),
        feature("last_status_1h", "last", HOUR, status),
        feature("last_status_7d", "last", 7 * DAY, status),
        feature("last_amount_30d", "last", 30 * DAY),
    )
    return dataclasses.replace(family, features=family.features + extra)


def assert_definition(family: FamilySpec, rows: list[dict[str, Any]], events: list[dict[str, Any]],
                      keys: list[int], at: int) -> None:  # fmt: skip
    for key, row in zip(keys, rows, strict=True):
        for feature in family.features:
            want, got = brute_force(family, feature, events, key, at), row[feature.name]
            if isinstance(want, float) and got is not None:
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (feature.name, key, at, got, want)
            else:
                assert got == want, (feature.name, key, at, got, want)


def test_tiles_read_the_definitions_value_and_ignore_redeliveries() -> None:
    family = wide_family()
    now = time.time_ns() // 1_000
    rng = random.Random(3)
    events = [e for e in random_events(rng, 3_000, origin=now - 40 * DAY) if e["ingest_us"] <= now]
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        applied, late = tiles.apply(family, tile_events(events), now_us=now)
        want_late = sum(1 for e in events if not e["backfilled"] and e["ingest_us"] - e["event_us"] > HOUR)
        assert late == want_late
        assert 0 < applied <= len(events) - want_late  # events older than every window fold into lifetime only
        again, _ = tiles.apply(family, tile_events(rng.sample(events, 500)), now_us=now)
        assert again == 0  # the same messages again: nothing applied
        rows = tiles.read(family, [1, 2, 3, 4, 5, 6], now)
        assert_definition(family, rows, events, [1, 2, 3, 4, 5, 6], now)
        assert rows[5] == {f.name: (0 if f.function in ("count", "sum") else None) for f in family.features}


def test_tiles_follow_the_definition_while_time_moves_on() -> None:
    """Forty days of a stream, folded batch by batch as it arrives (in ingest order, shuffled within a
    batch, some events an hour ahead of their ingest time, some late, some delivered twice), read after
    every batch: every read equals the brute force, as the rings reuse their slots again and again."""
    family = wide_family()
    rng = random.Random(7)
    origin = (time.time_ns() // 1_000) - 41 * DAY
    events = random_events(rng, 4_000, origin=origin)
    for e in rng.sample(events, 400):  # ahead of their ingest time, as far as ingest allows
        if not e["backfilled"]:
            e["ingest_us"] = e["event_us"] - rng.choice([1, 20 * MINUTE, FUTURE])

    def known(e: dict[str, Any]) -> int:
        return int(e["event_us"] if e["backfilled"] else e["ingest_us"])

    events.sort(key=known)
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        done, reads = 0, 0
        while done < len(events):
            size = rng.choice([1, 5, 20, 100])
            batch = events[done : done + size]
            done += len(batch)
            now = known(batch[-1])
            sent = tile_events(batch + rng.sample(batch, len(batch) // 4))
            rng.shuffle(sent)
            tiles.apply(family, sent, now_us=now)
            if rng.random() < 0.5:
                at = now + rng.choice([0, 1, MINUTE])
                later = [e for e in events[done:] if known(e) <= at]  # a read a moment later sees them too
                tiles.apply(family, tile_events(later), now_us=at)
                assert_definition(family, tiles.read(family, [1, 2, 3, 4, 5], at), events, [1, 2, 3, 4, 5], at)
                reads += 1
        assert reads > 50


def test_a_head_moving_on_empties_the_slots_it_skips() -> None:
    """A ring slot's tile number is implied by its position and its ring's head: when the head skips tiles,
    the slots it skips (still holding the previous lap's tiles) are emptied, and a move past the whole ring
    empties it. Every read equals the brute force."""
    family = wide_family()
    five = TileLayout(family).rings[0].size
    assert five == 5 * MINUTE
    slots = TileLayout(family).rings[0].slots
    start = (time.time_ns() // 1_000 - 30 * DAY) // five * five
    steps = [*range(2 * slots), 2 * slots + 7, 3 * slots + 5, 5 * slots + 2]  # a lap and more, then skips
    events, seen = [], []
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        for i, step in enumerate(steps):
            t = start + step * five + 1_000
            event = {"user_id": 9, "event_us": t, "ingest_us": t, "message_id": f"{10**15 + i}",
                     "backfilled": False, "amount": float(i + 1), "status": f"s{i}"}  # fmt: skip
            events.append(event)
            late = dict(event, event_us=t - 3 * five, message_id=f"{2 * 10**15 + i}", amount=0.5)
            events.append(late)  # older than its head, within the ring and the lateness
            tiles.apply(family, tile_events([event, late]), now_us=t)
            for at in (t, t + 2 * five, t + HOUR - 1):
                seen.append(at)
                assert_definition(family, tiles.read(family, [9], at), events, [9], at)
    assert len(seen) == 3 * len(steps)


def snapshot(client: Any) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(match="fs[ai]:*"):
        out[key] = client.get(key) if client.type(key) == b"string" else client.smembers(key)
    return out


def test_every_message_delivered_twice_leaves_the_same_state() -> None:
    family = wide_family()
    now = time.time_ns() // 1_000
    events = [e for e in random_events(random.Random(4), 1_000, origin=now - 45 * DAY) if e["ingest_us"] <= now]
    assert len(events) > 800
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        tiles.apply(family, tile_events(events[:600]), now_us=now)
        once = snapshot(client)
        # a batch holding the applied messages again and new ones: the new ones count, the old ones do not
        mixed = tile_events(events[:600] + events[600:])
        random.Random(5).shuffle(mixed)
        accepted = [e for e in events[600:] if e["backfilled"] or e["ingest_us"] - e["event_us"] <= HOUR]
        assert tiles.apply(family, mixed, now_us=now)[0] == len(accepted)
        twice = snapshot(client)
        assert twice != once
        assert tiles.apply(family, mixed, now_us=now)[0] == 0
        assert snapshot(client) == twice
        assert_definition(family, tiles.read(family, [1, 2, 3, 4, 5], now), events, [1, 2, 3, 4, 5], now)


def test_tiles_at_the_window_edges() -> None:
    family = Registry.default().family("user_orders")
    hour = family.feature("order_count_1h")
    five = 5 * MINUTE
    t = (time.time_ns() // 1_000) // five * five + 2 * MINUTE  # two minutes into a tile
    oldest = t // five * five - HOUR + five  # the window's oldest tile starts here (inclusive)
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        edge = [
            TileEvent(7, oldest, oldest, "at-edge", False, {}),
            TileEvent(7, oldest - 1, oldest - 1, "before", False, {}),
            TileEvent(7, t, t, "at-t", False, {}),
            TileEvent(7, t + 1, t, "just-after-t", False, {}),  # ahead of t, in t's tile: counts
            TileEvent(7, t // five * five + five, t, "next-tile", False, {}),  # ahead, in the next tile: not yet
        ]
        tiles.apply(family, edge, now_us=t)
        assert tiles.read(family, [7], t)[0][hour.name] == 3
        assert tiles.read(family, [7], t + five)[0][hour.name] == 3  # the edge event left, the next tile came in


def test_last_features_of_one_field_share_a_list_and_keep_their_own_windows() -> None:
    """`last_status_1h` (5-minute tiles), `last_status_7d` (hourly) and `last_status` (lifetime) read one list
    of 5-minute tiles: an event ahead of its time, in the read's hour but after the read's 5-minute tile,
    counts for the 7-day window and lifetime, not for the hour's; an event 3 hours old, for neither hour."""
    family = wide_family()
    layout = TileLayout(family)
    assert [(last.field, last.size) for last in layout.last_lists] == [("status", 5 * MINUTE), ("amount", DAY)]
    now = time.time_ns() // 1_000
    t = now - now % HOUR + 10 * MINUTE
    rows = [
        {"event_us": t - 3 * HOUR, "ingest_us": t - 3 * HOUR, "status": "old"},
        {"event_us": t - 10 * MINUTE, "ingest_us": t - 10 * MINUTE, "status": "recent"},
        {"event_us": t + 20 * MINUTE, "ingest_us": t, "status": "ahead"},
    ]
    events = [
        {"user_id": 7, "message_id": f"m{i}", "backfilled": False, "amount": 1.0, **row} for i, row in enumerate(rows)
    ]
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        assert tiles.apply(family, tile_events(events), now_us=t) == (3, 0)
        row = tiles.read(family, [7], t)[0]
        assert (row["last_status_1h"], row["last_status_7d"], row["last_status"]) == ("recent", "ahead", "ahead")
        assert_definition(family, [row], events, [7], t)
        later = tiles.read(family, [7], t + 3 * HOUR)[0]  # the hour's window has moved past all three
        assert (later["last_status_1h"], later["last_status_7d"]) == (None, "ahead")
        assert_definition(family, [later], events, [7], t + 3 * HOUR)


def test_old_tiles_expire_and_lifetime_states_do_not() -> None:
    family = Registry.default().family("user_orders")
    windowed = dataclasses.replace(family, features=tuple(f for f in family.features if f.window is not None))
    now = time.time_ns() // 1_000
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        event = TileEvent(7, now - DAY, now - DAY, "a", False, {"amount": 5.0, "status": "paid"})
        tiles.apply(windowed, [TileEvent(7, now - DAY, now - DAY + 1, "a", False, {"amount": 5.0})], now_us=now)
        tiles.apply(family, [event], now_us=now)
        state = TileLayout(windowed).blob_key(7)
        widest = max(f.window or 0 for f in windowed.features) + DAY  # 30 days and their 1-day tile
        expires_in = client.pttl(state) * 1_000
        assert widest - DAY < expires_in <= widest + FUTURE + HOUR  # the newest event + what a window may read
        assert client.pttl(TileLayout(family).blob_key(7)) == -1  # a lifetime state never expires
        buckets = list(client.scan_iter(match="fsi:*"))
        assert buckets and all(client.pttl(b) > 0 for b in buckets)  # message ids do
        # an event older than every window's ring: nothing to fold for the windowed family
        assert tiles.apply(windowed, [TileEvent(7, now - 60 * DAY, now, "old", True, {})], now_us=now) == (0, 0)
        assert tiles.read(windowed, [7], now)[0]["amount_max_30d"] == 5.0


def test_events_outside_the_accepted_bounds_are_counted_and_left_out() -> None:
    family = Registry.default().family("user_orders")
    now = time.time_ns() // 1_000
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        events = [
            TileEvent(1, now - HOUR - 1, now, "late", False, {}),
            TileEvent(1, now - 2 * HOUR, now, "backfilled", True, {}),  # backfills are never late
            TileEvent(1, now + FUTURE + 1, now, "too-far-ahead", False, {}),  # ingest refuses these already
        ]
        assert tiles.apply(family, events, now_us=now) == (1, 2)
        assert tiles.read(family, [1], now)[0]["order_count_7d"] == 1


def test_a_changed_family_starts_afresh() -> None:
    family = Registry.default().family("user_orders")
    changed = dataclasses.replace(family, features=family.features[:2])
    now = time.time_ns() // 1_000
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        tiles.apply(family, [TileEvent(1, now, now, "a", False, {"amount": 1.0, "status": "paid"})], now_us=now)
        assert TileLayout(changed).blob_key(1) != TileLayout(family).blob_key(1)
        assert tiles.read(changed, [1], now)[0] == {f.name: 0 for f in changed.features}


def same_value(got: Any, want: Any) -> bool:
    """Equal, NaN to NaN and floats to 1e-9 relative (the online sums add in another order)."""
    if isinstance(want, float) and isinstance(got, float):
        if math.isnan(want) or math.isnan(got):
            return math.isnan(want) and math.isnan(got)
        if math.isinf(want) or math.isinf(got) or want == 0.0:
            return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def test_nan_and_infinities_read_as_the_export_computes_them() -> None:
    """SUM, MEAN, MIN and MAX of a field that receives NaN, +inf and -inf equal the offline SQL's (IEEE
    sums: NaN with a NaN or both infinities; MIN and MAX NaN with a NaN, a zero as +0.0), key by key, for
    mixes of finite and non-finite values, all-NaN keys and keys that saw no value."""
    import duckdb

    from fstore.store.offline.aggregation_sql import duckdb_aggregation_sql
    from fstore.store.offline.spine import ROW_COLUMN
    from tests.offline.test_aggregations import history_table

    family = wide_family()
    now = (time.time_ns() // 1_000) // DAY * DAY + 13 * HOUR + 7 * MINUTE  # mid-tile, whatever the clock
    mixes: dict[int, list[float | None]] = {
        1: [1.5, math.nan, 2.0],
        2: [math.inf, 3.0],
        3: [-math.inf, 3.0, None],
        4: [math.inf, -math.inf],
        5: [math.nan, math.nan],
        6: [math.inf, math.nan, -math.inf, 1.0],
        7: [None, None],
        8: [-math.inf, -math.inf, 2.5],
        9: [math.inf, 1e308, 1.0],
        10: [2.0, -0.0, math.nan, -math.inf],
    }
    rng = random.Random(11)
    events, n = [], 0
    for key, amounts in mixes.items():
        for amount in amounts:
            for age in (rng.randrange(1, 50) * MINUTE, rng.randrange(2, 20) * HOUR, rng.randrange(2, 25) * DAY):
                event_us = now - age
                ingest_us, status = event_us + rng.randrange(0, MINUTE), rng.choice(["paid", None])
                events.append({"order_id": f"o{n}", "user_id": key, "event_us": event_us, "ingest_us": ingest_us,
                               "message_id": f"{n:08d}", "backfilled": False, "amount": amount,
                               "status": status})  # fmt: skip
                n += 1
    keys = sorted(mixes)
    features = [f for f in family.features if f.field is not None and f.field.name == "amount"]
    names = [f.name for f in features]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("history", history_table(events))
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        for start in range(0, len(events), 7):  # several batches: merged in Redis as well as in Python
            tiles.apply(family, tile_events(events[start : start + 7]), now_us=now)
        for at in (now, now + 30 * MINUTE, now + 2 * DAY):
            spine = pa.table({
                ROW_COLUMN: list(range(len(keys))),
                "user_id": pa.array(keys, pa.int64()),
                "ts": pa.array([at] * len(keys), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            })  # fmt: skip
            con.register("spine", spine)
            sql = duckdb_aggregation_sql(family, features, names, "SELECT * FROM spine", "SELECT * FROM history", "ts")
            offline = {row[0]: row[1:] for row in con.execute(sql).fetchall()}
            online = tiles.read(family, keys, at)
            non_finite = 0
            for row, key in enumerate(keys):
                for i, feature in enumerate(features):
                    want = offline[row][i] if row in offline else None
                    if feature.function == "sum" and want is None:
                        want = 0.0  # no candidate event: the export fills SUM with 0
                    got = online[row][feature.name]
                    assert same_value(got, want), (feature.name, key, at, got, want)
                    non_finite += isinstance(want, float) and not math.isfinite(want)
            assert non_finite > 20  # NaN and the infinities did reach the answers compared


def test_last_breaks_ties_on_the_message_id_byte_by_byte() -> None:
    """Events of one key with the same event and ingest time, in different batches or in one: LAST is the one with the
    greatest message id (compared byte by byte, as the export compares it), whether it sits in the tail, in
    the compacted lists or arrived first, and also after many more folds compact the tail."""
    family = wide_family()
    features = [f for f in family.features if f.function == "last"]
    now = time.time_ns() // 1_000
    at = now - 10 * MINUTE
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        for key, ids in ((1, ["b", "a", "ab"]), (2, ["a", "ab", "b"]), (3, ["B", "a", "Z"])):
            for i, message_id in enumerate(ids):
                values = {"amount": float(i), "status": message_id}
                tiles.apply(family, [TileEvent(key, at, at + 1, message_id, False, values)], now)
            batch = [
                TileEvent(key + 3, at, at + 1, m, False, {"amount": float(i), "status": m}) for i, m in enumerate(ids)
            ]
            tiles.apply(family, [TileEvent(key + 3, at - 1, at + 2, "zz", False, {"status": "older"}), *batch], now)
        rows = tiles.read(family, [1, 2, 3, 4, 5, 6], now)
        assert [r["last_status"] for r in rows] == ["b", "b", "a"] * 2  # across batches and within one
        assert all(r[f.name] == r["last_status"] for r in rows for f in features if f.field.name == "status")
        for n in range(40):  # older events: the tail is compacted again and again, the tie's winner stays
            tiles.apply(family, [TileEvent(k, at - (n + 1) * MINUTE, at, f"x{n}", False, {"status": "old"})
                                 for k in (1, 2, 3)], now)  # fmt: skip
        assert [r["last_status"] for r in tiles.read(family, [1, 2, 3], now)] == ["b", "b", "a"]


def test_a_redis_down_or_stalled_is_a_store_error_and_a_retried_apply_folds_each_event_once() -> None:
    """Tiles fail as rows do when Redis cannot be reached: a StoreUnavailableError naming it (the API's 503,
    the job's retry), within the online store's socket timeout when Redis stalls (SIGSTOP); an apply retried
    until Redis is back, as the job retries it, folds every event once."""
    import os
    import signal
    import threading

    import pytest

    from fstore.errors import StoreUnavailableError
    from fstore.ingest.retry import until_stored
    from fstore.settings import RedisSettings
    from fstore.store.online.redis import RedisOnlineStore

    family = wide_family()
    now = time.time_ns() // 1_000
    rng = random.Random(5)
    events = [e for e in random_events(rng, 2_000, origin=now - 10 * DAY) if e["ingest_us"] <= now]
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    down = r"Redis at redis://127\.0\.0\.1:\d+/0 is unavailable"
    server = RedisServer()
    server.start()
    try:
        online = RedisOnlineStore(server.url, RedisSettings(socket_timeout=0.5, connect_timeout=0.5))
        tiles = TileStore.beside(online)
        tiles.apply(family, tile_events(first), now_us=now)
        assert_definition(family, tiles.read(family, [1, 2, 3], now), first, [1, 2, 3], now)

        os.kill(server.process.pid, signal.SIGSTOP)  # a Redis that stalls: the read gives up at the timeout
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=down):
                tiles.read(family, [1, 2, 3], now)
            assert time.monotonic() - started < 2.0  # the online store's 0.5 s, not the client's default
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

        server.stop()
        with pytest.raises(StoreUnavailableError, match=down):
            tiles.read(family, [1], now)
        with pytest.raises(StoreUnavailableError, match=down):
            tiles.apply(family, tile_events(second), now_us=now)

        restart = threading.Timer(1.0, server.start)  # the restarted Redis is empty (no persistence)
        restart.start()
        applied, _ = until_stored(lambda: tiles.apply(family, tile_events(second), now_us=now), "tiles")
        restart.join()
        assert applied > 0
        assert_definition(family, tiles.read(family, [1, 2, 3, 4], now), second, [1, 2, 3, 4], now)
        tiles.close()
        online.close()
    finally:
        server.stop()


def test_reads_in_many_threads_at_once_read_what_one_thread_reads() -> None:
    """The merge reuses a buffer per thread: reads of different keys and sizes in eight threads at once
    (a read API's thread pool) give each thread the values a lone read gives."""
    from concurrent.futures import ThreadPoolExecutor

    family = wide_family()
    now = time.time_ns() // 1_000
    rng = random.Random(9)
    events = [
        {**e, "user_id": rng.randint(1, 400)}
        for e in random_events(rng, 8_000, origin=now - 10 * DAY)
        if e["ingest_us"] <= now
    ]
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        tiles.apply(family, tile_events(events), now_us=now)
        keys = [*sorted({e["user_id"] for e in events}), 10**9]  # and a key with no events
        # from 1 key to all: a thread's kept buffer grows, and reads past its 2 MB bring their own
        asks = [rng.sample(keys, rng.choice([1, 3, 50, 100, len(keys)])) for _ in range(200)]
        alone = [tiles.read(family, ask, now) for ask in asks]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda ask: tiles.read(family, ask, now), asks))
        assert together == alone


def test_an_event_with_no_group_by_value_folds_into_no_key() -> None:
    """A source whose group-by field is `optional`: an event without it belongs to no key, online as in the
    export (its join on the key leaves it out); the rest of its batch folds as usual."""
    from fstore.store.offline.schema import messages_to_table

    order = Registry.default().get("order")
    user_id = dataclasses.replace(order.feature("user_id"), has_presence=True)
    family = dataclasses.replace(Registry.default().family("user_orders"), group_by=user_id)
    now = time.time_ns() // 1_000
    messages = []
    for i, user in enumerate([7, None, 7]):
        message = order.message_class(order_id=f"o{i}", amount=2.0, status="paid")
        if user is not None:
            message.user_id = user
        getattr(message, order.event_time.name).FromMicroseconds(now - MINUTE)
        messages.append(message)
    table = messages_to_table(order, messages, [now] * 3, ["1", "2", "3"])
    table = table.set_column(
        table.schema.get_field_index("user_id"), "user_id", pa.array([7, None, 7], pa.int64())
    )  # as an `optional` user_id is stored offline: null where unset
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        assert tiles.apply_table(family, table, now_us=now) == (2, 0)
        assert tiles.read(family, [7], now)[0]["order_count_7d"] == 2
        assert not [k for k in client.scan_iter(match="fs*") if b"None" in k]
