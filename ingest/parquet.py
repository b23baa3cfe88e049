"""Parquet backfill in Arrow batches: validate and write whole columns, never row by row.

A parquet file of entity events has one column per field of the entity version (the offline table's shape,
without ingest time and message id). Rows are checked by the same rules as `ingest.events.decode_event`,
expressed over columns; valid rows go to the offline store as one Arrow table per batch, and the online
store gets only the latest row per key of each batch (the compare-and-set takes care of the rest).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam import pvalue
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection

from fstore.errors import FstoreError
from fstore.ingest.events import MIN_EVENT_TIME_MICROS, job_registry, launcher_registry_source
from fstore.ingest.resources import IngestDoFn
from fstore.ingest.transforms import DEAD_LETTERS, NAMESPACE, StoreWriter
from fstore.schema.attributes import routing_attributes
from fstore.schema.registry import EntitySpec
from fstore.schema.tables import INGEST_TIME, MESSAGE_ID, TIMESTAMP, arrow_schema
from fstore.settings import Settings
from fstore.store.events import MAX_FUTURE_SECONDS, DeadLetter

BATCH_ROWS = 500_000


class ParquetInputError(FstoreError):
    """A parquet input does not have the shape of the entity version (names the file and column)."""


@dataclass(frozen=True)
class EventBatch:
    """Valid events of one entity version as a table of `arrow_schema(spec)`."""

    entity: str
    version: int
    table: pa.Table


def input_schema(spec: EntitySpec) -> pa.Schema:
    full = arrow_schema(spec)
    return pa.schema([f for f in full if f.name not in (INGEST_TIME, MESSAGE_ID)])


def check_parquet_input(spec: EntitySpec, path: Path) -> None:
    """Fail before any work when a column is not a field of the entity, or cannot hold its type."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ParquetInputError(f"{path}: not a readable parquet file: {exc}") from None
    expected = input_schema(spec)
    unknown = [name for name in schema.names if name not in expected.names]
    if unknown:
        raise ParquetInputError(f"{path}: columns {unknown} are not fields of {spec.full_name}")
    for name in (spec.key.name, spec.event_time.name):
        if name not in schema.names:
            raise ParquetInputError(f"{path}: no {name!r} column ({spec.ref} needs its key and event time)")
    for name in schema.names:
        have, want = schema.field(name).type, expected.field(name).type
        if have != want and not _castable(have, want):
            raise ParquetInputError(f"{path}: column {name!r} is {have}, {spec.ref} needs {want}")


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    try:
        pa.array([], type=have).cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _rule_violations(spec: EntitySpec, table: pa.Table, now_micros: int) -> list[tuple[str, pa.Array]]:
    """(reason, mask of violating rows) per rule of `decode_event`, in the same order."""
    key = table.column(spec.key.name)
    default = 0 if spec.key.kind == "int64" else ""
    missing_key = pc.fill_null(pc.equal(key, pa.scalar(default, key.type)), True)
    stamps = table.column(spec.event_time.name).cast(pa.int64())
    missing_time = pc.is_null(stamps)
    late_limit = now_micros + MAX_FUTURE_SECONDS * 1_000_000
    out_of_range = pc.fill_null(pc.or_(pc.less(stamps, MIN_EVENT_TIME_MICROS), pc.greater(stamps, late_limit)), False)
    return [
        ("missing_key", missing_key),
        ("missing_event_time", missing_time),
        ("event_time_out_of_range", out_of_range),
    ]


