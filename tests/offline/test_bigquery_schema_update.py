"""A BigQuery table follows its entity's additive changes (issue 14): after `user` v1 gains an optional field
(`SchemaCopy.add_user_field`, as a team would while a job runs), the first write carrying it adds the column,
NULLABLE, before the insert; conflicts raise naming the column; writers racing to add it both succeed. The
stand-in refuses inserts naming unknown columns, as BigQuery does, so a missing column would fail the write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from fstore.errors import SchemaError, StoreUnavailableError
from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import bigquery_schema_fields
from fstore.store.offline.bigquery import BigQueryOfflineStore
from fstore.store.offline.bigquery_schema import UPDATE_ATTEMPTS, plan_columns
from fstore.store.offline.duckdb import DuckDBOfflineStore

from .conftest import at, rows
from .fake_bigquery import FakeBigQueryClient
from .test_bigquery import DATASET, PROJECT, bigquery_answer, duckdb_answer

TABLE = f"{PROJECT}.{DATASET}.user_v1"
ADDED = "churn_score"


def old_rows(spec: EntitySpec) -> pa.Table:
    return rows(spec, {"key": 1, "t": 0, "age": 30}, {"key": 2, "t": 0, "age": 40})


def new_rows(spec: EntitySpec) -> pa.Table:
    """Rows of the grown `user`: one with the new field set, one (a producer not setting it) without."""
    return rows(spec, {"key": 1, "t": 100, "age": 31, ADDED: 0.5}, {"key": 2, "t": 100, "age": 41})


def grown(schema_copy: Any) -> Registry:
    schema_copy.add_user_field()
    registry = schema_copy.registry()
    assert registry.get("user", 1).feature(ADDED).kind == "double"
    return registry


def store(registry: Registry, client: FakeBigQueryClient) -> BigQueryOfflineStore:
    return BigQueryOfflineStore(PROJECT, DATASET, registry, client=client)


@pytest.fixture
def client() -> FakeBigQueryClient:
    return FakeBigQueryClient(PROJECT)


@pytest.fixture
def v1(schema_copy: Any) -> Registry:
    return schema_copy.registry()


@pytest.fixture
def running(v1: Registry, client: FakeBigQueryClient) -> BigQueryOfflineStore:
    """A store (a running job's) that has written user v1 rows, so it knows the table without the new column."""
    bq = store(v1, client)
    bq.write(v1.get("user", 1), old_rows(v1.get("user", 1)))
    return bq


def column_names(client: FakeBigQueryClient) -> list[str]:
    return [c["name"] for c in client.columns[TABLE]]


def test_the_stand_in_refuses_an_unknown_column_as_bigquery_does(
    running: BigQueryOfflineStore, client: FakeBigQueryClient
) -> None:
    row = {"user_id": 9, "event_time": "2026-03-01T00:00:00+00:00", "message_id": "x", ADDED: 1.0}
    (error,) = client.insert_rows_json(TABLE, [row], row_ids=["x"])
    assert error["errors"][0]["message"] == f"no such field: {ADDED}."
    assert running.history(running.registry.get("user", 1)).num_rows == 2  # nothing of that request stored


def test_a_running_writer_adds_the_new_column_once_before_the_insert(
    running: BigQueryOfflineStore, client: FakeBigQueryClient, schema_copy: Any
) -> None:
    before = column_names(client)
    user = grown(schema_copy).get("user", 1)
    client.calls.clear()
    assert running.write(user, new_rows(user)) == 2
    assert client.methods() == ["get_table", "update_table", "insert_rows_json"]
    update = next(c.args for c in client.calls if c.method == "update_table")
    assert update["fields"] == ["schema"] and [c["name"] for c in update["schema"]] == [*before, ADDED]
    assert column_names(client) == [*before, ADDED]
    added = client.columns[TABLE][-1]
    assert (added["type"], added["mode"], added["description"]) == ("FLOAT", "NULLABLE", "Added while running.")
    client.calls.clear()
    running.write(user, rows(user, {"key": 3, "t": 5, ADDED: 0.75}))
    assert client.methods() == ["insert_rows_json"]  # known now: no get_table, no update_table
    history = running.history(user).to_pylist()
    assert [(r["user_id"], r["age"], r[ADDED]) for r in history] == [
        (1, 30, None),  # an old row: NULL in the added column
        (1, 31, 0.5),
        (2, 40, None),
        (2, 41, None),
        (3, None, 0.75),
    ]


def test_a_restarted_writer_and_a_writer_not_yet_reloaded(
    running: BigQueryOfflineStore, client: FakeBigQueryClient, schema_copy: Any, v1: Registry
) -> None:
    registry = grown(schema_copy)
    user = registry.get("user", 1)
    client.calls.clear()
    store(registry, client).write(user, new_rows(user))  # a new process: create_table reads the existing table
    assert client.methods() == ["create_table", "update_table", "insert_rows_json"]
    client.calls.clear()
    running.write(v1.get("user", 1), old_rows(v1.get("user", 1)))  # still on v1: the extra column stays NULL
    store(registry, client).write(user, new_rows(user))
    assert client.methods() == ["insert_rows_json", "create_table", "insert_rows_json"]
    assert column_names(client).count(ADDED) == 1


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            bigquery.SchemaField(ADDED, "STRING"),
            f"column '{ADDED}' is STRING NULLABLE in the table but FLOAT64 NULLABLE in the entity schema",
        ),
        (
            bigquery.SchemaField("age", "INT64", mode="REPEATED"),
            "column 'age' is INT64 REPEATED in the table but INT64 NULLABLE in the entity schema",
        ),
        (
            bigquery.SchemaField("legacy_id", "STRING", mode="REQUIRED"),
            "column 'legacy_id' is STRING REQUIRED in the table but absent in the entity schema",
        ),
    ],
)
def test_a_column_that_would_have_to_change_raises_and_nothing_is_written(
    client: FakeBigQueryClient, schema_copy: Any, column: bigquery.SchemaField, message: str
) -> None:
    user = grown(schema_copy).get("user", 1)
    fields = [bigquery.SchemaField.from_api_repr(f) for f in bigquery_schema_fields(user) if f["name"] != ADDED]
    fields = [f for f in fields if f.name != column.name] + [column]
    client.create_table(bigquery.Table(TABLE, schema=fields))  # as a hand-made or older table left it
    before = list(client.columns[TABLE])
    client.calls.clear()
    bq = store(schema_copy.registry(), client)
    with pytest.raises(SchemaError) as raised:
        bq.write(user, new_rows(user))
    assert message in str(raised.value)
    assert TABLE in str(raised.value) and "`fstore schema check`" in str(raised.value)
    assert client.methods() == ["create_table"]  # no update_table, no insert
    assert client.columns[TABLE] == before
    with pytest.raises(SchemaError):  # and again on the next try: a conflict is never cached away
        bq.write(user, new_rows(user))


