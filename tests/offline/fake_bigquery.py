"""A `bigquery.Client` stand-in: the one test double here, because no BigQuery is reachable and the PyPI
emulators need downloads at start and do not run offline. It records every call (method + arguments) so tests can check
request shapes, and runs queries for real: sqlglot transpiles the BigQuery SQL to DuckDB, which executes
it over tables created and filled through the same calls. Tables keep a schema and an etag as BigQuery does:
`get_table` answers with legacy type names (INTEGER, FLOAT, BOOLEAN), `update_table` only adds columns and
checks the etag (412), and an insert naming a column the table lacks fails whole ("no such field")."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from google.api_core.exceptions import BadRequest, Conflict, NotFound, PreconditionFailed
from google.cloud import bigquery

# What BigQuery stores and answers for the standard SQL names a table is created with.
LEGACY_TYPES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}
DUCKDB_TYPES = {
    "INTEGER": "BIGINT",
    "FLOAT": "DOUBLE",
    "STRING": "VARCHAR",
    "BOOLEAN": "BOOLEAN",
    "BYTES": "BLOB",
    "TIMESTAMP": "TIMESTAMPTZ",
    "NUMERIC": "DECIMAL(38, 9)",
}


def to_duckdb(sql: str) -> str:
    """BigQuery Standard SQL -> DuckDB, failing loudly on anything sqlglot cannot parse."""
    return sqlglot.transpile(sql, read="bigquery", write="duckdb", error_level=sqlglot.ErrorLevel.RAISE)[0]


def duck_name(table_id: str) -> str:
    project, dataset, table = table_id.split(".")
    return f'"{project}"."{dataset}"."{table}"'


@dataclass
class Call:
    method: str
    args: dict[str, Any]


@dataclass
class FakeRows:
    table: pa.Table

    def __iter__(self) -> Any:
        return iter(self.table.to_pylist())

    def to_arrow(self) -> pa.Table:
        return self.table

    def to_arrow_iterable(self) -> Any:
        # Several small batches, as the Storage Read API delivers them.
        return iter(self.table.to_batches(max_chunksize=7))


@dataclass
class FakeJob:
    rows: FakeRows | None = None

    def result(self) -> Any:
        return self.rows


@dataclass
class FakeTableItem:
    table_id: str


def stored_column(column: dict[str, Any]) -> dict[str, Any]:
    """A column as BigQuery keeps it: legacy type name, explicit mode."""
    kind = str(column["type"]).upper()
    return {**column, "type": LEGACY_TYPES.get(kind, kind), "mode": str(column.get("mode") or "NULLABLE").upper()}


def duck_column(column: dict[str, Any]) -> str:
    return f'"{column["name"]}" {DUCKDB_TYPES[column["type"]]}{"[]" if column["mode"] == "REPEATED" else ""}'


@dataclass
class FakeBigQueryClient:
    project: str
    calls: list[Call] = field(default_factory=list)
    # Called with the table id as update_table starts: another writer changing the table between a get and an
    # update (it may call `alter`).
    before_update: Callable[[str], None] | None = None
    check_etag: bool = True  # False: as an update without If-Match, so a lost race shows as a 400

    def __post_init__(self) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone='UTC'")
        self._schemas: set[str] = set()
        self.columns: dict[str, list[dict[str, Any]]] = {}  # table id -> schema JSON, as BigQuery keeps it
        self._etags: dict[str, int] = {}

    def _ensure_schema(self, table_id: str) -> None:
        project, dataset, _ = table_id.split(".")
        if project not in self._schemas:
            self.con.execute(f"ATTACH ':memory:' AS \"{project}\"")
            self._schemas.add(project)
        self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{project}"."{dataset}"')

    def create_table(self, table: Any, exists_ok: bool = False) -> Any:
        self.calls.append(Call("create_table", {"table": table.to_api_repr(), "exists_ok": exists_ok}))
        table_id = f"{table.project}.{table.dataset_id}.{table.table_id}"
        if table_id in self.columns:
            if not exists_ok:
                raise Conflict(f"Already Exists: Table {table_id}")
            return self._table(table_id)  # what the real client answers: it reads the table on a 409
        self._ensure_schema(table_id)
        self.columns[table_id] = [stored_column(f.to_api_repr()) for f in table.schema]
        self._etags[table_id] = 1
        self.con.execute(f"CREATE TABLE {duck_name(table_id)} ({', '.join(map(duck_column, self.columns[table_id]))})")
        return self._table(table_id)

    def _table(self, table_id: str) -> Any:
        project, dataset, name = table_id.split(".")
        return bigquery.Table.from_api_repr(
            {
                "tableReference": {"projectId": project, "datasetId": dataset, "tableId": name},
                "schema": {"fields": [dict(c) for c in self.columns[table_id]]},
                "etag": str(self._etags[table_id]),
            }
        )

    def get_table(self, table: str) -> Any:
        self.calls.append(Call("get_table", {"table": table}))
        if table not in self.columns:
            raise NotFound(f"Not found: Table {table}")
        return self._table(table)

    def update_table(self, table: Any, fields: list[str]) -> Any:
        table_id = f"{table.project}.{table.dataset_id}.{table.table_id}"
        sent = [stored_column(f.to_api_repr()) for f in table.schema]
        self.calls.append(Call("update_table", {"table": table_id, "fields": fields, "schema": sent}))
        if self.before_update is not None:
            self.before_update(table_id)
        if self.check_etag and table.etag is not None and table.etag != str(self._etags[table_id]):
            raise PreconditionFailed(f"Precondition check failed for {table_id}")
        names = [c["name"] for c in sent]
        if len(set(names)) != len(names):
            raise BadRequest(f"Duplicate column names in the schema of {table_id}")
        by_name = {c["name"]: c for c in sent}
        for column in self.columns[table_id]:
            got = by_name.get(column["name"])
            if got is None or (got["type"], got["mode"]) != (column["type"], column["mode"]):
                raise BadRequest(f"Provided Schema does not match Table {table_id}. Field {column['name']} differs")
        known = {c["name"] for c in self.columns[table_id]}
        for column in sent:
            if column["name"] not in known:
                if column["mode"] == "REQUIRED":
                    raise BadRequest(f"Cannot add required field {column['name']} to {table_id}")
                self.alter(table_id, column)
        return self._table(table_id)

    def alter(self, table_id: str, column: dict[str, Any]) -> None:
        """Add a column, as an update that went through (this client's or another writer's) does."""
        stored = stored_column(column)
        self.con.execute(f"ALTER TABLE {duck_name(table_id)} ADD COLUMN {duck_column(stored)}")
        self.columns[table_id].append(stored)
        self._etags[table_id] += 1

    def insert_rows_json(self, table: str, json_rows: list[dict[str, Any]], row_ids: list[str]) -> list[Any]:
        self.calls.append(Call("insert_rows_json", {"table": table, "rows": json_rows, "row_ids": row_ids}))
        described = self.con.execute(f"DESCRIBE {duck_name(table)}").fetchall()
        names = [d[0] for d in described]
        # As BigQuery (skipInvalidRows false): one row naming an unknown column fails the whole request.
        errors = [
            {"index": i, "errors": [{"reason": "invalid", "location": n, "message": f"no such field: {n}."}]}
            for i, row in enumerate(json_rows)
            for n in sorted(set(row) - set(names))
        ]
        if errors:
            return errors
        values = []
        for row in json_rows:
            values.append(
                [
                    base64.b64decode(row[n]) if kind == "BLOB" and row.get(n) is not None else row.get(n)
                    for n, kind in ((d[0], d[1]) for d in described)
                ]
            )
        placeholders = ", ".join("?" for _ in names)
        self.con.executemany(f"INSERT INTO {duck_name(table)} VALUES ({placeholders})", values)
        return []

    def load_table_from_file(self, file: io.BytesIO, destination: str, job_config: Any) -> FakeJob:
        data = pq.read_table(file)
        self.calls.append(
            Call(
                "load_table_from_file",
                {"destination": destination, "job_config": job_config.to_api_repr(), "rows": data.num_rows},
            )
        )
        self._ensure_schema(destination)
        self.con.register("__load", data)
        self.con.execute(f"CREATE OR REPLACE TABLE {duck_name(destination)} AS SELECT * FROM __load")
        self.con.unregister("__load")
        return FakeJob()

    def query(self, sql: str, job_config: Any = None, project: str | None = None) -> FakeJob:
        self.calls.append(
            Call(
                "query",
                {"sql": sql, "job_config": job_config.to_api_repr() if job_config else None, "project": project},
            )
        )
        try:
            result = self.con.sql(to_duckdb(sql)).to_arrow_table()
        except duckdb.CatalogException as exc:
            raise NotFound(str(exc)) from None
        return FakeJob(FakeRows(result))

    def list_tables(self, dataset: str) -> list[FakeTableItem]:
        self.calls.append(Call("list_tables", {"dataset": dataset}))
        project, name = dataset.split(".")
        if project not in self._schemas:
            return []
        found = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?", [project, name]
        ).fetchall()
        return [FakeTableItem(t[0]) for t in found]

    def delete_table(self, table: str, not_found_ok: bool = False) -> None:
        self.calls.append(Call("delete_table", {"table": table, "not_found_ok": not_found_ok}))
        self.con.execute(f"DROP TABLE IF EXISTS {duck_name(table)}")

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]
