"""The offline table of an entity version: its system columns and its types in Arrow and BigQuery.

The one place that maps fstore field kinds to storage types. Ingest and both offline backends use
`arrow_schema`; the BigQuery backend creates its tables with `bigquery_schema_fields`, and codegen
writes the same fields to clients/bigquery/. Free of google-cloud imports.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa

from fstore.errors import SchemaError
from fstore.schema.registry import EntitySpec, FieldSpec

# Columns every offline table has besides the entity's own fields (key, event time, features).
INGEST_TIME = "ingest_time"
MESSAGE_ID = "message_id"

TIMESTAMP = pa.timestamp("us", tz="UTC")

_ARROW_KINDS: dict[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "timestamp": TIMESTAMP,
}


def arrow_kind(kind: str) -> pa.DataType:
    """The Arrow type of one scalar kind (`int64`, `double`, ...)."""
    return _ARROW_KINDS[kind]


def arrow_type(field: FieldSpec) -> pa.DataType:
    try:
        scalar = _ARROW_KINDS[field.kind]
    except KeyError:
        raise SchemaError(f"field {field.name!r} has kind {field.kind!r}, which offline tables cannot hold") from None
    return pa.list_(scalar) if field.repeated else scalar


@functools.lru_cache(maxsize=256)
def arrow_schema(spec: EntitySpec) -> pa.Schema:
    """key, event_time, ingest_time, message_id (all not null), then every feature (nullable).

    Cached (a Schema is immutable): a lookup is cheaper than building it, and ingest asks for it twice per
    bundle (`messages_to_table`, then the offline store's `conform`)."""
    return pa.schema(
        [
            pa.field(spec.key.name, arrow_type(spec.key), nullable=False),
            pa.field(spec.event_time.name, TIMESTAMP, nullable=False),
            pa.field(INGEST_TIME, TIMESTAMP, nullable=False),
            pa.field(MESSAGE_ID, pa.string(), nullable=False),
            *(pa.field(f.name, arrow_type(f)) for f in spec.features),
        ]
    )


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
