"""The training-set export's contract: its options, and the manifest written beside every export.

The manifest is JSON on disk (`<out>.manifest.json`); these types say what it holds, and `--reproduce`
reads it back. A manifest records what an export read (entity versions, fingerprints, high-water marks,
the spine's digest), so the same export can be rebuilt byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict


class ManifestEntity(TypedDict):
    entity: str
    version: int
    table: str
    fingerprint: str
    ttl_seconds: int
    key: str
    features: list[str]
    # name -> type (`double`, `repeated float`, `timestamp`…) of the key, the event time and every feature read:
    # what `--reproduce` checks when the schema gained fields since (absent in manifests before 2026-12-02)
    columns: NotRequired[dict[str, str]]
    high_water_mark_micros: int | None  # max ingest time read; None: the table was empty
    high_water_mark: str | None


class ManifestAggregation(TypedDict):
    family: str
    entity: str  # the source entity version its events come from
    version: int
    table: str
    group_by: str
    allowed_lateness_seconds: int
    # name -> {function, field, window, tile_seconds}: the definition the values were computed with
    features: dict[str, dict[str, str | int | None]]
    high_water_mark_micros: int | None
    high_water_mark: str | None


class ManifestSpine(TypedDict):
    path: str | None  # None: an in-memory table
    rows: int
    sha256: str


class ColumnStats(TypedDict):
    nulls: int


class ManifestOutput(TypedDict):
    path: str
    sha256: str
    rows: int
    columns: dict[str, ColumnStats]


class Manifest(TypedDict):
    format: int
    fstore_version: str
    created_at: str
    backend: str
    features: list[str]
    timestamp_column: str
    column_format: str
    entities: list[ManifestEntity]
    aggregations: NotRequired[list[ManifestAggregation]]
    spine: ManifestSpine
    sql: str
    output: ManifestOutput


@dataclass(frozen=True)
class ExportOptions:
    """How to export; every field has a default.

    timestamp_column: the spine's timestamp column (default `event_timestamp`).
    versions: entity -> version to read (default: each entity's default version, Registry.get).
    column_format: output column names, from {entity}, {feature}, {version} (default `{entity}__{feature}`).
    reproduce: a manifest (or its path): re-run it, with its features, versions and high-water marks.
    memory_limit / threads: DuckDB's limits for this export (default: the store's); beyond the memory limit
        DuckDB spills to the store's temp directory. BigQuery runs the join itself and ignores both.
    progress: show a progress bar, only when stderr is a terminal.
    """

    timestamp_column: str | None = None
    versions: Mapping[str, int] | None = None
    column_format: str | None = None
    reproduce: Manifest | str | Path | None = None
    memory_limit: str | None = None
    threads: int | None = None
    progress: bool = True
