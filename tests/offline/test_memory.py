"""The default DuckDB memory limit, and exports that spill under a small one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fstore.schema.registry import Registry
from fstore.schema.tables import arrow_schema
from fstore.store.offline import duckdb as duckdb_store
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.manifest import ExportOptions
from fstore.store.offline.memory import MINIMUM_BYTES, available_memory_bytes, default_memory_limit

from .conftest import at


def test_the_default_is_a_quarter_of_the_memory_and_at_least_1_gb() -> None:
    limit = int(default_memory_limit().removesuffix("MB")) << 20
    assert limit == max(MINIMUM_BYTES, available_memory_bytes() // 4) >> 20 << 20
    assert available_memory_bytes() <= 1 << 50


def test_a_store_without_a_limit_uses_the_default(tmp_path: Path, registry: Registry) -> None:
    store = DuckDBOfflineStore(tmp_path / "offline", registry)
    with store._connect() as con:
        (setting,) = con.execute("SELECT current_setting('memory_limit')").fetchone()
    expected = duckdb.connect().execute(f"SET memory_limit='{default_memory_limit()}'")
    (wanted,) = expected.execute("SELECT current_setting('memory_limit')").fetchone()
    assert setting == wanted


def test_an_export_that_spills_gives_the_same_rows(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200,000 wide rows (16-float embeddings) under a 30 MB limit: DuckDB spills (its profile says how much),
    and the answer is the one the default limit gives. 100,000 spine rows: since the match over fresh segments
    skips the deduplication windows, 50,000 fit in 30 MB without spilling."""
    spilled = []
    run = duckdb_store.execute_with_progress

    def profiled(con: duckdb.DuckDBPyConnection, sql: str, rows: int, progress: bool) -> list[tuple[Any, ...]]:
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"SET profiling_output = '{tmp_path / 'profile.json'}'")
        result = run(con, sql, rows, progress)
        con.execute("PRAGMA disable_profiling")
        spilled.append(json.loads((tmp_path / "profile.json").read_text())["system"]["total_bytes_spilled"])
        return result

    monkeypatch.setattr(duckdb_store, "execute_with_progress", profiled)
    user = registry.get("user", 1)
    store = DuckDBOfflineStore(tmp_path / "offline", registry)
    n = 200_000
    keys = pa.array([i % 20_000 for i in range(n)], pa.int64())
    times = pa.array([at(i * 7 % 86_400) for i in range(n)], pa.timestamp("us", tz="UTC"))
    history = pa.table({
        "user_id": keys, "event_time": times, "ingest_time": times,
        "message_id": pa.array([f"m{i}" for i in range(n)]), "age": pa.array([i % 90 for i in range(n)], pa.int32()),
        "embedding": pa.array([[float(i % 97)] * 16 for i in range(n)], pa.list_(pa.float32())),
    })  # fmt: skip
    schema = arrow_schema(user)
    columns = [history.column(f.name) if f.name in history.column_names else pa.nulls(n, f.type) for f in schema]
    store.write(user, pa.Table.from_arrays(columns, schema=schema))
    spine = pa.table({"user_id": keys.slice(0, 100_000), "event_timestamp": times.slice(100_000, 100_000)})
    small, default = tmp_path / "small.parquet", tmp_path / "default.parquet"
    features = ["user:age", "user:embedding"]
    manifest = store.export_training_set(spine, features, small, ExportOptions(memory_limit="30MB"))
    store.export_training_set(spine, features, default)
    assert manifest["output"]["rows"] == 100_000
    assert pq.read_table(small) == pq.read_table(default)
    assert spilled[0] > 0 and spilled[1] == 0
    assert manifest["output"]["columns"]["user__age"]["nulls"] < 100_000
