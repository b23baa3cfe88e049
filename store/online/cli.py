"""`fstore online get`: read the latest feature values of some entity ids."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import typer

from fstore.store.ids import check_ids
from fstore.store.jsonrows import dumps_online_response, float_field_names

online_app = typer.Typer(help="Read the online store (latest values per entity id, by event time).")


@online_app.command("get")
def get(
    entity: str = typer.Argument(..., help="Entity name, e.g. user."),
    ids: list[str] = typer.Argument(..., help="Entity ids (decimal for int64 keys)."),
    features: str | None = typer.Option(None, help="Comma-separated feature names; default: all."),
    version: int | None = typer.Option(None, help="Entity version; default: the entity's default version."),
    json_output: bool = typer.Option(False, "--json", help='Print {"entity", "version", "rows"}, as the API does.'),
) -> None:
    """Print the rows of ENTITY for IDS (a row is missing when unknown or expired)."""
    from fstore.store import FeatureStore

    with FeatureStore.from_config() as fs:
        names = [f.strip() for f in features.split(",") if f.strip()] if features else None
        if fs.registry.is_family(entity):
            _print_family(fs, entity, ids, names, json_output)
            return
        spec = fs.spec(entity, version)
        rows = fs.get_online(entity, check_ids(spec, ids, from_text=True), names, spec.version)
    if json_output:
        floats = float_field_names(spec.select(names))
        sys.stdout.buffer.write(dumps_online_response(spec.name, spec.version, rows, floats) + b"\n")
        return
    columns = [spec.key.name, spec.event_time.name, *(f.name for f in spec.select(names))]
    table = [
        [_cell(row.get(c)) if row else ("(missing)" if c == spec.key.name else "") for c in columns] for row in rows
    ]
    for row, entity_id in zip(table, ids, strict=True):
        if row[0] == "(missing)":
            row[0] = f"{entity_id} (missing)"
    _print_table(columns, table)


def _print_family(fs: Any, name: str, ids: list[str], names: list[str] | None, json_output: bool) -> None:
    """An aggregation family: every key has a row, its features now (docs/aggregations.md)."""
    family = fs.registry.family(name)
    chosen = family.select(names)
    rows = fs.get_online(name, check_ids(family.key_spec, ids, from_text=True), [f.name for f in chosen])
    if json_output:
        floats = [f.name for f in chosen if f.result_kind in ("double", "float")]
        sys.stdout.buffer.write(dumps_online_response(name, family.source.version, rows, floats) + b"\n")
        return
    columns = [family.group_by.name, *(f.name for f in chosen)]
    _print_table(columns, [[_cell(row.get(c)) for c in columns] for row in rows])


def _print_table(columns: list[str], table: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list):
        shown = ", ".join(_cell(v) if not isinstance(v, float) else f"{v:.4g}" for v in value[:4])
        return f"[{shown}{', …' if len(value) > 4 else ''}]"
    return str(value)


def register(app: typer.Typer) -> None:
    app.add_typer(online_app, name="online")
