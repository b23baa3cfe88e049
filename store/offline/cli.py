"""`fstore export` (point-in-time training sets), `fstore ledger` (what was ingested when), `fstore compact`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

PREVIEW_ROWS = 5


def export(
    out: Path = typer.Option(..., "--out", help="Parquet file to write; the manifest goes beside it."),
    spine: Path | None = typer.Option(
        None, "--spine", help="Parquet spine: a timestamp column, one column per entity key, labels."
    ),
    features: str | None = typer.Option(
        None, "--features", help="Comma-separated entity:feature (or entity:*), e.g. user:age,item:price."
    ),
    timestamp_column: str | None = typer.Option(
        None, "--timestamp-column", help="The spine's timestamp column [default: event_timestamp]."
    ),
    version: list[str] = typer.Option([], "--version", help="Entity version to read, e.g. user=1 (repeatable)."),
    column_format: str | None = typer.Option(
        None,
        "--column-format",
        help="Output column names from {entity}, {feature}, {version} [default: {entity}__{feature}].",
    ),
    reproduce: Path | None = typer.Option(
        None, "--reproduce", help="A manifest.json: rebuild that export byte for byte (same rows, same options)."
    ),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", help="DuckDB memory limit, e.g. 2GB; beyond it the join spills to disk."
    ),
) -> None:
    """Join the spine with feature values as they were known at each row's timestamp; write parquet."""
    from fstore.store import FeatureStore
    from fstore.store.offline.export import ExportError, manifest_path, parse_versions

    if reproduce is None and (spine is None or not features):
        raise ExportError("--spine and --features are required (unless --reproduce is given)")
    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    with FeatureStore.from_config() as fs:
        manifest = fs.export_training_set(
            spine,
            names,
            out,
            timestamp_column=timestamp_column,
            versions=parse_versions(version) or None,
            column_format=column_format,
            reproduce=reproduce,
            memory_limit=memory_limit,
        )
    typer.echo(f"wrote {manifest['output']['rows']:,} rows to {out}")
    typer.echo(f"manifest: {manifest_path(out)}")
    if reproduce is not None:
        same = manifest["output"]["sha256"] == json.loads(Path(reproduce).read_text())["output"]["sha256"]
        typer.echo("identical to the manifest's output: " + ("yes" if same else "NO"))
    _preview(out)


def ledger(json_output: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """Per entity version: rows stored, first/last event time, last ingest time."""
    from fstore.store import FeatureStore

    with FeatureStore.from_config() as fs:
        entries = fs.offline.ledger()
    if json_output:
        typer.echo(
            json.dumps(
                [
                    {
                        "entity": e.entity,
                        "version": e.version,
                        "rows": e.rows,
                        "first_event_time": _time(e.first_event_time),
                        "last_event_time": _time(e.last_event_time),
                        "last_ingest_time": _time(e.last_ingest_time),
                        "quarantined_files": e.quarantined_files,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    if not entries:
        typer.echo("the offline store is empty")
        return
    header = ["entity", "version", "rows", "first event time", "last event time", "last ingest time"]
    rows = [
        [
            e.entity,
            str(e.version),
            f"{e.rows:,}",
            _time(e.first_event_time),
            _time(e.last_event_time),
            _time(e.last_ingest_time),
        ]
        for e in entries
    ]
    _print_table(header, rows)
    for e in entries:
        if e.quarantined_files:
            typer.secho(
                f"warning: {e.entity}/v{e.version}: {e.quarantined_files} damaged file(s) kept under the offline "
                "store's _quarantine/ (their verified rows are counted above; the log names what was skipped)",
                fg=typer.colors.YELLOW,
                err=True,
            )


def compact(
    entity: str | None = typer.Option(None, "--entity", help="Only this entity (default: every entity version)."),
) -> None:
    """Merge the embedded store's segments, and the journals of writers that are done, into one file per day."""
    from fstore.errors import SettingsError
    from fstore.store import FeatureStore

    with FeatureStore.from_config() as fs:
        store = fs.offline.compaction
        if store is None:
            raise SettingsError("compact applies to the embedded (duckdb://) offline store; BigQuery needs none")
        specs = [s for s in fs.registry if entity is None or s.name == entity]
        if entity is not None and not specs:
            fs.spec(entity)  # raises UnknownEntityError naming the known ones
        for spec in specs:
            result = store.compact(spec)
            typer.echo(
                f"{spec.ref}: {result.partitions} day partition(s) compacted, {result.files_merged} file(s) merged"
            )


def _preview(out: Path) -> None:
    import pyarrow.parquet as pq

    batch = next(pq.ParquetFile(out).iter_batches(batch_size=PREVIEW_ROWS), None)
    if batch is None or batch.num_rows == 0:
        return
    header = batch.schema.names
    _print_table(header, [[_cell(v) for v in row.values()] for row in batch.to_pylist()])


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _time(value: datetime | None) -> str:
    return "" if value is None else value.isoformat().replace("+00:00", "Z")


def _cell(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return _time(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        shown = ", ".join(_cell(v) for v in value[:3])
        return f"[{shown}{', …' if len(value) > 3 else ''}]"
    text = str(value)
    return text if len(text) <= 24 else text[:23] + "…"


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("ledger")(ledger)
    app.command("compact")(compact)
