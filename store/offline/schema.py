"""Decoded messages (and dead letters) as Arrow tables of the offline schema.

Ingest builds its batches with `messages_to_table`; both backends store exactly
`fstore.schema.tables.arrow_schema(spec)`.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf.message import Message

from fstore.schema.attributes import ATTR_ENTITY, ATTR_VERSION
from fstore.schema.registry import EntitySpec, FieldSpec
from fstore.schema.tables import INGEST_TIME, MESSAGE_ID, TIMESTAMP, arrow_schema, arrow_type
from fstore.store.events import DeadLetter, event_times_micros, field_reader

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field(MESSAGE_ID, pa.string(), nullable=False),
        pa.field("publish_time", TIMESTAMP),  # null when the source gave none (e.g. a backfill file)
        pa.field(INGEST_TIME, TIMESTAMP, nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("entity", pa.string()),
        pa.field("version", pa.string()),
        pa.field("attributes", pa.string(), nullable=False),  # JSON object of the Pub/Sub attributes
        pa.field("data", pa.binary(), nullable=False),
    ]
)
DEAD_LETTERS_TABLE = "_dead_letters"


# Up to this many rows a table is converted row-wise, in a single `pa.array` call (a struct array), rather
# than column-wise, with one call per column (11 for `user`). Each call releases and re-takes the GIL, which
# in a process whose other threads want it (a Beam worker) can wait out a whole switch interval
# (`sys.getswitchinterval()`): row-wise, a small batch waits once instead of once per column. Without
# contention row-wise only wins for small batches and loses for larger ones, so large batches stay
# column-wise.
ROW_WISE_MAX_ROWS = 32


@dataclass(frozen=True)
class _TablePlan:
    """How to build one entity version's table, decided once per spec."""

    schema: pa.Schema
    row_type: pa.StructType  # the schema as one struct, for the row-wise conversion
    key: Callable[[Message], Any]
    features: tuple[tuple[Callable[[Message], Any], pa.DataType], ...]
    readers: tuple[Callable[[Message], Any], ...]  # the features' readers alone


@functools.lru_cache(maxsize=256)
def _table_plan(spec: EntitySpec) -> _TablePlan:
    schema = arrow_schema(spec)
    features = tuple((_column_reader(f), arrow_type(f)) for f in spec.features)
    return _TablePlan(
        schema=schema,
        row_type=pa.struct(list(schema)),
        key=operator.attrgetter(spec.key.name),
        features=features,
        readers=tuple(read for read, _ in features),
    )


def _column_reader(field: FieldSpec) -> Callable[[Message], Any]:
    """`field_reader`, except that a repeated field is handed to Arrow as the protobuf container itself:
    Arrow reads any sequence, so the copy into a list would be pure overhead on the per-row hot path."""
    return operator.attrgetter(field.name) if field.repeated else field_reader(field)


def messages_to_table(
    spec: EntitySpec,
    messages: Sequence[Message],
    ingest_times_micros: Sequence[int],
    message_ids: Sequence[str],
) -> pa.Table:
    """Decoded entity messages as one Arrow table of `arrow_schema(spec)`, one row per message.

    Ingest calls this per bundle, and the local runner's bundles hold at most 10 messages, so the fixed
    cost per call matters as much as the cost per row: the plan is cached per spec, small batches are
    converted row-wise (ROW_WISE_MAX_ROWS), and timestamps are built as timestamps rather than int64 and a
    cast, which saves a cast per timestamp column."""
    if not len(messages) == len(ingest_times_micros) == len(message_ids):
        raise ValueError(
            f"messages ({len(messages)}), ingest times ({len(ingest_times_micros)}) and message ids "
            f"({len(message_ids)}) must have the same length"
        )
    plan = _table_plan(spec)
    event_times = event_times_micros(spec, messages)
    if len(messages) <= ROW_WISE_MAX_ROWS:
        return _row_wise(plan, messages, event_times, ingest_times_micros, message_ids)
    return _column_wise(plan, messages, event_times, ingest_times_micros, message_ids)


def _row_wise(
    plan: _TablePlan,
    messages: Sequence[Message],
    event_times: list[int],
    ingest_times_micros: Sequence[int],
    message_ids: Sequence[str],
) -> pa.Table:
    key, readers = plan.key, plan.readers
    rows = [
        (key(m), event, ingest, message_id, *[read(m) for read in readers])
        for m, event, ingest, message_id in zip(messages, event_times, ingest_times_micros, message_ids, strict=True)
    ]
    return pa.Table.from_arrays(pa.array(rows, type=plan.row_type).flatten(), schema=plan.schema)


def _column_wise(
    plan: _TablePlan,
    messages: Sequence[Message],
    event_times: list[int],
    ingest_times_micros: Sequence[int],
    message_ids: Sequence[str],
) -> pa.Table:
    columns: list[pa.Array] = [
        pa.array(list(map(plan.key, messages)), type=plan.schema.field(0).type),
        pa.array(event_times, type=TIMESTAMP),
        pa.array(list(ingest_times_micros), type=TIMESTAMP),
        pa.array(list(message_ids), type=pa.string()),
    ]
    columns += [pa.array(list(map(read, messages)), type=column_type) for read, column_type in plan.features]
    return pa.Table.from_arrays(columns, schema=plan.schema)


def dead_letters_to_table(letters: Sequence[DeadLetter]) -> pa.Table:
    rows: dict[str, list[Any]] = {name: [] for name in DEAD_LETTER_SCHEMA.names}
    for letter in letters:
        rows[MESSAGE_ID].append(letter.message_id)
        rows["publish_time"].append(letter.publish_time)
        rows[INGEST_TIME].append(letter.ingest_time)
        rows["reason"].append(letter.reason)
        rows["detail"].append(letter.detail)
        rows["entity"].append(letter.attributes.get(ATTR_ENTITY))
        rows["version"].append(letter.attributes.get(ATTR_VERSION))
        rows["attributes"].append(json.dumps(letter.attributes, sort_keys=True))
        rows["data"].append(bytes(letter.data))
    return pa.Table.from_pydict(rows, schema=DEAD_LETTER_SCHEMA)


def dead_letter_bigquery_schema() -> list[dict[str, Any]]:
    """The dead-letter table as BigQuery schema JSON (entity tables: `fstore.schema.tables.bigquery_schema_fields`)."""
    types = {pa.string(): "STRING", TIMESTAMP: "TIMESTAMP", pa.binary(): "BYTES"}
    return [
        {"name": f.name, "type": types[f.type], "mode": "NULLABLE" if f.nullable else "REQUIRED"}
        for f in DEAD_LETTER_SCHEMA
    ]
