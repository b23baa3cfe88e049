"""Training-set export, the backend-independent half: which features, checked spine, manifest.

A backend (DuckDB, BigQuery) calls `plan_export` (all checks happen here, before any join work), runs the
join its own way, then `finish_export` writes the reproducibility manifest beside the parquet.

Reproducibility: every export reads only rows with `ingest_time <= high-water mark` (the max ingest time
per table when the export started), so the manifest describes exactly what was read, and
`--reproduce manifest.json` re-runs the same join over the same rows, whatever was ingested since.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import duckdb

import fstore
from fstore.errors import FstoreError
from fstore.schema.aggregations import AggregationSpec, FamilySpec
from fstore.schema.registry import EntitySpec, FieldSpec, Registry
from fstore.store.events import utc_from_micros
from fstore.store.offline.manifest import ExportOptions, Manifest, ManifestEntity, ManifestOutput
from fstore.store.offline.spine import REMOTE, ROW_COLUMN, Spine, load_spine

DEFAULT_TIMESTAMP_COLUMN = "event_timestamp"
DEFAULT_COLUMN_FORMAT = "{entity}__{feature}"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1


class ExportError(FstoreError, ValueError):
    """An export request that cannot be honoured: a malformed feature reference, a bad manifest, a clash
    of output column names. The message names the offending value."""


@dataclass(frozen=True)
class EntityJoin:
    """One entity version joined to the spine: its features, their output columns, the rows it may read."""

    spec: EntitySpec
    features: tuple[FieldSpec, ...]
    columns: tuple[str, ...]
    # Max ingest time (µs) of the table when the export started; None: the table was empty (reads nothing).
    high_water_mark: int | None


@dataclass(frozen=True)
class AggregationJoin:
    """One aggregation family computed for the spine (docs/aggregations.md): its features, their output
    columns, and the high-water mark of its source entity's table."""

    family: FamilySpec
    features: tuple[AggregationSpec, ...]
    columns: tuple[str, ...]
    high_water_mark: int | None


@dataclass(frozen=True)
class ExportPlan:
    spine: Spine
    joins: tuple[EntityJoin, ...]
    feature_refs: tuple[str, ...]
    column_format: str
    aggregations: tuple[AggregationJoin, ...] = ()

    @property
    def timestamp_column(self) -> str:
        return self.spine.timestamp_column


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + MANIFEST_SUFFIX)


def parse_versions(values: Sequence[str]) -> dict[str, int]:
    """`["user=1", "item=2"]` (the CLI's repeated --version) as {"user": 1, "item": 2}."""
    versions: dict[str, int] = {}
    for value in values:
        entity, sep, number = value.partition("=")
        if not sep or not entity or not number.isdigit():
            raise ExportError(f"--version {value!r} must look like entity=N, e.g. user=1")
        versions[entity.strip()] = int(number)
    return versions


def resolve_features(
    registry: Registry, features: Sequence[str], versions: Mapping[str, int] | None
) -> list[tuple[EntitySpec, tuple[FieldSpec, ...]]]:
    """`user:age`, `user:*`, ... grouped by entity in order of first mention; unknown names raise."""
    if isinstance(features, str):
        features = [f for f in features.split(",") if f.strip()]
    if not features:
        raise ExportError("no features requested; name some, e.g. user:age or user:*")
    chosen: dict[str, list[FieldSpec]] = {}
    specs: dict[str, EntitySpec] = {}
    for ref in features:
        entity, sep, name = ref.strip().partition(":")
        if not sep or not entity or not name:
            raise ExportError(f"feature {ref!r} must look like entity:feature or entity:*")
        if registry.is_family(entity):
            continue  # resolve_aggregations
        if entity not in specs:
            specs[entity] = registry.get(entity, (versions or {}).get(entity))
            chosen[entity] = []
        spec = specs[entity]
        for f in spec.features if name == "*" else (spec.feature(name),):
            if f not in chosen[entity]:
                chosen[entity].append(f)
    unused = set(versions or {}) - set(specs)
    if unused:
        raise ExportError(f"--version given for {', '.join(sorted(unused))}, but no feature of it is requested")
    return [(specs[e], tuple(fs)) for e, fs in chosen.items()]


