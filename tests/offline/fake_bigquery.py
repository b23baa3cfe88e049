"""A `bigquery.Client` stand-in: the one test double here, because no BigQuery is reachable and the PyPI
emulators need downloads at start and do not run offline. It records every call (method + arguments) so tests can check
request shapes, and runs queries for real: sqlglot transpiles the BigQuery SQL to DuckDB, which executes
it over tables created and filled through the same calls."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from google.api_core.exceptions import NotFound

DUCKDB_TYPES = {
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "STRING": "VARCHAR",
    "BOOL": "BOOLEAN",
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


@dataclass
class FakeBigQueryClient:
    project: str
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone='UTC'")
        self._schemas: set[str] = set()

    def _ensure_schema(self, table_id: str) -> None:
        project, dataset, _ = table_id.split(".")
        if project not in self._schemas:
            self.con.execute(f"ATTACH ':memory:' AS \"{project}\"")
            self._schemas.add(project)
        self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{project}"."{dataset}"')

    def create_table(self, table: Any, exists_ok: bool = False) -> Any:
        self.calls.append(Call("create_table", {"table": table.to_api_repr(), "exists_ok": exists_ok}))
        table_id = f"{table.project}.{table.dataset_id}.{table.table_id}"
        self._ensure_schema(table_id)
        columns = []
        for f in table.schema:
            kind = DUCKDB_TYPES[f.field_type if f.field_type != "FLOAT" else "FLOAT64"]
            columns.append(f'"{f.name}" {kind}{"[]" if f.mode == "REPEATED" else ""}')
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {duck_name(table_id)} ({', '.join(columns)})")
        return table

    def insert_rows_json(self, table: str, json_rows: list[dict[str, Any]], row_ids: list[str]) -> list[Any]:
        self.calls.append(Call("insert_rows_json", {"table": table, "rows": json_rows, "row_ids": row_ids}))
        described = self.con.execute(f"DESCRIBE {duck_name(table)}").fetchall()
        names = [d[0] for d in described]
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
