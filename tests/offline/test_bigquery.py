"""The BigQuery backend without BigQuery: its SQL must parse in sqlglot's BigQuery dialect and, transpiled to
DuckDB over the same rows, give exactly the DuckDB backend's answer; its client calls are checked against
recorded shapes. `test_real_bigquery` runs against a real project when FSTORE_BIGQUERY_TEST_PROJECT is set."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import arrow_schema, bigquery_schema_fields
from fstore.settings import load_settings
from fstore.store.events import DeadLetter
from fstore.store.offline import segments
from fstore.store.offline.bigquery import BigQueryOfflineStore, finish_batches, json_row
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.export import plan_export
from fstore.store.offline.journal import read_journal
from fstore.store.offline.manifest import ExportOptions
from fstore.store.offline.sql import bigquery_export_sql

from .conftest import T0, at, rows
from .fake_bigquery import FakeBigQueryClient, to_duckdb

PROJECT, DATASET = "fstore-test", "offline"
TTL = 2_592_000


def edge_cases(offline: DuckDBOfflineStore, user: EntitySpec, item: EntitySpec) -> pa.Table:
    """Ties, duplicates, the TTL boundary, two entities, repeated fields; returns the spine."""
    offline.write(
        user,
        rows(
            user,
            {"key": 1, "t": 0, "age": 30, "embedding": [1.0]},
            {"key": 1, "t": 100, "ingest": 150, "id": "z", "age": 31},
            {"key": 1, "t": 100, "ingest": 160, "id": "y", "age": 32, "favorite_categories": ["a"]},
            {"key": 2, "t": 100, "ingest": 150, "id": "b", "age": 40},
            {"key": 2, "t": 100, "ingest": 150, "id": "c", "age": 41},
        ),
    )
    DuckDBOfflineStore(offline.root, offline.registry).write(
        user,
        rows(user, {"key": 2, "t": 100, "ingest": 900, "id": "b", "age": 40}),  # redelivery of b
    )
    offline.write(item, rows(item, {"key": "a", "t": 0, "price": 1.0, "tags": ["x", "y"]}, {"key": "b", "t": 50}))
    return pa.table(
        {
            "user_id": [1, 1, 1, 2, 3, 1],
            "item_id": ["a", "b", "c", "a", "b", "a"],
            "event_timestamp": [at(0), at(99), at(100), at(100), at(5), at(TTL + 100)],
            "label": [0, 1, 0, 1, 0, 1],
        }
    )


def random_history(offline: DuckDBOfflineStore, user: EntitySpec, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    times = [0, 1, 5, TTL - 1, TTL, TTL + 1, 2 * TTL]
    records: list[dict[str, Any]] = [
        {
            "key": int(rng.integers(1, 6)),
            "t": int(rng.choice(times)),
            "ingest": int(rng.integers(0, 3)),
            "id": f"m{n}",
            "age": int(rng.integers(0, 99)),
        }
        for n in range(200)
    ]
    for r in records:
        r["ingest"] += r["t"]
    for n in range(0, 200, 4):
        offline.write(user, rows(user, *records[n : n + 4]))
    redelivered = [{**records[i], "ingest": records[i]["ingest"] + 2} for i in rng.integers(0, 200, 20)]
    DuckDBOfflineStore(offline.root, offline.registry).write(user, rows(user, *redelivered))
    return pa.table(
        {"user_id": rng.integers(1, 7, 300), "event_timestamp": [at(int(rng.choice(times))) for _ in range(300)]}
    )


def bigquery_answer(offline: DuckDBOfflineStore, plan: Any) -> list[dict[str, Any]]:
    """Run the BigQuery SQL, transpiled by sqlglot, in DuckDB over the raw stored rows (duplicates included)."""
    sql = bigquery_export_sql(plan, PROJECT, DATASET, "_spine")
    sqlglot.parse_one(sql, read="bigquery", error_level=sqlglot.ErrorLevel.RAISE)
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"ATTACH ':memory:' AS \"{PROJECT}\"")
    con.execute(f'CREATE SCHEMA "{PROJECT}".{DATASET}')
    for j in plan.joins:
        parts = segments.partitions(offline.root / j.spec.table_name)
        tables = [pq.read_table(p) for part in parts for p in part.files]
        tables += [read_journal(p).table for part in parts for p in part.journals]
        raw = pa.concat_tables([t for t in tables if t is not None], promote_options="default")
        con.register("raw", raw)
        con.execute(f'CREATE TABLE "{PROJECT}".{DATASET}.{j.spec.table_name} AS SELECT * FROM raw')
        con.unregister("raw")
    spine = plan.spine.table
    con.register("spine", spine)
    con.execute(
        f'CREATE TABLE "{PROJECT}".{DATASET}._spine AS SELECT * REPLACE '
        f"(CAST({plan.timestamp_column} AS TIMESTAMPTZ) AS {plan.timestamp_column}) FROM spine"
    )
    result = con.sql(to_duckdb(sql)).to_arrow_table()
    return pa.concat_tables(finish_batches(plan, result.to_batches())).to_pylist()


def duckdb_answer(offline: DuckDBOfflineStore, spine: pa.Table, features: list[str], tmp_path: Path) -> Any:
    out = tmp_path / f"{uuid.uuid4().hex}.parquet"
    offline.export_training_set(spine, features, out)
    plan = plan_export(offline.registry, spine, features, ExportOptions(), offline.high_water_mark)
    return plan, pq.read_table(out).to_pylist()


def test_bigquery_sql_equals_duckdb_on_edge_cases(
    offline: DuckDBOfflineStore, user: EntitySpec, item: EntitySpec, tmp_path: Path
) -> None:
    spine = edge_cases(offline, user, item)
    plan, expected = duckdb_answer(offline, spine, ["user:*", "item:price", "item:tags"], tmp_path)
    assert [r["user__age"] for r in expected] == [30, 30, 32, 41, None, None]
    assert bigquery_answer(offline, plan) == expected


@pytest.mark.parametrize("seed", range(4))
def test_bigquery_sql_equals_duckdb_on_random_data(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path, seed: int
) -> None:
    spine = random_history(offline, user, seed)
    plan, expected = duckdb_answer(offline, spine, ["user:age"], tmp_path)
    assert bigquery_answer(offline, plan) == expected


@pytest.fixture
def fake_client() -> FakeBigQueryClient:
    return FakeBigQueryClient(PROJECT)


@pytest.fixture
def bq(registry: Registry, fake_client: FakeBigQueryClient) -> BigQueryOfflineStore:
    return BigQueryOfflineStore(PROJECT, DATASET, registry, job_project="fstore-jobs", client=fake_client)


def test_table_creation_and_streaming_insert_shapes(
    bq: BigQueryOfflineStore, fake_client: FakeBigQueryClient, user: EntitySpec
) -> None:
    batch = rows(user, *({"key": n, "t": n, "id": f"id{n}", "embedding": [0.5]} for n in range(1200)))
    assert bq.write(user, batch) == 1200
    bq.write(user, rows(user, {"key": 1, "t": 1}))
    create = [c for c in fake_client.calls if c.method == "create_table"]
    assert len(create) == 1  # once per table and process
    table = create[0].args["table"]
    assert table["tableReference"] == {"projectId": PROJECT, "datasetId": DATASET, "tableId": "user_v1"}
    assert table["timePartitioning"] == {"type": "DAY", "field": "event_time"}
    assert table["clustering"] == {"fields": ["user_id"]}
    assert [{k: v for k, v in f.items() if k in ("name", "type", "mode")} for f in table["schema"]["fields"]] == [
        {k: v for k, v in f.items() if k in ("name", "type", "mode")} for f in bigquery_schema_fields(user)
    ]
    inserts = [c.args for c in fake_client.calls if c.method == "insert_rows_json"]
    assert [len(i["rows"]) for i in inserts] == [500, 500, 200, 1]
    assert inserts[0]["table"] == f"{PROJECT}.{DATASET}.user_v1"
    assert inserts[0]["row_ids"][:2] == ["id0", "id1"]  # insertId = message id: BigQuery's dedup
    first = inserts[0]["rows"][0]
    assert first["event_time"] == "2026-03-01T00:00:00+00:00" and first["embedding"] == [0.5]
    assert first["age"] is None and first["favorite_categories"] == []


def test_reads_through_the_client(bq: BigQueryOfflineStore, user: EntitySpec, fake_client: FakeBigQueryClient) -> None:
    bq.write(user, rows(user, {"key": 2, "t": 5, "age": 1}, {"key": 1, "t": 9, "age": 2, "id": "dup", "ingest": 10}))
    bq.write(user, rows(user, {"key": 1, "t": 9, "age": 2, "id": "dup", "ingest": 20}))  # insertId missed it
    history = bq.history(user)
    assert history.schema == arrow_schema(user)
    assert [(r["user_id"], r["ingest_time"]) for r in history.to_pylist()] == [(1, at(10)), (2, at(6))]
    batches = list(bq.history_batches(user, at(6)))  # event time >= 6: user 1's row, its first ingest
    assert all(b.schema == arrow_schema(user) for b in batches)
    assert [(r["user_id"], r["ingest_time"]) for b in batches for r in b.to_pylist()] == [(1, at(10))]
    (entry,) = bq.ledger()
    assert (entry.entity, entry.version, entry.rows, entry.last_ingest_time) == ("user", 1, 2, at(10))
    assert all(c.args["project"] == "fstore-jobs" for c in fake_client.calls if c.method == "query")
    letter = DeadLetter(b"\xff", {"fstore_entity": "user"}, "decode_error", "bad", "d1", T0, at(1))
    assert bq.write_dead_letters([letter, letter]) == 2
    (stored,) = bq.dead_letters().to_pylist()
    assert stored["data"] == b"\xff" and stored["reason"] == "decode_error"


def test_export_through_the_client_equals_duckdb(
    bq: BigQueryOfflineStore,
    offline: DuckDBOfflineStore,
    fake_client: FakeBigQueryClient,
    user: EntitySpec,
    item: EntitySpec,
    tmp_path: Path,
) -> None:
    spine = edge_cases(offline, user, item)
    for spec in (user, item):
        bq.write(spec, offline.history(spec))  # the same rows (deduplicated) in "BigQuery"
    bq.write(user, rows(user, {"key": 2, "t": 100, "ingest": 900, "id": "b", "age": 40}))  # a duplicate there too
    features = ["user:*", "item:price", "item:tags"]
    expected = tmp_path / "duck.parquet"
    offline.export_training_set(spine, features, expected)
    fake_client.calls.clear()
    out = tmp_path / "bq.parquet"
    manifest = bq.export_training_set(spine, features, out)
    assert pq.read_table(out) == pq.read_table(expected)
    assert manifest["backend"] == "bigquery" and "QUALIFY ROW_NUMBER()" in manifest["sql"]
    methods = fake_client.methods()
    assert methods[-4:] == ["load_table_from_file", "query", "delete_table", "delete_table"]
    load = next(c.args for c in fake_client.calls if c.method == "load_table_from_file")
    assert load["job_config"]["load"]["sourceFormat"] == "PARQUET" and load["rows"] == spine.num_rows
    query = [c.args for c in fake_client.calls if c.method == "query"][-1]
    destination = query["job_config"]["query"]["destinationTable"]
    assert destination["datasetId"] == DATASET and destination["tableId"].startswith("_fstore_export_")
    assert query["sql"] == manifest["sql"] and query["sql"].rstrip().endswith("ORDER BY s.__fstore_row")
    # reproduce gives the same bytes after more rows arrive
    bq.write(user, rows(user, {"key": 1, "t": 99, "ingest": 10**6, "id": "late", "age": 77}))
    again = tmp_path / "again.parquet"
    bq.export_training_set(spine, None, again, ExportOptions(reproduce=manifest))
    assert again.read_bytes() == out.read_bytes()


def test_json_rows() -> None:
    assert json_row({"a": b"\x00\x01", "b": 2**64 - 1, "c": [T0], "d": None}) == {
        "a": "AAE=",
        "b": "18446744073709551615",
        "c": ["2026-03-01T00:00:00+00:00"],
        "d": None,
    }


def test_from_url(registry: Registry) -> None:
    store = BigQueryOfflineStore.from_url("bigquery://data-proj/feature_store", registry, project="jobs-proj")
    assert (store.project, store.dataset, store.job_project) == ("data-proj", "feature_store", "jobs-proj")
    settings = load_settings(offline="bigquery://data-proj/feature_store")
    assert settings.offline.startswith("bigquery://")


def _real_project() -> str | None:
    project = os.environ.get("FSTORE_BIGQUERY_TEST_PROJECT")
    if not project:
        return None
    try:
        import google.auth

        google.auth.default()
    except Exception:
        return None
    return project


@pytest.mark.skipif(_real_project() is None, reason="set FSTORE_BIGQUERY_TEST_PROJECT and credentials (ADC)")
def test_real_bigquery(
    registry: Registry, offline: DuckDBOfflineStore, user: EntitySpec, item: EntitySpec, tmp_path: Path
) -> None:  # pragma: no cover - needs a real project
    from google.cloud import bigquery

    project = _real_project()
    assert project is not None
    dataset = f"fstore_test_{uuid.uuid4().hex[:8]}"
    client = bigquery.Client(project=project)
    client.create_dataset(dataset)
    try:
        store = BigQueryOfflineStore(project, dataset, registry, client=client)
        spine = edge_cases(offline, user, item)
        for spec in (user, item):
            store.write(spec, offline.history(spec))
        expected, out = tmp_path / "duck.parquet", tmp_path / "bq.parquet"
        offline.export_training_set(spine, ["user:*", "item:*"], expected)
        store.export_training_set(spine, ["user:*", "item:*"], out)
        assert pq.read_table(out) == pq.read_table(expected)
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
