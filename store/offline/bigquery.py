"""The production offline store: BigQuery, one table per entity version.

`<project>.<dataset>.<entity>_v<N>`, partitioned by DATE(event_time), clustered by the key, schema from
`schema.bigquery_schema` (the same columns as the embedded store). Rows go in by streaming inserts with
insertId = message id (BigQuery's best-effort dedup); since that dedup is only best-effort, every read also
deduplicates by message id, exactly as the embedded store does. Exports upload the spine with a load job,
run the join of `sql.bigquery_export_sql` into a temporary destination table, and read it back with the
Storage Read API (one ordered stream), writing parquet row group by row group. A table gains the columns of
fields added to its entity version before the first insert that carries them (`bigquery_schema`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fstore.errors import SettingsError, StoreUnavailableError
from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import (
    INGEST_TIME,
    MESSAGE_ID,
    TIMESTAMP,
    arrow_kind,
    arrow_schema,
    arrow_type,
    bigquery_schema_fields,
)
from fstore.store.events import DeadLetter, utc_from_micros
from fstore.store.offline.aggregation_sql import bigquery_aggregation_history, bigquery_aggregation_sql
from fstore.store.offline.base import LedgerEntry, OfflineStore
from fstore.store.offline.bigquery_schema import add_missing_columns, plan_columns
from fstore.store.offline.duckdb import conform, conformed_batches
from fstore.store.offline.export import ExportPlan, check_output, finish_export, plan_export
from fstore.store.offline.manifest import ExportOptions, Manifest
from fstore.store.offline.schema import (
    DEAD_LETTER_SCHEMA,
    DEAD_LETTERS_TABLE,
    dead_letter_bigquery_schema,
    dead_letters_to_table,
)
from fstore.store.offline.sql import (
    MATCHED_PREFIX,
    bigquery_export_sql,
    bigquery_latest_sql,
    bigquery_table,
    bq_quote,
    event_time_range,
    latest_schema,
)

INSERT_BATCH = 500  # rows per insertAll request (BigQuery recommends <= 500)
ROW_GROUP_ROWS = 122_880


class BigQueryOfflineStore(OfflineStore):
    def __init__(
        self,
        project: str,
        dataset: str,
        registry: Registry,
        *,
        job_project: str | None = None,
        client: Any = None,
        location: str | None = None,
    ) -> None:
        self.project = project  # where the tables live
        self.dataset = dataset
        self.job_project = job_project or project  # who runs (and pays for) the queries
        self.registry = registry
        self.location = location
        self._client = client
        # Per table, its columns as last seen in BigQuery (schema JSON): a write whose columns they already
        # hold makes no request; a new shape (a field added to the entity) reads and updates the table once.
        self._columns: dict[str, list[dict[str, Any]]] = {}

    @classmethod
    def from_url(cls, url: str, registry: Registry, *, project: str | None = None) -> BigQueryOfflineStore:
        """`bigquery://<project>/<dataset>`; `project` (settings.project) runs the jobs."""
        rest = url.removeprefix("bigquery://")
        data_project, _, dataset = rest.partition("/")
        if not url.startswith("bigquery://") or not data_project or not dataset or "/" in dataset:
            raise SettingsError(f"offline: {url!r} must look like bigquery://project/dataset")
        return cls(data_project, dataset, registry, job_project=project)

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import bigquery

            self._client = bigquery.Client(project=self.job_project, location=self.location)
        return self._client

    def table_id(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    # --- tables and writes -------------------------------------------------------------------------------

    def ensure_table(self, spec: EntitySpec) -> None:
        """Create the entity version's table if missing (partitioned by event date, clustered by key), or add
        the columns of fields added to the entity since; SchemaError when a column would have to change."""
        self._ensure(spec.table_name, bigquery_schema_fields(spec), spec.event_time.name, [spec.key.name])

    def _ensure(self, table: str, schema: list[dict[str, Any]], partition_by: str, cluster_by: list[str]) -> None:
        known = self._columns.get(table)
        if known is not None and plan_columns(self.table_id(table), known, schema).clean:
            return
        if known is None:
            current = self._create(table, schema, partition_by, cluster_by)
        else:
            current = self.client.get_table(self.table_id(table))
        current = add_missing_columns(self.client, current, schema)
        self._columns[table] = [c.to_api_repr() for c in current.schema]

    def _create(self, table: str, schema: list[dict[str, Any]], partition_by: str, cluster_by: list[str]) -> Any:
        """The table as BigQuery has it: the one created, or (exists_ok: the client reads it) the existing one."""
        from google.cloud import bigquery

        definition = bigquery.Table(
            self.table_id(table), schema=[bigquery.SchemaField.from_api_repr(f) for f in schema]
        )
        definition.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=partition_by
        )
        definition.clustering_fields = cluster_by
        return self.client.create_table(definition, exists_ok=True)

    def write(self, spec: EntitySpec, rows: pa.Table) -> int:
        table = conform(rows, arrow_schema(spec), f"rows for {spec.ref}")
        self.ensure_table(spec)
        return self._insert(spec.table_name, table)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        if not letters:
            return 0
        self._ensure(DEAD_LETTERS_TABLE, dead_letter_bigquery_schema(), INGEST_TIME, ["reason"])
        return self._insert(DEAD_LETTERS_TABLE, dead_letters_to_table(letters))

    def _insert(self, table: str, rows: pa.Table) -> int:
        records = [json_row(r) for r in rows.to_pylist()]
        ids = rows.column(MESSAGE_ID).to_pylist()
        for start in range(0, len(records), INSERT_BATCH):
            errors = self.client.insert_rows_json(
                self.table_id(table), records[start : start + INSERT_BATCH], row_ids=ids[start : start + INSERT_BATCH]
            )
            if errors:
                # The table may have changed under us (a column dropped by hand): the retried write reads it again.
                self._columns.pop(table, None)
                raise StoreUnavailableError(f"BigQuery refused rows for {self.table_id(table)}: {errors[:3]}")
        return len(records)

    # --- reads -------------------------------------------------------------------------------------------

    def _query(self, sql: str, **job: Any) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(**job) if job else None
        return self.client.query(sql, job_config=config, project=self.job_project).result()

    def _dedup_source(self, table: str) -> str:
        return (
            f"SELECT * FROM {bigquery_table(self.project, self.dataset, table)} WHERE TRUE "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1"
        )

    def history(self, spec: EntitySpec) -> pa.Table:
        order = ", ".join(bq_quote(c) for c in (spec.key.name, spec.event_time.name, INGEST_TIME, MESSAGE_ID))
        result = self._query(f"SELECT * FROM ({self._dedup_source(spec.table_name)}) ORDER BY {order}")
        return conform(result.to_arrow(), arrow_schema(spec), spec.table_name, fill_missing=True)

    def history_batches(self, spec: EntitySpec, start: datetime | None = None) -> Iterator[pa.RecordBatch]:
        """One query, read back batch by batch; an entity version without a table has no rows."""
        from google.api_core.exceptions import NotFound

        filters = event_time_range(bq_quote(spec.event_time.name), start, None, "bigquery")
        where = " AND ".join(filters) or "TRUE"
        try:
            result = self._query(f"SELECT * FROM ({self._dedup_source(spec.table_name)}) WHERE {where}")
        except NotFound:
            return
        yield from conformed_batches(arrow_schema(spec), spec.table_name, result.to_arrow_iterable())

    def latest_rows(
        self, spec: EntitySpec, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[pa.RecordBatch]:
        """`sql.bigquery_latest_sql`, read back batch by batch; an entity version without a table has no rows."""
        from google.api_core.exceptions import NotFound

        filters = event_time_range(bq_quote(spec.event_time.name), start, end, "bigquery")
        table = bigquery_table(self.project, self.dataset, spec.table_name)
        try:
            result = self._query(bigquery_latest_sql(table, spec.key.name, spec.event_time.name, filters))
        except NotFound:
            return
        yield from conformed_batches(latest_schema(spec), spec.table_name, result.to_arrow_iterable())

    def dead_letters(self) -> pa.Table:
        result = self._query(
            f"SELECT * FROM ({self._dedup_source(DEAD_LETTERS_TABLE)}) ORDER BY {INGEST_TIME}, {MESSAGE_ID}"
        )
        return conform(result.to_arrow(), DEAD_LETTER_SCHEMA, "dead letters")

    def ledger(self) -> list[LedgerEntry]:
        existing = {t.table_id for t in self.client.list_tables(f"{self.project}.{self.dataset}")}
        specs = [s for s in self.registry if s.table_name in existing]
        if not specs:
            return []
        parts = [
            f"SELECT '{s.name}' AS entity, {s.version} AS version, COUNT(*) AS n, "
            f"UNIX_MICROS(MIN({bq_quote(s.event_time.name)})) AS first_event, "
            f"UNIX_MICROS(MAX({bq_quote(s.event_time.name)})) AS last_event, "
            f"UNIX_MICROS(MAX({INGEST_TIME})) AS last_ingest FROM ({self._dedup_source(s.table_name)})"
            for s in specs
        ]
        entries = []
        for row in self._query(" UNION ALL ".join(parts) + " ORDER BY entity, version"):
            if row["n"]:
                entries.append(
                    LedgerEntry(
                        row["entity"],
                        int(row["version"]),
                        int(row["n"]),
                        _utc(row["first_event"]),
                        _utc(row["last_event"]),
                        _utc(row["last_ingest"]),
                    )
                )
        return entries

    def high_water_mark(self, spec: EntitySpec) -> int | None:
        from google.api_core.exceptions import NotFound

        table = bigquery_table(self.project, self.dataset, spec.table_name)
        try:
            rows = list(self._query(f"SELECT UNIX_MICROS(MAX({INGEST_TIME})) AS hwm FROM {table}"))
        except NotFound:
            return None
        value = rows[0]["hwm"] if rows else None
        return None if value is None else int(value)

    # --- export ------------------------------------------------------------------------------------------

    def export_training_set(
        self, spine: Any, features: Sequence[str] | None, out: Path, options: ExportOptions | None = None
    ) -> Manifest:
        """As the DuckDB backend's; `memory_limit` and `threads` do not apply (BigQuery runs the join)."""
        options = options or ExportOptions()
        plan = plan_export(self.registry, spine, features, options, self.high_water_mark)
        suffix = uuid.uuid4().hex[:12]
        spine_table, result_table = f"_fstore_spine_{suffix}", f"_fstore_export_{suffix}"
        out = Path(out)
        check_output(out, plan)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        spine_path = bigquery_table(self.project, self.dataset, spine_table)
        aggregations = [
            bigquery_aggregation_sql(
                a.family, a.features, a.columns, spine_path,
                bigquery_aggregation_history(a, self.project, self.dataset, plan.spine.time_bounds),
                plan.timestamp_column,
            )
            for a in plan.aggregations
        ]  # fmt: skip
        sql = bigquery_export_sql(plan, self.project, self.dataset, spine_table, aggregations)
        try:
            self._upload_spine(plan, spine_table)
            from google.cloud import bigquery

            result = self._query(
                sql,
                destination=self.table_id(result_table),
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            )
            write_row_groups(tmp, output_schema(plan), finish_batches(plan, result.to_arrow_iterable()))
            os.replace(tmp, out)
        finally:
            for table in (spine_table, result_table):
                self.client.delete_table(self.table_id(table), not_found_ok=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return finish_export(plan, out, sql, "bigquery")

    def _upload_spine(self, plan: ExportPlan, table: str) -> None:
        from google.cloud import bigquery

        spine = plan.spine.table
        ts = plan.timestamp_column
        spine = spine.set_column(spine.schema.get_field_index(ts), ts, spine.column(ts).cast(TIMESTAMP, safe=False))
        buffer = io.BytesIO()
        pq.write_table(spine, buffer)
        buffer.seek(0)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE
        )
        self.client.load_table_from_file(buffer, self.table_id(table), job_config=config).result()


