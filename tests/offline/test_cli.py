"""`fstore export`, `fstore ledger`, `fstore compact` through the real Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fstore.cli import app
from fstore.schema.registry import Registry
from fstore.settings import get_settings
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.spine import SpineError

from .conftest import at, rows

runner = CliRunner()


@pytest.fixture
def configured(tmp_path: Path, registry: Registry) -> DuckDBOfflineStore:
    """The store the CLI opens (FSTORE_OFFLINE from the shared fixture), with a few rows in it."""
    store = DuckDBOfflineStore(Path(get_settings().offline.removeprefix("duckdb:///")), registry)
    user, item = registry.get("user", 1), registry.get("item", 1)
    store.write(user, rows(user, {"key": 1, "t": 0, "age": 30, "country": "DE"}, {"key": 2, "t": 3, "age": 41}))
    store.write(item, rows(item, {"key": "a", "t": 0, "price": 9.99}))
    pq.write_table(
        pa.table({"user_id": [1, 2, 3], "item_id": ["a", "a", "b"], "event_timestamp": [at(5)] * 3, "y": [1, 0, 1]}),
        tmp_path / "spine.parquet",
    )
    return store


def test_export_and_reproduce(configured: DuckDBOfflineStore, tmp_path: Path) -> None:
    out = tmp_path / "train.parquet"
    args = ["export", "--spine", str(tmp_path / "spine.parquet"), "--features", "user:age,user:country,item:price"]
    result = runner.invoke(app, [*args, "--out", str(out), "--version", "user=1"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 rows to" in result.output and "train.parquet.manifest.json" in result.output
    assert "user__age" in result.output and "9.99" in result.output  # the preview
    assert pq.read_table(out).column("user__country").to_pylist() == ["DE", None, None]

    configured.write(configured.registry.get("user", 1), rows(configured.registry.get("user", 1), {"key": 3, "t": 1}))
    again = tmp_path / "again.parquet"
    result = runner.invoke(app, ["export", "--reproduce", f"{out}.manifest.json", "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert "identical to the manifest's output: yes" in result.output
    assert again.read_bytes() == out.read_bytes()


def test_export_bad_input(configured: DuckDBOfflineStore, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["export", "--spine", str(tmp_path / "missing.parquet"), "--features", "user:age", "--out", "x.parquet"]
    )
    assert isinstance(result.exception, SpineError) and "does not exist" in str(result.exception)
    result = runner.invoke(app, ["export", "--out", "x.parquet"])
    assert "--spine and --features are required" in str(result.exception)


def test_ledger_and_compact(configured: DuckDBOfflineStore) -> None:
    result = runner.invoke(app, ["ledger"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["entity", "version", "rows"]
    assert lines[2].split()[:3] == ["user", "1", "2"]
    entries = json.loads(runner.invoke(app, ["ledger", "--json"]).output)
    assert entries[1] == {
        "entity": "user",
        "version": 1,
        "rows": 2,
        "first_event_time": "2026-03-01T00:00:00Z",
        "last_event_time": "2026-03-01T00:00:03Z",
        "last_ingest_time": "2026-03-01T00:00:04Z",
        "quarantined_files": 0,
    }
    result = runner.invoke(app, ["compact", "--entity", "user"])  # the writer is still open: its journal stays
    assert result.exit_code == 0 and "user/v1: 0 day partition(s) compacted, 0 file(s) merged" in result.output
    configured.close()  # the writer is done: its journal becomes a segment
    result = runner.invoke(app, ["compact", "--entity", "user"])
    assert result.exit_code == 0 and "user/v1: 1 day partition(s) compacted, 1 file(s) merged" in result.output
