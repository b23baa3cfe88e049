"""`OfflineStore.latest_rows`, what `fstore materialize` writes online: per key the greatest (event time,
ingest time, message id), each message id once, within [start, end), streamed in batches; the same answer
from DuckDB over every kind of file and from the BigQuery SQL (through the stand-in); and the Arrow
encoding of such rows is, byte for byte, the message path's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest
import sqlglot

from fstore.ingest.parquet import latest_messages
from fstore.schema.registry import EntitySpec, Registry
from fstore.store.offline import duckdb as duckdb_store
from fstore.store.offline.bigquery import BigQueryOfflineStore
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.schema import messages_to_table
from fstore.store.offline.sql import KEY_ROWS, bigquery_latest_sql, latest_schema
from fstore.store.online.redis import encode_rows

from .conftest import T0, at, rows
from .fake_bigquery import FakeBigQueryClient
from .test_schema import every_kind_spec, sample_messages

PROJECT, DATASET = "fstore-test", "offline"
DAY = 86_400


def stored_with_every_source(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    """Rows over three days: a compacted day, a day with a fresh segment, journals; ties on event time
    broken by ingest time and by message id; a message stored twice (its earliest ingest counts)."""
    offline.write(
        user,
        rows(
            user,
            {"key": 1, "t": 0, "age": 1},
            {"key": 1, "t": DAY, "age": 2},  # the latest of key 1 ...
            {"key": 2, "t": 10, "ingest": 20, "id": "a", "age": 3},
            {"key": 2, "t": 10, "ingest": 30, "id": "b", "age": 4},  # ... the later ingest wins a tie ...
            {"key": 3, "t": 10, "ingest": 20, "id": "x", "age": 5},
            {"key": 3, "t": 10, "ingest": 20, "id": "y", "age": 6},  # ... then the greater message id
            {"key": 4, "t": 10, "ingest": 11, "id": "dup", "age": 7},
            {"key": 4, "t": 10, "ingest": 50, "id": "z", "age": 8},
        ),
    )
    offline.compact(user)
    # A redelivery of "dup", ingested last: were it not deduplicated (earliest ingest), it would win key 4.
    DuckDBOfflineStore(offline.root, offline.registry).write(
        user, rows(user, {"key": 4, "t": 10, "ingest": 90, "id": "dup", "age": 7})
    )
    bulk = [{"key": 100 + n, "t": 2 * DAY + n, "age": n % 90} for n in range(1_200)]  # a segment, not a journal
    offline.write(user, rows(user, *bulk))
    offline.write(user, rows(user, {"key": 1, "t": DAY - 1, "age": 9}, {"key": 100, "t": 2 * DAY + 5, "age": 10}))


def latest(store: Any, spec: EntitySpec, **bounds: Any) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for batch in store.latest_rows(spec, **bounds):
        assert batch.schema.equals(latest_schema(spec))
        for row in batch.to_pylist():
            assert row[spec.key.name] not in found  # each key once
            found[row[spec.key.name]] = row
    return found


def test_duckdb_latest_row_per_key(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    stored_with_every_source(offline, user)
    found = latest(offline, user)
    assert len(found) == 4 + 1_200
    assert {k: found[k]["age"] for k in (1, 2, 3, 4, 100, 101)} == {1: 2, 2: 4, 3: 6, 4: 8, 100: 10, 101: 1}
    assert (found[4]["message_id"], found[4]["ingest_time"]) == ("z", at(50))
    assert {k: found[k][KEY_ROWS] for k in (1, 2, 4, 100, 101)} == {1: 3, 2: 2, 4: 2, 100: 2, 101: 1}
    history = offline.history(user)
    assert sum(r[KEY_ROWS] for r in found.values()) == history.num_rows == 1_210
    assert offline.history(user).equals(history)  # only read


def test_duckdb_latest_rows_within_start_and_end(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    stored_with_every_source(offline, user)
    # [start, end): key 1's rows at T0 + 1 day and 1 day - 1 s are outside, its row at T0 is inside.
    found = latest(offline, user, start=at(0), end=at(DAY - 1))
    assert sorted(found) == [1, 2, 3, 4]
    assert (found[1]["age"], found[1][KEY_ROWS]) == (1, 1)
    assert latest(offline, user, start=at(DAY - 1), end=at(DAY))[1]["age"] == 9
    naive = latest(offline, user, start=at(2 * DAY + 1_199).replace(tzinfo=None))  # a naive time is UTC
    assert sorted(naive) == [1_299]
    assert latest(offline, user, start=T0 + timedelta(days=30)) == {}


def test_duckdb_latest_rows_stream_in_batches(
    offline: DuckDBOfflineStore, user: EntitySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert list(offline.latest_rows(user)) == []  # no files yet
    stored_with_every_source(offline, user)
    monkeypatch.setattr(duckdb_store, "LATEST_BATCH_ROWS", 100)
    batches = list(offline.latest_rows(user))
    assert len(batches) > 10 and max(b.num_rows for b in batches) <= 100
    assert sum(b.num_rows for b in batches) == 1_204


@pytest.fixture
def bq(registry: Registry) -> BigQueryOfflineStore:
    return BigQueryOfflineStore(
        PROJECT, DATASET, registry, job_project="fstore-jobs", client=FakeBigQueryClient(PROJECT)
    )


@pytest.mark.parametrize("bounds", [{}, {"start": at(0), "end": at(DAY - 1)}, {"start": at(DAY - 1)}])
def test_bigquery_latest_rows_equal_duckdb(
    offline: DuckDBOfflineStore, bq: BigQueryOfflineStore, user: EntitySpec, bounds: dict[str, Any]
) -> None:
    stored_with_every_source(offline, user)
    raw = pa.concat_tables(  # every stored copy, the redelivery too: BigQuery's insertId dedup is best-effort
        [offline.history(user), rows(user, {"key": 4, "t": 10, "ingest": 90, "id": "dup", "age": 7})]
    )
    bq.write(user, raw)
    assert latest(bq, user, **bounds) == latest(offline, user, **bounds)


def test_bigquery_latest_rows_sql_and_a_missing_table(bq: BigQueryOfflineStore, item: EntitySpec) -> None:
    assert list(bq.latest_rows(item)) == []  # no table yet: no rows
    sql = bigquery_latest_sql("`p.d.item_v1`", "item_id", "event_time", ["event_time >= TIMESTAMP '2026-03-01'"])
    sqlglot.parse_one(sql, read="bigquery", error_level=sqlglot.ErrorLevel.RAISE)
    assert "WHERE event_time >= TIMESTAMP '2026-03-01'\n" in sql  # filtered before the scans' windows
    bq.write(item, rows(item, {"key": "a", "t": 0, "price": 1.0}, {"key": "a", "t": 5, "tags": ["x"]}))
    (row,) = latest(bq, item).values()
    assert (row["price"], row["tags"], row[KEY_ROWS]) == (None, ["x"], 2)


@pytest.mark.parametrize("key_kind", ["int64", "string"])
def test_rows_encode_to_the_message_paths_bytes(key_kind: str) -> None:
    """Every kind of field, set, unset, at its default and at the edges (-0.0, NaN, negative int32, the
    epoch): `encode_rows` over the offline rows gives what the message path (`latest_messages`) serializes."""
    spec = every_kind_spec(key_kind)
    messages = sample_messages(spec)
    edge: Any = spec.message_class(id=7 if key_kind == "int64" else "k7")
    edge.event_time.FromSeconds(0)
    edge.plain_float, edge.plain_double, edge.optional_float, edge.plain_int32 = -0.0, float("nan"), 0.0, -1
    edge.repeated_double.extend([-0.0, float("inf")])
    edge.repeated_string.extend(["", "x"])
    messages.append(edge)
    messages[-2].id = 99 if key_kind == "int64" else "k99"  # the empty message's key would be a proto default
    table = messages_to_table(spec, messages, list(range(len(messages))), [f"m{i}" for i in range(len(messages))])
    batch = table.combine_chunks().to_batches()[0]
    encoded = encode_rows(spec, batch).to_pylist()
    assert encode_rows(spec, batch.slice(2, 3)).to_pylist() == encoded[2:5]  # a slice: buffers at an offset
    assert encode_rows(spec, batch.slice(0, 0)).to_pylist() == []
    by_key = dict(zip(table.column("id").to_pylist(), encoded, strict=True))
    from_messages, _ = latest_messages(spec, table)
    assert len(from_messages) == len(messages)
    for message in from_messages:
        assert by_key[message.id] == message.SerializeToString(deterministic=True)