def output_schema(plan: ExportPlan) -> pa.Schema:
    """The export's parquet schema: the spine's own columns and types, then each feature's Arrow type."""
    fields = [plan.spine.table.schema.field(c) for c in plan.spine.columns]
    for j in plan.joins:
        fields.extend(pa.field(c, arrow_type(f)) for f, c in zip(j.features, j.columns, strict=True))
    for a in plan.aggregations:
        fields.extend(pa.field(c, arrow_kind(f.result_kind)) for f, c in zip(a.features, a.columns, strict=True))
    return pa.schema(fields)


def finish_batches(plan: ExportPlan, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """BigQuery results as the export's schema: BigQuery returns an empty array, never NULL, for a repeated
    field, so a repeated feature of an entity with no match is set back to null here (as DuckDB gives)."""
    schema = output_schema(plan)
    for batch in batches:
        table = pa.Table.from_batches([batch])
        for n, j in enumerate(plan.joins):
            flag = f"{MATCHED_PREFIX}{n}"
            if flag not in table.column_names:
                continue
            matched = table.column(flag)
            for f, c in zip(j.features, j.columns, strict=True):
                if f.repeated:
                    i = table.schema.get_field_index(c)
                    table = table.set_column(
                        i, c, pc.if_else(matched, table.column(c), pa.nulls(len(table), table.schema.field(c).type))
                    )
        yield conform(table, schema, "BigQuery export result")


def write_row_groups(path: Path, schema: pa.Schema, tables: Iterable[pa.Table]) -> None:
    """Parquet in fixed-size row groups, whatever batch sizes the reader produced: the same rows give the
    same bytes (what `reproduce` promises)."""
    pending: list[pa.Table] = []
    size = 0
    with pq.ParquetWriter(path, schema) as writer:
        for table in tables:
            pending.append(table)
            size += table.num_rows
            while size >= ROW_GROUP_ROWS:
                merged = pa.concat_tables(pending)
                writer.write_table(merged.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                rest = merged.slice(ROW_GROUP_ROWS)
                pending, size = [rest], rest.num_rows
        if size or not pending:
            merged = pa.concat_tables(pending) if pending else schema.empty_table()
            writer.write_table(merged, row_group_size=ROW_GROUP_ROWS)


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row as insertAll JSON: RFC 3339 timestamps, base64 bytes, NUMERIC as a string."""
    return {k: _json_value(v) for k, v in row.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**63:
        return str(value)  # a uint64 beyond INT64: NUMERIC accepts it as a string
    return value


def _utc(micros: int | None) -> datetime | None:
    return None if micros is None else utc_from_micros(int(micros))
