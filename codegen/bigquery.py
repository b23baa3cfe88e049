"""BigQuery table schemas: one JSON file per entity version at clients/bigquery/<entity>_v<N>.json.

The files are BigQuery's schema JSON (`bq mk --table dataset.user_v1 clients/bigquery/user_v1.json`).
`bigquery_schema_fields` is the one mapping from fstore field kinds to BigQuery columns; the offline
store's BigQuery backend imports it, so it stays free of google-cloud imports.
"""

from __future__ import annotations

import json
from typing import Any

from codegen.generate import Context, Outputs
from store.errors import SchemaError
from store.offline.base import INGEST_TIME, MESSAGE_ID
from store.registry import EntitySpec, FieldSpec

ROOT = "clients/bigquery"
OWNS = (ROOT,)

# BigQuery has no 32-bit or unsigned integers: uint64 does not fit INT64, so it is NUMERIC (exact).
BIGQUERY_TYPES: dict[str, str] = {
    "int32": "INT64",
    "int64": "INT64",
    "uint32": "INT64",
    "uint64": "NUMERIC",
    "float": "FLOAT64",
    "double": "FLOAT64",
    "bool": "BOOL",
    "string": "STRING",
    "bytes": "BYTES",
    "timestamp": "TIMESTAMP",
}


def bigquery_type(field: FieldSpec) -> str:
    try:
        return BIGQUERY_TYPES[field.kind]
    except KeyError:
        raise SchemaError(f"field {field.name!r} has kind {field.kind!r}, which BigQuery cannot hold") from None


def bigquery_schema_fields(spec: EntitySpec) -> list[dict[str, Any]]:
    """The offline table of one entity version as BigQuery schema JSON: key, event time, ingest time and
    message id (all REQUIRED), then every feature (REPEATED for repeated fields, else NULLABLE: an unset
    optional is NULL). Same columns, same order as `store.offline.schema.arrow_schema`."""
    columns = [
        _column(spec.key.name, bigquery_type(spec.key), "REQUIRED", spec.key.description or "Entity key."),
        _column(spec.event_time.name, "TIMESTAMP", "REQUIRED", spec.event_time.description or "Event time."),
        _column(INGEST_TIME, "TIMESTAMP", "REQUIRED", "When fstore ingested the event."),
        _column(MESSAGE_ID, "STRING", "REQUIRED", "Pub/Sub message id; each is stored once."),
    ]
    for f in spec.features:
        columns.append(_column(f.name, bigquery_type(f), "REPEATED" if f.repeated else "NULLABLE", f.description))
    return columns


def _column(name: str, type_: str, mode: str, description: str) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "mode": mode}
    if description:
        column["description"] = description
    return column


def generate(ctx: Context) -> Outputs:
    return {
        f"{ROOT}/{spec.table_name}.json": (json.dumps(bigquery_schema_fields(spec), indent=2) + "\n").encode()
        for spec in ctx.registry
    }