class _ReadParquetEventsFn(beam.DoFn):
    """path -> EventBatch (valid rows) | DeadLetter per invalid row. Message ids are derived from the file's
    content and the row number, so a backfill run twice stores nothing twice."""

    def __init__(self, entity: str, version: int, batch_rows: int) -> None:
        self.entity, self.version, self.batch_rows = entity, version, batch_rows
        self.registry_source = launcher_registry_source()

    def setup(self) -> None:
        self.spec = job_registry(self.registry_source).get(self.entity, self.version)
        self.schema = input_schema(self.spec)
        self.attributes = routing_attributes(self.spec)
        self.read = Metrics.counter(NAMESPACE, "events_read")
        self.valid = Metrics.counter(NAMESPACE, "events_valid")

    def process(self, path: str) -> Iterator[Any]:
        check_parquet_input(self.spec, Path(path))
        prefix = f"backfill:{_file_digest(path)}:"
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_rows):
            table = self._conform(pa.Table.from_batches([batch]))
            rows = table.num_rows
            now = time.time_ns() // 1_000
            ids = pa.array([f"{prefix}{offset + i}" for i in range(rows)], pa.string())
            table = table.append_column(pa.field(INGEST_TIME, TIMESTAMP, nullable=False), _constant_times(now, rows))
            table = table.append_column(pa.field(MESSAGE_ID, pa.string(), nullable=False), ids)
            self.read.inc(rows)
            rejected = pa.array([False] * rows)
            for reason, mask in _rule_violations(self.spec, table, now):
                mask = pc.and_(mask, pc.invert(rejected))  # one reason per row: the first rule it breaks
                if pc.any(mask).as_py():
                    yield from self._dead_letters(table.filter(mask), reason, now)
                    rejected = pc.or_(rejected, mask)
            valid = table.filter(pc.invert(rejected)).select(arrow_schema(self.spec).names)
            self.valid.inc(valid.num_rows)
            if valid.num_rows:
                yield EventBatch(self.spec.name, self.spec.version, valid.cast(arrow_schema(self.spec)))
            offset += rows

    def _conform(self, table: pa.Table) -> pa.Table:
        columns = []
        for field in self.schema:
            if field.name in table.column_names:
                columns.append(table.column(field.name).cast(field.type))
            else:  # a feature column the file does not have: unset for every row
                unset: list[Any] | None = [] if isinstance(field.type, pa.ListType) else None
                columns.append(pa.array([unset] * table.num_rows, field.type))
        return pa.Table.from_arrays(columns, schema=self.schema.with_metadata(None))

    def _dead_letters(self, rows: pa.Table, reason: str, now_micros: int) -> Iterator[Any]:
        ingest = datetime.fromtimestamp(now_micros / 1_000_000, UTC)
        for row in rows.drop_columns([INGEST_TIME]).to_pylist():
            message_id = row.pop(MESSAGE_ID)
            yield pvalue.TaggedOutput(
                DEAD_LETTERS,
                DeadLetter(
                    data=orjson.dumps(row, option=orjson.OPT_UTC_Z, default=str),
                    attributes=dict(self.attributes),
                    reason=reason,
                    detail=f"{self.spec.ref}: {reason.replace('_', ' ')} (parquet row {message_id.rsplit(':', 1)[1]})",
                    message_id=message_id,
                    publish_time=None,
                    ingest_time=ingest,
                ),
            )


def _constant_times(micros: int, rows: int) -> pa.Array:
    return pa.array([micros] * rows, pa.int64()).cast(TIMESTAMP)


class _WriteEventBatchFn(IngestDoFn):
    """The whole batch offline (one Arrow write), then the latest row per key online."""

    def setup(self) -> None:
        super().setup()
        self.writer = StoreWriter(self.res)

    def process(self, batch: EventBatch) -> Iterator[Any]:
        spec = self.res.registry.get(batch.entity, batch.version)
        self.writer.store_offline(spec, batch.table)
        messages, publish = latest_messages(spec, batch.table)
        self.writer.store_online(spec, messages, publish)
        self.writer.online_stale.inc(batch.table.num_rows - len(messages))  # older rows of the batch: never sent
        for family in self.res.registry.families_of(spec):  # every row counts there, not only the latest
            self.writer.store_tiles(family, batch.table)
        return iter(())


def latest_messages(spec: EntitySpec, table: pa.Table) -> tuple[list[Any], list[int]]:
    """The latest row per key (event time, then ingest time, then message id) as entity messages."""
    key, event_time = spec.key.name, spec.event_time.name
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("batch", table)
    latest = con.sql(
        f'SELECT * EXCLUDE ("{INGEST_TIME}", "{MESSAGE_ID}"), epoch_us("{INGEST_TIME}") AS _publish FROM batch '
        f'QUALIFY row_number() OVER (PARTITION BY "{key}" '
        f'ORDER BY "{event_time}" DESC, "{INGEST_TIME}" DESC, "{MESSAGE_ID}" DESC) = 1'
    ).to_arrow_table()
    con.close()
    cls = spec.message_class
    messages, publish = [], []
    for row in latest.to_pylist():
        publish.append(row.pop("_publish"))
        when = row.pop(event_time)
        message = cls(**{k: v for k, v in row.items() if v is not None})
        getattr(message, event_time).FromDatetime(when)
        messages.append(message)
    return messages, publish


class BackfillParquet(beam.PTransform[PCollection[str], PCollection[Any]]):
    """Parquet files of one entity version -> both stores, in Arrow batches; invalid rows as dead letters."""

    def __init__(self, settings: Settings, entity: str, version: int, batch_rows: int = BATCH_ROWS) -> None:
        super().__init__()
        self.settings, self.entity, self.version, self.batch_rows = settings, entity, version, batch_rows

    def expand(self, paths: PCollection[Any]) -> PCollection[Any]:
        read = paths | "ReadBatches" >> beam.ParDo(
            _ReadParquetEventsFn(self.entity, self.version, self.batch_rows)
        ).with_outputs(DEAD_LETTERS, main="batches")
        read.batches | "WriteBatches" >> beam.ParDo(_WriteEventBatchFn(self.settings))
        return read.dead_letters