def another_writer_adds(client: FakeBigQueryClient, *columns: dict[str, Any]) -> None:
    """Between this store's read of the table and its update, another writer adds a column: one per update."""
    pending = list(columns)

    def add(table: str) -> None:
        if pending:
            client.alter(table, pending.pop(0))

    client.before_update = add


def test_a_concurrent_add_of_the_same_column_is_tolerated(
    running: BigQueryOfflineStore, client: FakeBigQueryClient, schema_copy: Any
) -> None:
    user = grown(schema_copy).get("user", 1)
    another_writer_adds(client, next(f for f in bigquery_schema_fields(user) if f["name"] == ADDED))
    client.calls.clear()
    assert running.write(user, new_rows(user)) == 2  # the update lost (412 on the etag); the re-read has it
    assert client.methods() == ["get_table", "update_table", "get_table", "insert_rows_json"]
    assert column_names(client).count(ADDED) == 1


def test_a_concurrent_add_of_another_column_is_tolerated(
    running: BigQueryOfflineStore, client: FakeBigQueryClient, schema_copy: Any
) -> None:
    user = grown(schema_copy).get("user", 1)
    client.check_etag = False  # the lost race then shows as a 400: the schema sent lacks the other's column
    another_writer_adds(client, {"name": "from_a_newer_writer", "type": "STRING", "mode": "NULLABLE"})
    client.calls.clear()
    assert running.write(user, new_rows(user)) == 2
    assert client.methods() == ["get_table", "update_table", "get_table", "update_table", "insert_rows_json"]
    assert column_names(client)[-2:] == ["from_a_newer_writer", ADDED]


