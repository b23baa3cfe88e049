"""Offline-store fixtures: a DuckDB store in a temp dir, and hand-made rows with readable timestamps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import arrow_schema
from fstore.store.offline.duckdb import DuckDBOfflineStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 + seconds: tests speak in small offsets, not datetimes."""
    return T0 + timedelta(seconds=seconds)


def rows(spec: EntitySpec, *records: dict[str, Any]) -> pa.Table:
    """Offline rows from dicts: `key`, `t` (event seconds after T0), `ingest` (seconds, default t+1),
    `id` (message id, default generated), and feature values by name."""
    out = []
    for n, r in enumerate(records):
        row: dict[str, Any] = {
            spec.key.name: r["key"],
            spec.event_time.name: at(r["t"]),
            "ingest_time": at(r.get("ingest", r["t"] + 1)),
            "message_id": r.get("id", f"m{r['key']}-{r['t']}-{n}"),
        }
        for f in spec.features:
            row[f.name] = r.get(f.name, [] if f.repeated else None)
        out.append(row)
    return pa.Table.from_pylist(out, schema=arrow_schema(spec))


@pytest.fixture
def user(registry: Registry) -> EntitySpec:
    return registry.get("user", 1)


@pytest.fixture
def item(registry: Registry) -> EntitySpec:
    return registry.get("item", 1)


@pytest.fixture
def offline(tmp_path: Path, registry: Registry) -> Iterator[DuckDBOfflineStore]:
    store = DuckDBOfflineStore(tmp_path / "offline", registry, threads=2)
    yield store
    store.close()