def resolve_aggregations(
    registry: Registry, features: Sequence[str]
) -> list[tuple[FamilySpec, tuple[AggregationSpec, ...]]]:
    """`user_orders:amount_sum_7d`, `user_orders:*`: the features of aggregation families, grouped by family
    in order of first mention."""
    chosen: dict[str, list[AggregationSpec]] = {}
    for ref in features:
        name, _, feature = ref.strip().partition(":")
        if not registry.is_family(name):
            continue
        family = registry.family(name)
        picked = chosen.setdefault(name, [])
        for f in family.features if feature == "*" else (family.feature(feature),):
            if f not in picked:
                picked.append(f)
    return [(registry.family(n), tuple(fs)) for n, fs in chosen.items()]


def plan_export(
    registry: Registry,
    spine: Any,
    features: Sequence[str] | None,
    options: ExportOptions,
    high_water_mark: Callable[[EntitySpec], int | None],
) -> ExportPlan:
    """Check everything and fix what will be read. `options.reproduce` (a manifest or its path) replaces the
    features, versions, timestamp column, column format and high-water marks with the manifest's."""
    reproduce, versions = options.reproduce, options.versions
    timestamp_column, column_format = options.timestamp_column, options.column_format
    manifest = read_manifest(reproduce) if isinstance(reproduce, (str, Path)) else reproduce
    marks: dict[str, int | None] = {}
    if manifest is not None:
        features, versions, timestamp_column, column_format, marks = _from_manifest(manifest, features, versions)
        if spine is None:
            spine = manifest["spine"].get("path")
            if spine is None:
                raise ExportError("the manifest's spine was an in-memory table; pass the same spine again")
    if spine is None:
        raise ExportError("no spine given")
    if features is None:
        raise ExportError("no features requested; name some, e.g. user:age or user:*")
    if isinstance(features, str):
        features = [f for f in features.split(",") if f.strip()]
    resolved = resolve_features(registry, features, versions)  # every entity feature; raises when none at all
    families = resolve_aggregations(registry, features)
    column_format = column_format or DEFAULT_COLUMN_FORMAT
    keyed = [spec for spec, _ in resolved] + [family.key_spec for family, _ in families]
    loaded = load_spine(spine, timestamp_column or DEFAULT_TIMESTAMP_COLUMN, keyed)
    if manifest is not None:
        _check_same_inputs(manifest, loaded, resolved)
        _check_same_definitions(manifest, families)
    taken = set(loaded.columns)
    joins = []
    for spec, fields in resolved:
        columns = []
        for f in fields:
            name = _column(column_format, spec.name, f.name, spec.version)
            if name in taken or name == ROW_COLUMN:
                raise ExportError(f"output column {name!r} (of {spec.name}:{f.name}) clashes with another column")
            taken.add(name)
            columns.append(name)
        mark = marks[spec.table_name] if manifest is not None else high_water_mark(spec)
        joins.append(EntityJoin(spec, fields, tuple(columns), mark))
    aggregations = []
    for family, chosen in families:
        columns = []
        for feature in chosen:
            name = _column(column_format, family.name, feature.name, family.source.version)
            if name in taken or name == ROW_COLUMN:
                raise ExportError(
                    f"output column {name!r} (of {family.name}:{feature.name}) clashes with another column"
                )
            taken.add(name)
            columns.append(name)
        source = family.source
        mark = marks[source.table_name] if manifest is not None else high_water_mark(source)
        aggregations.append(AggregationJoin(family, chosen, tuple(columns), mark))
    refs = tuple(f"{spec.name}:{f.name}" for spec, fields in resolved for f in fields)
    refs += tuple(f"{family.name}:{f.name}" for family, chosen in families for f in chosen)
    return ExportPlan(loaded, tuple(joins), refs, column_format, tuple(aggregations))


def _column(column_format: str, entity: str, feature: str, version: int) -> str:
    try:
        return column_format.format(entity=entity, feature=feature, version=version)
    except (KeyError, IndexError, ValueError) as exc:
        raise ExportError(
            f"column format {column_format!r} is invalid ({exc}); use {{entity}}, {{feature}}, {{version}}"
        ) from None


def check_output(out: Path, plan: ExportPlan) -> None:
    """Where the training set goes: a local file path, not a directory, and not the spine itself."""
    if REMOTE.match(str(out)):
        raise ExportError(f"--out {str(out)!r}: remote paths are not supported yet; write locally, then copy it")
    if out.is_dir():
        raise ExportError(
            f"--out {str(out)!r} is a directory; name the parquet file to write, e.g. {out / 'train.parquet'}"
        )
    if plan.spine.source is not None and out.resolve() == Path(plan.spine.source).resolve():
        raise ExportError(f"--out {str(out)!r} is the spine itself: it would be overwritten; write elsewhere")