def test_updates_lost_every_time_fail_retryably(
    running: BigQueryOfflineStore, client: FakeBigQueryClient, schema_copy: Any
) -> None:
    user = grown(schema_copy).get("user", 1)
    others = [{"name": f"other_{n}", "type": "STRING", "mode": "NULLABLE"} for n in range(UPDATE_ATTEMPTS)]
    another_writer_adds(client, *others)
    client.calls.clear()
    with pytest.raises(StoreUnavailableError, match=f"in {UPDATE_ATTEMPTS} attempts"):
        running.write(user, new_rows(user))
    assert client.methods().count("update_table") == UPDATE_ATTEMPTS and "insert_rows_json" not in client.methods()
    assert running.write(user, new_rows(user)) == 2  # the other writer is done: the ingest job's retry goes through
    assert column_names(client)[-1] == ADDED


def test_plan_columns_reads_legacy_type_names() -> None:
    existing = [{"name": "a", "type": "INTEGER", "mode": "REQUIRED"}, {"name": "b", "type": "FLOAT"}]
    expected: list[dict[str, Any]] = [
        {"name": "a", "type": "INT64", "mode": "REQUIRED"},
        {"name": "b", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "c", "type": "BOOL", "mode": "REPEATED"},
    ]
    plan = plan_columns("p.d.t", existing, expected)
    assert plan.missing == (expected[2],) and not plan.conflicts
    assert plan_columns("p.d.t", [*existing, {"name": "c", "type": "BOOLEAN", "mode": "REPEATED"}], expected).clean


def grown_histories(tmp_path: Path, schema_copy: Any, v1: Registry) -> tuple[DuckDBOfflineStore, pa.Table]:
    """The embedded store holding v1 rows and then rows with the added field; returns it (on the grown
    registry) and a spine matching old rows, new rows and nothing."""
    old = DuckDBOfflineStore(tmp_path / "offline", v1, threads=2)
    old.write(v1.get("user", 1), old_rows(v1.get("user", 1)))
    old.close()
    registry = grown(schema_copy)
    offline = DuckDBOfflineStore(tmp_path / "offline", registry, threads=2)
    offline.write(registry.get("user", 1), new_rows(registry.get("user", 1)))
    spine = pa.table({"user_id": [1, 1, 2, 3], "event_timestamp": [at(50), at(200), at(200), at(200)]})
    return offline, spine


FEATURES = [f"user:{ADDED}", "user:age"]


def test_export_sql_over_the_added_column_equals_duckdb(tmp_path: Path, schema_copy: Any, v1: Registry) -> None:
    """The SQLGlot route: the export SQL parses as BigQuery and, run in DuckDB over the raw rows (old files
    lack the column), gives the embedded store's answer."""
    offline, spine = grown_histories(tmp_path, schema_copy, v1)
    try:
        plan, expected = duckdb_answer(offline, spine, FEATURES, tmp_path)
        assert [(r[f"user__{ADDED}"], r["user__age"]) for r in expected] == [
            (None, 30),  # an old row: NULL in the added column
            (0.5, 31),
            (None, 41),
            (None, None),
        ]
        assert bigquery_answer(offline, plan) == expected
    finally:
        offline.close()


def test_export_through_the_client_over_the_added_column_equals_duckdb(
    tmp_path: Path, schema_copy: Any, v1: Registry, running: BigQueryOfflineStore, client: FakeBigQueryClient
) -> None:
    offline, spine = grown_histories(tmp_path, schema_copy, v1)
    try:
        bq = store(offline.registry, client)  # the job restarted on the grown registry; `running` wrote v1
        bq.write(offline.registry.get("user", 1), new_rows(offline.registry.get("user", 1)))
        expected, out = tmp_path / "duck.parquet", tmp_path / "bq.parquet"
        offline.export_training_set(spine, FEATURES, expected)
        bq.export_training_set(spine, FEATURES, out)
        assert pq.read_table(out) == pq.read_table(expected)
    finally:
        offline.close()
