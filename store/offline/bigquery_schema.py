"""A BigQuery table follows its entity version's additive changes: a new field becomes a new column.

An optional field added to an entity version is a compatible change (`fstore schema check` allows it), and a
running job picks up the regenerated descriptor set; BigQuery refuses an insert naming a column its table
lacks ("no such field"). So before the first insert of a new shape the store compares the table with
`bigquery_schema_fields(spec)` and appends the columns it lacks. Columns are only ever added, never changed or
dropped: a column of another type or mode, or a REQUIRED column the schema no longer has, raises SchemaError.

fstore's tables have no RECORD columns (the registry allows scalar fields and Timestamp only), so there are
no nested subfields to add. The dead-letter table goes through the same path; its columns are fstore's own
and change only with an fstore release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fstore.errors import SchemaError, StoreUnavailableError

# BigQuery answers with the legacy names of the types a table was created with.
_LEGACY_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}
# A read-compare-update round lost to other writers is retried this often before the write fails (retryably).
UPDATE_ATTEMPTS = 5


@dataclass(frozen=True)
class ColumnPlan:
    """How a table's columns compare with the expected ones."""

    missing: tuple[dict[str, Any], ...]  # expected columns the table lacks, as they are to be added
    conflicts: tuple[str, ...]  # one sentence per column that fstore cannot make fit

    @property
    def clean(self) -> bool:
        return not self.missing and not self.conflicts


def plan_columns(
    table_id: str, existing: Sequence[Mapping[str, Any]], expected: Sequence[Mapping[str, Any]]
) -> ColumnPlan:
    """Compare a table's columns (schema JSON, as `SchemaField.to_api_repr()`) with the expected ones.

    Missing columns can be added when they are NULLABLE or REPEATED (the modes BigQuery adds columns with).
    Conflicts: a column whose type, or repeatedness, differs; a column REQUIRED in the table but not in the
    schema (rows without a value would be refused); a REQUIRED expected column the table lacks. A column the
    schema does not know that is not REQUIRED (a newer writer's) is no conflict: inserts leave it NULL."""
    have = {c["name"]: c for c in existing}
    want = {f["name"]: f for f in expected}
    missing: list[dict[str, Any]] = []
    conflicts: list[str] = []
    for name, dropped in have.items():
        if name not in want and _mode(dropped) == "REQUIRED":
            conflicts.append(_conflict(table_id, name, _describe(dropped), "absent"))
    for name, field in want.items():
        column = have.get(name)
        if column is None:
            if _mode(field) == "REQUIRED":
                conflicts.append(_conflict(table_id, name, "absent", _describe(field)))
            else:
                missing.append(dict(field))
        elif not _fits(column, field):
            conflicts.append(_conflict(table_id, name, _describe(column), _describe(field)))
    return ColumnPlan(tuple(missing), tuple(conflicts))


def add_missing_columns(client: Any, table: Any, expected: Sequence[Mapping[str, Any]]) -> Any:
    """Make `table` (a `bigquery.Table` as last read) hold every expected column; returns the table as it then is.

    Raises SchemaError, changing nothing, on a conflict (`plan_columns`). Safe when writers race: an update
    lost to another writer's (412 on the table's etag; 400 when the schema sent lacks the other's column or
    repeats one; 409) reads the table again and adds what is still missing. StoreUnavailableError (which the
    ingest job retries) after UPDATE_ATTEMPTS lost rounds."""
    from google.api_core.exceptions import BadRequest, Conflict, PreconditionFailed
    from google.cloud import bigquery

    table_id = f"{table.project}.{table.dataset_id}.{table.table_id}"
    lost: Exception | None = None
    for _ in range(UPDATE_ATTEMPTS):
        plan = plan_columns(table_id, [c.to_api_repr() for c in table.schema], expected)
        if plan.conflicts:
            raise SchemaError("\n".join(plan.conflicts))
        if not plan.missing:
            return table
        table.schema = [*table.schema, *(bigquery.SchemaField.from_api_repr(f) for f in plan.missing)]
        try:
            return client.update_table(table, ["schema"])
        except (BadRequest, Conflict, PreconditionFailed) as exc:
            lost = exc
            table = client.get_table(table_id)
    raise StoreUnavailableError(
        f"BigQuery table {table_id}: could not add columns in {UPDATE_ATTEMPTS} attempts (last answer: {lost})"
    )


def _mode(column: Mapping[str, Any]) -> str:
    return str(column.get("mode") or "NULLABLE").upper()


def _type(column: Mapping[str, Any]) -> str:
    kind = str(column["type"]).upper()
    return _LEGACY_TYPES.get(kind, kind)


def _fits(column: Mapping[str, Any], field: Mapping[str, Any]) -> bool:
    """Rows of `field` can go into `column`: same type, both repeated or neither, and the column is not
    stricter (a NULLABLE column takes a REQUIRED field's values; a REQUIRED one refuses an unset optional)."""
    if _type(column) != _type(field) or (_mode(column) == "REPEATED") != (_mode(field) == "REPEATED"):
        return False
    return _mode(column) != "REQUIRED" or _mode(field) == "REQUIRED"


def _describe(column: Mapping[str, Any]) -> str:
    return f"{_type(column)} {_mode(column)}"


def _conflict(table_id: str, name: str, have: str, want: str) -> str:
    return (
        f"BigQuery table {table_id}: column {name!r} is {have} in the table but {want} in the entity schema; "
        "fstore only adds columns, it never changes or drops one. Run `fstore schema check`: a field whose "
        "type changes or that is removed needs a new entity version"
    )
