"""The aggregation SQL against a brute force of the one definition (`fstore.schema.aggregations.counts`),
over random histories with late, backfilled and boundary events."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from fstore.schema.aggregations import HOUR, MINUTE, AggregationSpec, FamilySpec, counts
from fstore.schema.registry import Registry
from fstore.store.offline.aggregation_sql import duckdb_aggregation_sql
from fstore.store.offline.spine import ROW_COLUMN

T0 = 1_780_000_000 * 1_000_000  # a fixed origin is fine here: nothing is compared with the wall clock


def brute_force(family: FamilySpec, feature: AggregationSpec, events: list[dict[str, Any]], key: int, t: int) -> Any:
    chosen = [
        e for e in events
        if e["user_id"] == key and counts(family, feature, t, e["event_us"], e["ingest_us"], e["backfilled"])
    ]  # fmt: skip
    if feature.function == "count":
        return len(chosen)
    assert feature.field is not None
    values = [(e, e[feature.field.name]) for e in chosen if e[feature.field.name] is not None]
    if feature.function == "sum":
        return sum(v for _, v in values)
    if not values:
        return None
    if feature.function == "mean":
        return sum(v for _, v in values) / len(values)
    if feature.function == "last":
        return max(values, key=lambda ev: (ev[0]["event_us"], ev[0]["ingest_us"], ev[0]["message_id"]))[1]
    return (min if feature.function == "min" else max)(v for _, v in values)


def events_of_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored `order` rows (`offline.history(...).to_pylist()`) as `brute_force`'s events (streamed ones)."""
    return [
        {"user_id": h["user_id"], "event_us": int(h["event_time"].timestamp() * 1e6),
         "ingest_us": int(h["ingest_time"].timestamp() * 1e6), "message_id": h["message_id"], "backfilled": False,
         "amount": h["amount"], "status": h["status"]}
        for h in history
    ]  # fmt: skip