def finish_export(
    plan: ExportPlan, out: Path, sql: str, backend: str, counted: tuple[int, dict[str, int]] | None = None
) -> Manifest:
    """Count rows and nulls of the written parquet (unless the writer `counted` them: rows, nulls per
    column), write the manifest beside it, return the manifest."""
    manifest: Manifest = {
        "format": MANIFEST_FORMAT,
        "fstore_version": fstore.__version__,
        "created_at": datetime.now(UTC).isoformat(),
        "backend": backend,
        "features": list(plan.feature_refs),
        "timestamp_column": plan.timestamp_column,
        "column_format": plan.column_format,
        "entities": [
            {
                "entity": j.spec.name,
                "version": j.spec.version,
                "table": j.spec.table_name,
                "fingerprint": j.spec.fingerprint,
                "ttl_seconds": j.spec.ttl_seconds,
                "key": j.spec.key.name,
                "features": [f.name for f in j.features],
                "columns": {f.name: f.type_name for f in (j.spec.key, j.spec.event_time, *j.features)},
                "high_water_mark_micros": j.high_water_mark,
                "high_water_mark": None
                if j.high_water_mark is None
                else utc_from_micros(j.high_water_mark).isoformat(),
            }
            for j in plan.joins
        ],
        "aggregations": [
            {
                "family": a.family.name,
                "entity": a.family.source.name,
                "version": a.family.source.version,
                "table": a.family.source.table_name,
                "group_by": a.family.group_by.name,
                "allowed_lateness_seconds": a.family.allowed_lateness // 1_000_000,
                "features": {f.name: definition(f) for f in a.features},
                "high_water_mark_micros": a.high_water_mark,
                "high_water_mark": None
                if a.high_water_mark is None
                else utc_from_micros(a.high_water_mark).isoformat(),
            }
            for a in plan.aggregations
        ],
        "spine": {"path": plan.spine.source, "rows": plan.spine.rows, "sha256": plan.spine.sha256},
        "sql": sql,
        "output": output_stats(
            out,
            [c for j in plan.joins for c in j.columns] + [c for a in plan.aggregations for c in a.columns],
            counted,
        ),
    }
    path = manifest_path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"manifest {str(path)!r} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"manifest {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{str(path)!r} is not an fstore export manifest (format {MANIFEST_FORMAT})")
    return cast(Manifest, manifest)


def output_stats(
    out: Path, feature_columns: Sequence[str], counted: tuple[int, dict[str, int]] | None = None
) -> ManifestOutput:
    """Path, digest, row count and per-feature null counts: as `counted` when it has every column, else
    computed by DuckDB from the parquet (not loaded in memory)."""
    if counted is not None and all(c in counted[1] for c in feature_columns):
        rows, nulls = counted
    else:
        con = duckdb.connect()
        try:
            counts = ", ".join(f"count({quote(c)})" for c in feature_columns)
            row = con.execute(
                f"SELECT count(*){', ' + counts if counts else ''} FROM read_parquet(?)", [str(out)]
            ).fetchone()
        finally:
            con.close()
        assert row is not None
        rows = int(row[0])
        nulls = {c: rows - int(n) for c, n in zip(feature_columns, row[1:], strict=True)}
    return {
        "path": str(out),
        "sha256": file_sha256(out),
        "rows": rows,
        "columns": {c: {"nulls": nulls[c]} for c in feature_columns},
    }


_QUOTED_NAME = re.compile(r'"((?:[^"]|"")*)"')


def copy_counts(returned: Sequence[tuple[Any, ...]]) -> tuple[int, dict[str, int]] | None:
    """Rows and top-level null counts per column from a DuckDB `COPY ... (RETURN_STATS)` result (one row per
    file written; its statistics map is keyed by quoted column names), or None when it says nothing."""
    if len(returned) != 1:
        return None
    rows, statistics = int(returned[0][1]), returned[0][4] or {}
    nulls = {}
    for name, stats in statistics.items():
        top_level = _QUOTED_NAME.fullmatch(name)  # not a nested leaf such as "embedding"."element"
        if top_level is not None and "null_count" in stats:
            nulls[top_level[1].replace('""', '"')] = int(stats["null_count"])
    return rows, nulls


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def quote(identifier: str) -> str:
    """A SQL identifier in double quotes (DuckDB); the name itself is kept exactly."""
    return '"' + identifier.replace('"', '""') + '"'


def definition(feature: AggregationSpec) -> dict[str, str | int | None]:
    """How an aggregation feature is computed, as the manifest records it."""
    return {
        "function": feature.function,
        "field": feature.field.name if feature.field else None,
        "window": feature.window_text,
        "tile_seconds": None if feature.tile is None else feature.tile // 1_000_000,
    }


def _from_manifest(
    manifest: Manifest, features: Sequence[str] | None, versions: Mapping[str, int] | None
) -> tuple[list[str], dict[str, int], str, str, dict[str, int | None]]:
    try:
        entities = manifest["entities"]
        refs = list(manifest["features"])
        pinned = {e["entity"]: int(e["version"]) for e in entities}
        marks = {e["table"]: e["high_water_mark_micros"] for e in entities}
        marks |= {a["table"]: a["high_water_mark_micros"] for a in manifest.get("aggregations", [])}
        timestamp_column, column_format = manifest["timestamp_column"], manifest["column_format"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"the manifest is missing or has a malformed {exc}") from None
    if features is not None and list(features) != refs:
        raise ExportError("--reproduce takes the features from the manifest; do not pass different ones")
    if versions and dict(versions) != {k: v for k, v in pinned.items() if k in versions}:
        raise ExportError("--reproduce takes the entity versions from the manifest; do not pass different ones")
    return refs, pinned, timestamp_column, column_format, marks


def _check_same_inputs(
    manifest: Manifest, spine: Spine, resolved: list[tuple[EntitySpec, tuple[FieldSpec, ...]]]
) -> None:
    if spine.sha256 != manifest["spine"]["sha256"] or spine.rows != manifest["spine"]["rows"]:
        raise ExportError(
            f"the spine differs from the one in the manifest (sha256 {spine.sha256[:12]}… ≠ "
            f"{manifest['spine']['sha256'][:12]}…); reproduce needs the same spine"
        )
    recorded = {e["entity"]: e for e in manifest["entities"]}
    for spec, fields in resolved:
        _check_same_schema(spec, fields, recorded[spec.name])


def _check_same_definitions(manifest: Manifest, families: list[tuple[FamilySpec, tuple[AggregationSpec, ...]]]) -> None:
    """An aggregation is rebuilt only with the definition it was computed with."""
    recorded = {a["family"]: a for a in manifest.get("aggregations", [])}
    for family, features in families:
        was = recorded.get(family.name)
        now = {f.name: definition(f) for f in features}
        lateness = family.allowed_lateness // 1_000_000
        if was is None or was["features"] != now or was["allowed_lateness_seconds"] != lateness:
            raise ExportError(
                f"aggregation family {family.name}'s definition changed since the manifest was written "
                f"(recorded {was['features'] if was else None}, now {now}), so the export cannot be reproduced"
            )


def _check_same_schema(spec: EntitySpec, fields: tuple[FieldSpec, ...], recorded: ManifestEntity) -> None:
    """The export can be rebuilt exactly if the entity version has the fingerprint the manifest recorded, or a
    compatible descendant of it: fingerprints.json lists the recorded one among this version's earlier
    fingerprints (codegen records one only when the schema check passed, so fields were only added), and
    every column the export read still has the type it had then."""
    fingerprint = recorded.get("fingerprint")
    if fingerprint == spec.fingerprint:
        return
    if fingerprint not in spec.earlier_fingerprints:
        raise ExportError(
            f"entity {spec.ref} now has schema fingerprint {spec.fingerprint}, the manifest recorded "
            f"{fingerprint}, which is not an earlier compatible shape of {spec.ref} (fingerprints.json): the "
            "schema changed incompatibly, so the export cannot be reproduced exactly"
        )
    now = {f.name: f.type_name for f in (spec.key, spec.event_time, *fields)}
    changed = [
        f"{name} was {was}, is {now.get(name, 'gone')}"
        for name, was in recorded.get("columns", {}).items()
        if now.get(name) != was
    ]
    if changed:
        raise ExportError(
            f"entity {spec.ref}: columns the manifest read changed ({'; '.join(changed)}), so the export cannot "
            "be reproduced exactly"
        )
