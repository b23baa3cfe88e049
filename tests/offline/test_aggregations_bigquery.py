"""The BigQuery aggregation SQL without BigQuery: it must parse as BigQuery Standard SQL and, transpiled by
SQLGlot to DuckDB and run over test_aggregations' random histories (late, backfilled, redelivered, tied and
boundary events, before 1970 too), give the DuckDB reference's answers and the brute force's."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlglot

from fstore.schema.aggregations import DAY, HOUR, MINUTE, FamilySpec, tile
from fstore.schema.registry import Registry
from fstore.store.offline.aggregation_sql import (
    aggregation_history_filters,
    bigquery_aggregation_history,
    bigquery_aggregation_sql,
    duckdb_aggregation_sql,
)
from fstore.store.offline.export import AggregationJoin
from fstore.store.offline.spine import ROW_COLUMN
from fstore.store.offline.sql import bigquery_table

from .test_aggregations import T0, brute_force, history_table, random_events

PROJECT, DATASET, SPINE = "fstore-test", "offline", "_spine"
Spine = list[tuple[int, int, int]]  # (row, user id, time in µs)


def to_duckdb(sql: str) -> str:
    """Parse as BigQuery, then transpile, failing on anything SQLGlot cannot say in DuckDB (not only warn)."""
    sqlglot.parse_one(sql, read="bigquery", error_level=sqlglot.ErrorLevel.RAISE)
    raising = sqlglot.ErrorLevel.RAISE
    return sqlglot.transpile(sql, read="bigquery", write="duckdb", error_level=raising, unsupported_level=raising)[0]


def plant_edges(family: FamilySpec, rng: random.Random, spine: Spine, events: list[dict[str, Any]]) -> None:
    """Events of the spine rows' keys exactly on each window's oldest edge tile(t) - W + T and just before
    it, exactly at t, and just after t inside t's tile (a producer clock ahead: ingested at t, so known)."""
    for row, key, t in rng.sample([r for r in spine if r[1] != 6], 40):  # user 6 keeps no events
        for feature in family.features:
            if feature.window is None or feature.tile is None:
                continue
            edge = tile(t, feature.tile) - feature.window + feature.tile
            for n, (event_us, ingest_us) in enumerate([(edge, edge), (edge - 1, edge), (t, t), (t + 1, t)]):
                events.append(
                    {
                        "order_id": f"edge-{row}-{feature.name}-{n}",
                        "user_id": key,
                        "event_us": event_us,
                        "ingest_us": ingest_us,
                        "message_id": f"edge-{row}-{feature.name}-{n}",
                        "backfilled": False,
                        "amount": round(rng.uniform(1, 200), 2),
                        "status": rng.choice(["placed", "paid"]),
                    }
                )