def random_events(rng: random.Random, n: int, origin: int = T0) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        event_us = origin + rng.randrange(0, 40 * 24 * HOUR, MINUTE // 2) + rng.choice([0, 0, 1, -1])
        delay = rng.choice([0, 1_000, MINUTE, 59 * MINUTE, HOUR, HOUR + 1, 3 * HOUR])  # some later than allowed
        backfilled = rng.random() < 0.1
        events.append(
            {
                "order_id": f"o{i}",
                "user_id": rng.randint(1, 5),
                "event_us": event_us,
                "ingest_us": event_us + (10 * 24 * HOUR if backfilled else delay),
                "message_id": (f"backfill:{i:08d}" if backfilled else f"{i:08d}"),
                "backfilled": backfilled,
                "amount": None if rng.random() < 0.1 else round(rng.uniform(1, 200), 2),
                "status": rng.choice(["placed", "paid", "shipped", None]),
            }
        )
    return events


def history_table(events: list[dict[str, Any]]) -> pa.Table:
    def ts(key: str) -> pa.Array:
        return pa.array([e[key] for e in events], pa.int64()).cast(pa.timestamp("us", tz="UTC"))

    return pa.table(
        {
            "order_id": [e["order_id"] for e in events],
            "event_time": ts("event_us"),
            "user_id": pa.array([e["user_id"] for e in events], pa.int64()),
            "amount": pa.array([e["amount"] for e in events], pa.float64()),
            "status": [e["status"] for e in events],
            "ingest_time": ts("ingest_us"),
            "message_id": [e["message_id"] for e in events],
        }
    )


@pytest.mark.parametrize("seed", range(3))
def test_the_sql_equals_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    family = Registry.default().family("user_orders")
    events = random_events(rng, 3_000)
    for a, b in zip(rng.sample(events, 200), rng.sample(events, 200), strict=True):  # ties on event time
        if not (a["backfilled"] or b["backfilled"]):
            b.update(user_id=a["user_id"], event_us=a["event_us"], ingest_us=a["event_us"] + rng.randrange(HOUR))
    # spine times: random, on tile boundaries, and exactly at events' times and known-at times
    times = [T0 + rng.randrange(0, 45 * 24 * HOUR) for _ in range(300)]
    times += [T0 + k * 5 * MINUTE for k in range(0, 45 * 24 * 12, 97)]
    times += [e["ingest_us"] for e in rng.sample(events, 100)] + [e["event_us"] for e in rng.sample(events, 100)]
    spine = [(n, rng.randint(1, 6), t) for n, t in enumerate(times)]  # user 6 has no events
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("history", history_table(events))
    con.register(
        "spine",
        pa.table(
            {
                ROW_COLUMN: [r for r, _, _ in spine],
                "user_id": pa.array([k for _, k, _ in spine], pa.int64()),
                "ts": pa.array([t for _, _, t in spine], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    names = [f.name for f in family.features]
    sql = duckdb_aggregation_sql(family, family.features, names, "SELECT * FROM spine", "SELECT * FROM history", "ts")
    got = {row[0]: row[1:] for row in con.execute(sql).fetchall()}
    for row, key, t in spine:
        for i, feature in enumerate(family.features):
            want = brute_force(family, feature, events, key, t)
            value = got[row][i] if row in got else None
            if feature.function == "count" and value is None:
                value = 0  # no candidate event at all: the export fills COUNT and SUM with 0
            if feature.function == "sum" and value is None:
                value = 0.0
            if isinstance(want, float) and value is not None:
                assert math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-9), (feature.name, row, value, want)
            else:
                assert value == want, (feature.name, key, t, value, want)


def test_fstore_export_computes_aggregation_features_and_reproduces_them(tmp_path: Any) -> None:
    """Through the embedded store: `user_orders:*` beside a plain feature, with the definition's answer, the
    definition in the manifest, and `--reproduce` byte for byte after more orders arrive."""
    from fstore.schema.tables import arrow_schema
    from fstore.store.offline.duckdb import DuckDBOfflineStore
    from fstore.store.offline.export import ExportError, manifest_path
    from fstore.store.offline.manifest import ExportOptions

    registry = Registry.default()
    order, family = registry.get("order"), registry.family("user_orders")
    rng = random.Random(7)
    events = random_events(rng, 2_000)
    store = DuckDBOfflineStore(tmp_path / "offline", registry, threads=2)
    table = history_table(events)
    store.write(order, table.select(arrow_schema(order).names).cast(arrow_schema(order)))
    times = [T0 + rng.randrange(0, 42 * 24 * HOUR) for _ in range(400)]
    spine = pa.table(
        {
            "user_id": pa.array([rng.randint(1, 6) for _ in times], pa.int64()),
            "event_timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    pq_path = tmp_path / "spine.parquet"
    import pyarrow.parquet as pq

    pq.write_table(spine, pq_path)
    out = tmp_path / "train.parquet"
    manifest = store.export_training_set(str(pq_path), ["user:age", "user_orders:*"], out)
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 400 and all(r["user__age"] is None for r in rows)
    for row, t in zip(rows, times, strict=True):
        for feature in family.features:
            want = brute_force(family, feature, events, row["user_id"], t)
            got = row[f"user_orders__{feature.name}"]
            if isinstance(want, float) and got is not None:
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (feature.name, got, want)
            else:
                assert got == want, (feature.name, row, want)
    (recorded,) = manifest["aggregations"]
    assert recorded["family"] == "user_orders" and recorded["allowed_lateness_seconds"] == 3600
    assert recorded["features"]["amount_sum_7d"] == {"function": "sum", "field": "amount", "window": "7d",
                                                     "tile_seconds": 3600}  # fmt: skip

    more = random_events(random.Random(8), 500)  # later ingests: not read again by --reproduce
    for e in more:
        e["ingest_us"] += 60 * 24 * HOUR
        e["message_id"] = "late-" + e["message_id"]
    store.write(order, history_table(more).select(arrow_schema(order).names).cast(arrow_schema(order)))
    again = tmp_path / "again.parquet"
    store.export_training_set(None, None, again, ExportOptions(reproduce=manifest_path(out)))
    assert again.read_bytes() == out.read_bytes()

    changed = json.loads(manifest_path(out).read_text())
    changed["aggregations"][0]["features"]["amount_sum_7d"]["window"] = "14d"
    with pytest.raises(ExportError, match="user_orders's definition changed"):
        store.export_training_set(None, None, tmp_path / "x.parquet", ExportOptions(reproduce=changed))
    store.close()


def test_the_bigquery_export_of_a_family_equals_duckdbs(tmp_path: Any) -> None:
    """Through the recording stand-in (SQLGlot runs the BigQuery SQL on DuckDB): the same values as the
    embedded store's export, floats to 1e-9 relative (BigQuery cannot order a sum, so bytes may differ)."""
    import pyarrow.parquet as pq

    from fstore.schema.tables import arrow_schema
    from fstore.store.offline.bigquery import BigQueryOfflineStore
    from fstore.store.offline.duckdb import DuckDBOfflineStore
    from tests.offline.fake_bigquery import FakeBigQueryClient

    registry = Registry.default()
    order = registry.get("order")
    rng = random.Random(9)
    history = history_table(random_events(rng, 1_500))
    history = history.select(arrow_schema(order).names).cast(arrow_schema(order))
    duck = DuckDBOfflineStore(tmp_path / "offline", registry, threads=2)
    bq = BigQueryOfflineStore("proj", "data", registry, client=FakeBigQueryClient("proj"))
    duck.write(order, history)
    bq.write(order, history)
    times = [T0 + rng.randrange(0, 42 * 24 * HOUR) for _ in range(300)]
    spine = pa.table({
        "user_id": pa.array([rng.randint(1, 6) for _ in times], pa.int64()),
        "event_timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    duck.export_training_set(spine, ["user_orders:*"], tmp_path / "duck.parquet")
    manifest = bq.export_training_set(spine, ["user_orders:*"], tmp_path / "bq.parquet")
    assert "COUNTIF" in manifest["sql"]
    got, want = pq.read_table(tmp_path / "bq.parquet"), pq.read_table(tmp_path / "duck.parquet")
    assert got.schema == want.schema
    for g, w in zip(got.to_pylist(), want.to_pylist(), strict=True):
        assert g.keys() == w.keys()
        for name, value in w.items():
            assert g[name] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), name
    duck.close()


def test_an_export_of_features_without_a_float_sum_reads_each_event_once(tmp_path: Any) -> None:
    """COUNT, MAX and LAST alone (no float SUM or MEAN to scale): one row per spine row and the definition's
    counts. The scales were then a row per history row, cross-joined to every event: counts came out N times
    too large, and every spine row N times."""
    import pyarrow.parquet as pq

    from fstore.schema.tables import arrow_schema
    from fstore.store.offline.duckdb import DuckDBOfflineStore

    registry = Registry.default()
    order, family = registry.get("order"), registry.family("user_orders")
    rng = random.Random(12)
    events = random_events(rng, 300)
    store = DuckDBOfflineStore(tmp_path / "offline", registry, threads=2)
    store.write(order, history_table(events).select(arrow_schema(order).names).cast(arrow_schema(order)))
    times = [T0 + rng.randrange(0, 42 * 24 * HOUR) for _ in range(50)]
    spine = pa.table({
        "user_id": pa.array([rng.randint(1, 6) for _ in times], pa.int64()),
        "event_timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    names = ["order_count_1h", "order_count_7d", "amount_max_30d", "last_status"]
    store.export_training_set(spine, [f"user_orders:{n}" for n in names], tmp_path / "out.parquet")
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == len(times)
    for row, t in zip(rows, times, strict=True):
        for name in names:
            want = brute_force(family, family.feature(name), events, row["user_id"], t)
            assert row[f"user_orders__{name}"] == want, (name, row, want)
    store.close()