def scenario(seed: int, origin: int) -> tuple[list[dict[str, Any]], Spine]:
    rng = random.Random(seed)
    family = Registry.default().family("user_orders")
    events = random_events(rng, 2_000, origin)
    streamed = [e for e in events if not e["backfilled"]]
    for a, b in zip(rng.sample(streamed, 150), rng.sample(streamed, 150), strict=True):
        # ties on event time, and on ingest time as well: the message id decides LAST
        same_ingest = rng.random() < 0.5
        b.update(user_id=a["user_id"], event_us=a["event_us"])
        b.update(ingest_us=a["ingest_us"] if same_ingest else a["event_us"] + rng.randrange(HOUR))
    span = 45 * DAY
    moments = [origin + rng.randrange(span) for _ in range(250)]
    moments += [origin + n * 5 * MINUTE for n in range(0, span // (5 * MINUTE), 131)]
    moments += [e[k] + d for e in rng.sample(events, 120) for k in ("event_us", "ingest_us") for d in (-1, 0, 1)]
    spine = [(row, rng.randint(1, 6), t) for row, t in enumerate(moments)]  # user 6 has no events
    plant_edges(family, rng, spine, events)
    return events, spine


def raw_rows(rng: random.Random, events: list[dict[str, Any]]) -> pa.Table:
    """The BigQuery table as streaming inserts leave it: some events twice (a redelivery, a backfill rerun)
    under the same message id, ingested later."""
    again = [{**e, "ingest_us": e["ingest_us"] + rng.choice([1, MINUTE, 2 * DAY])} for e in rng.sample(events, 200)]
    return history_table(events + again)


def bigquery_dataset(family: FamilySpec, raw: pa.Table, spine: Spine) -> duckdb.DuckDBPyConnection:
    """DuckDB holding what the BigQuery SQL reads: the source table as stored, and the uploaded spine (its
    timestamp column `ts` a TIMESTAMP), under the same project and dataset names."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"ATTACH ':memory:' AS \"{PROJECT}\"")
    con.execute(f'CREATE SCHEMA "{PROJECT}".{DATASET}')
    con.register("raw", raw)
    con.execute(f'CREATE TABLE "{PROJECT}".{DATASET}.{family.source.table_name} AS SELECT * FROM raw')
    uploaded = pa.table(
        {
            ROW_COLUMN: [row for row, _, _ in spine],
            "user_id": pa.array([k for _, k, _ in spine], pa.int64()),
            "ts": pa.array([t for _, _, t in spine], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    con.register("uploaded", uploaded)
    con.execute(f'CREATE TABLE "{PROJECT}".{DATASET}.{SPINE} AS SELECT * FROM uploaded')
    return con


def run(con: duckdb.DuckDBPyConnection, sql: str, columns: list[str]) -> dict[int, dict[str, Any]]:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    assert names == [ROW_COLUMN, *columns]
    return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in result.fetchall()}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)  # float sums: any order of the terms
    return bool(a == b)


WINDOWED = ["order_count_1h", "order_count_7d", "amount_sum_7d", "amount_mean_1d", "amount_max_30d"]


@pytest.mark.parametrize(
    ("seed", "origin", "chosen"),
    [
        (0, T0, None),
        (1, T0, WINDOWED),  # no lifetime feature: the history is pruned from below as well
        (2, -20 * DAY + 7, None),  # across 1970: negative times floor to their tiles, not toward zero
        (3, -315_619_200 * 1_000_000, WINDOWED),  # 1960
    ],
)
def test_bigquery_sql_equals_duckdb_and_the_definition(seed: int, origin: int, chosen: list[str] | None) -> None:
    family = Registry.default().family("user_orders")
    features = tuple(family.features if chosen is None else [family.feature(n) for n in chosen])
    columns = [f"user_orders__{f.name}" for f in features]
    events, spine = scenario(seed, origin)
    rng = random.Random(seed)
    ingests = sorted(e["ingest_us"] for e in events)
    mark = ingests[len(ingests) * 9 // 10]  # some events arrived after the export began: read by neither
    join = AggregationJoin(family, features, tuple(columns), mark)
    bounds = (min(t for _, _, t in spine), max(t for _, _, t in spine))

    con = bigquery_dataset(family, raw_rows(rng, events), spine)
    con.register("history", history_table(events))  # the reference reads the rows already one per message id

    spine_sql = f'SELECT * FROM "{PROJECT}".{DATASET}.{SPINE}'
    history_sql = "SELECT * FROM history WHERE " + " AND ".join(aggregation_history_filters(join, bounds))
    reference = run(con, duckdb_aggregation_sql(family, features, columns, spine_sql, history_sql, "ts"), columns)
    history = bigquery_aggregation_history(join, PROJECT, DATASET, bounds)
    sql = bigquery_aggregation_sql(family, features, columns, bigquery_table(PROJECT, DATASET, SPINE), history, "ts")
    got = run(con, to_duckdb(sql), columns)

    assert got.keys() == reference.keys()
    assert not any(key == 6 and row in got for row, key, _ in spine)  # no events: no row, the caller fills
    by_key = defaultdict(list)
    for e in events:
        if e["ingest_us"] <= mark:
            by_key[e["user_id"]].append(e)
    for row, key, t in spine:
        for feature, column in zip(features, columns, strict=True):
            value = got[row][column] if row in got else None
            assert same(value, reference[row][column] if row in reference else None), (column, row, value)
            if value is None and feature.function in ("count", "sum"):
                value = 0  # what the export's left join fills in
            want = brute_force(family, feature, by_key[key], key, t)
            assert same(value, want), (column, key, t, value, want)


def test_a_table_with_nothing_reads_nothing() -> None:
    """No high-water mark (the source table is empty or missing) or no spine bounds: no row at all."""
    family = Registry.default().family("user_orders")
    columns = [f.name for f in family.features]
    t = T0 + 50 * DAY
    con = bigquery_dataset(family, history_table(random_events(random.Random(5), 50)), [(0, 1, t)])
    spine = bigquery_table(PROJECT, DATASET, SPINE)
    for mark, bounds, rows in ((None, (t, t), 0), (t, None, 0), (t, (t, t), 1)):  # the last: it would read some
        join = AggregationJoin(family, family.features, tuple(columns), mark)
        history = bigquery_aggregation_history(join, PROJECT, DATASET, bounds)
        sql = bigquery_aggregation_sql(family, family.features, columns, spine, history, "ts")
        assert len(run(con, to_duckdb(sql), columns)) == rows


def both_routes(
    windows: Mapping[int, Sequence[float | None]],
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """test_aggregation_sums' family of every float aggregate over `windows` (user -> its amounts, all in
    the window at AT) and user 0 with none: (BigQuery SQL transpiled, DuckDB reference), by user, a user
    with no event (no row from either) left out."""
    from .test_aggregation_sums import AT, edge_family, events

    family = edge_family(Registry.default())
    columns = [f.name for f in family.features]
    rows = events(windows)
    spine = [(row, key, AT) for row, key in enumerate([*windows, 0])]
    join = AggregationJoin(family, family.features, tuple(columns), max(e["ingest_us"] for e in rows))
    con = bigquery_dataset(family, history_table(rows), spine)
    con.register("history", history_table(rows))
    history_sql = "SELECT * FROM history WHERE " + " AND ".join(aggregation_history_filters(join, (AT, AT)))
    spine_sql = f'SELECT * FROM "{PROJECT}".{DATASET}.{SPINE}'
    reference = run(
        con, duckdb_aggregation_sql(family, family.features, columns, spine_sql, history_sql, "ts"), columns
    )
    history = bigquery_aggregation_history(join, PROJECT, DATASET, (AT, AT))
    uploaded = bigquery_table(PROJECT, DATASET, SPINE)
    got = run(
        con, to_duckdb(bigquery_aggregation_sql(family, family.features, columns, uploaded, history, "ts")), columns
    )
    assert got.keys() == reference.keys() == {row for row, key, _ in spine if key != 0}
    key_of = {row: key for row, key, _ in spine}
    return {key_of[r]: v for r, v in got.items()}, {key_of[r]: v for r, v in reference.items()}


def close(a: Any, b: Any) -> bool:
    """Floats to 1e-9 relative, NaN equal to NaN whatever its bits (BigQuery's SUM keeps the NaN it read)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isnan(a) == math.isnan(b) and (math.isnan(a) or math.isclose(a, b, rel_tol=1e-9))
    return bool(a == b)


SUMMED = ("amount_sum", "amount_sum_1h", "amount_mean", "amount_mean_1h")


def test_nan_and_the_infinities_on_the_bigquery_route() -> None:
    """test_aggregation_sums' NaN and infinity windows through the BigQuery SQL: SUM and MEAN NaN with a NaN
    or both infinities, else the infinity; MIN and MAX NaN when the window has a NaN, to the bit (the quiet
    NaN) and equal to the reference's. The BigQuery SQL writes MIN as -MAX(-x): BigQuery's own MIN is NaN
    then too, but SQLGlot's DuckDB MIN drops a NaN, and the route must say the same on both."""
    from .test_aggregation_sums import SPECIAL, same

    got, reference = both_routes({key: values for key, (values, _, _, _) in enumerate(SPECIAL, start=1)})
    for key, (values, total, least, greatest) in enumerate(SPECIAL, start=1):
        row = got[key]
        assert same(row["amount_min"], least) and same(row["amount_max"], greatest), (values, row)
        assert all(close(row[name], total) for name in SUMMED if not math.isfinite(total)), (values, row)
        assert all(close(row[name], reference[key][name]) for name in row), (values, row, reference[key])
        assert all(same(row[name], reference[key][name]) for name in ("amount_min", "amount_max"))


def test_nulls_and_finite_sums_on_the_bigquery_route() -> None:
    """Nulls are skipped (a window of nulls: SUM NULL, which the export fills with 0, and MEAN, MIN, MAX
    null; COUNT counts the events). BigQuery keeps FLOAT64 sums, added in whatever order its workers take,
    so exactness is not claimed on this route: its finite sums and means equal the DuckDB reference's to
    1e-9 relative, for well-conditioned windows (a cancelling one, [1e16, 1, -1e16], is exact on DuckDB
    alone: test_aggregation_sums); MIN and MAX add nothing and are equal to the bit."""
    from .test_aggregation_sums import same

    windows: dict[int, list[float | None]] = {1: [None, None], 2: [None, 2.5, -1.0], 3: [0.1, 0.2, 0.3],
                                              4: [1e-3, 3e-4], 5: [-0.0, 0.0, 7.0], 6: [-0.0]}  # fmt: skip
    got, reference = both_routes(windows)
    assert got[1] == {"orders": 2, **{name: None for name in [*SUMMED, "amount_min", "amount_max"]}}
    assert (got[2]["orders"], got[2]["amount_mean"], got[2]["amount_min"], got[2]["amount_max"]) == (3, 0.75, -1.0, 2.5)
    assert same(got[6]["amount_min"], 0.0) and same(got[6]["amount_max"], 0.0)  # a zero is +0.0
    for key in windows:
        assert all(close(got[key][name], reference[key][name]) for name in got[key]), (key, got[key], reference[key])
        assert all(same(got[key][name], reference[key][name]) for name in ("amount_min", "amount_max")), key
