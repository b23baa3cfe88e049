"""The point-in-time join as SQL, for DuckDB and for BigQuery Standard SQL.

Semantics (both dialects): for each spine row and each entity, the offline row with the same key and the
greatest (event_time, ingest_time, message_id) such that event_time <= spine timestamp, and, when the
entity has a TTL, event_time > spine timestamp - TTL; no such row gives nulls. Only rows with
ingest_time <= the high-water mark are read, each message id once (its earliest ingest). Output rows
keep the spine's order and columns.

DuckDB matches row positions on narrow columns first and fetches the features afterwards (duckdb_join.py).
BigQuery has no ASOF join: a range join with QUALIFY ROW_NUMBER() does the same; sqlglot transpiles it back
to DuckDB in the tests, which check that both give the same answer.

The latest row per key (`fstore materialize`) follows the same order, in both dialects too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from fstore.schema.registry import EntitySpec
from fstore.schema.tables import INGEST_TIME, MESSAGE_ID, arrow_schema
from fstore.store.events import EPOCH, utc_from_micros
from fstore.store.offline.export import EntityJoin, ExportPlan, quote
from fstore.store.offline.spine import ROW_COLUMN

# In compacted files only: the ingest time of the row that beats this one on a tie of (key, event time)
# (the next by ingest time, message id), NULL when none does. A row is its tie group's winner among rows
# ingested up to a high-water mark H exactly when ingest_time <= H < superseded_at, so exports over
# compacted partitions resolve ties with a filter instead of a window over the whole history.
SUPERSEDED_AT = "__fstore_superseded_at"
# BigQuery returns repeated fields as [] where DuckDB gives NULL (no match): this flag says which it was.
MATCHED_PREFIX = "__fstore_matched_"


def timestamp_literal(micros: int, dialect: str) -> str:
    text = utc_from_micros(micros).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    return f"TIMESTAMPTZ '{text}'" if dialect == "duckdb" else f"TIMESTAMP '{text}'"


def history_filters(join: EntityJoin, bounds: tuple[int, int] | None, dialect: str) -> list[str]:
    """What an export may read of one table: nothing past the high-water mark, and (for partition and
    row-group pruning) nothing outside the spine's time range widened by the TTL."""
    if join.high_water_mark is None or bounds is None:
        return ["FALSE"]
    mark = f"{INGEST_TIME} <= {timestamp_literal(join.high_water_mark, dialect)}"
    return [mark, *time_range_filters(join, bounds, dialect)]


def time_reach(join: EntityJoin, bounds: tuple[int, int]) -> tuple[int | None, int]:
    """The event times (µs) a spine in `bounds` can reach through `join`: after the first (None without a
    TTL: no bound), up to and including the second."""
    earliest = bounds[0] - join.spec.ttl_seconds * 1_000_000 if join.spec.ttl_seconds > 0 else None
    return earliest, bounds[1]


def time_range_filters(join: EntityJoin, bounds: tuple[int, int] | None, dialect: str) -> list[str]:
    """The time-range half of `history_filters`: event times a spine row in `bounds` can reach."""
    if bounds is None:
        return ["FALSE"]
    time = join.spec.event_time.name
    earliest, latest = time_reach(join, bounds)
    filters = [f"{time} <= {timestamp_literal(latest, dialect)}"]
    if earliest is not None:
        filters.append(f"{time} > {timestamp_literal(earliest, dialect)}")
    return filters


# --- DuckDB -------------------------------------------------------------------------------------------


def duckdb_file_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def duckdb_history(
    clean: Sequence[str], mixed: Sequence[str], filters: Sequence[str], empty_view: str, journal: str | None = None
) -> str:
    """One table's rows, each message id once. `clean` files are already unique by message id (compacted
    partitions); `mixed` ones (partitions with fresh segments or journals) and the `journal` view (the rows
    of journals) are deduplicated together, keeping the earliest ingest."""
    where = " WHERE " + " AND ".join(filters) if filters else ""
    parts = []
    if clean:
        parts.append(f"SELECT * FROM read_parquet({duckdb_file_list(clean)}, union_by_name = true){where}")
    unsure = [f"SELECT * FROM read_parquet({duckdb_file_list(mixed)}, union_by_name = true)"] if mixed else []
    if journal:
        unsure.append(f"SELECT * FROM {journal}")
    if unsure:
        rows = unsure[0] if len(unsure) == 1 else "SELECT * FROM (" + " UNION ALL BY NAME ".join(unsure) + ")"
        parts.append(f"{rows}{where} QUALIFY row_number() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1")
    if not parts:
        parts.append(f"SELECT * FROM {empty_view}")
    return "\n  UNION ALL BY NAME\n  ".join(parts)


def duckdb_compaction_sql(key: str, time: str, files: Sequence[str]) -> str:
    """A partition's rows deduplicated, with SUPERSEDED_AT, sorted by key and event time."""
    order = f"{quote(key)}, {quote(time)}, {INGEST_TIME}, {MESSAGE_ID}"
    return (
        f"SELECT COLUMNS(lambda c: c != '{SUPERSEDED_AT}'), lead({INGEST_TIME}) OVER "
        f"(PARTITION BY {quote(key)}, {quote(time)} ORDER BY {INGEST_TIME}, {MESSAGE_ID}) AS {SUPERSEDED_AT}\n"
        f"FROM ({duckdb_history([], files, [], '')})\nORDER BY {order}"
    )


# --- BigQuery -----------------------------------------------------------------------------------------


def bq_quote(identifier: str) -> str:
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def bigquery_table(project: str, dataset: str, table: str) -> str:
    return bq_quote(f"{project}.{dataset}.{table}")


def bigquery_export_sql(
    plan: ExportPlan, project: str, dataset: str, spine_table: str, aggregations: Sequence[str] = ()
) -> str:
    """The same join in BigQuery Standard SQL. `spine_table`: the uploaded spine (plus ROW_COLUMN, and its
    timestamp column as TIMESTAMP); `aggregations`: per `plan.aggregations`, its `bigquery_aggregation_sql`."""
    spine = bigquery_table(project, dataset, spine_table)
    ts = f"s.{bq_quote(plan.timestamp_column)}"
    ctes = []
    select = [f"s.{bq_quote(c)}" for c in plan.spine.columns]
    joins = []
    for n, j in enumerate(plan.joins):
        table, alias = j.spec.table_name, f"j{n}"
        key, time = j.spec.key.name, j.spec.event_time.name
        filters = " AND ".join(history_filters(j, plan.spine.time_bounds, "bigquery"))
        features = ", ".join(f"h.{bq_quote(f.name)}" for f in j.features)
        in_window = f"h.{bq_quote(time)} <= {ts}"
        if j.spec.ttl_seconds > 0:
            in_window += f" AND h.{bq_quote(time)} > TIMESTAMP_SUB({ts}, INTERVAL {j.spec.ttl_seconds} SECOND)"
        ctes.append(
            f"{table} AS (\n"
            f"  SELECT * FROM {bigquery_table(project, dataset, table)}\n"
            f"  WHERE {filters}\n"
            f"  QUALIFY ROW_NUMBER() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1\n)"
        )
        ctes.append(
            f"{alias} AS (\n"
            f"  SELECT s.{ROW_COLUMN}, {features}\n"
            f"  FROM {spine} AS s\n"
            f"  JOIN {table} AS h ON h.{bq_quote(key)} = s.{bq_quote(key)} AND {in_window}\n"
            f"  WHERE TRUE\n"
            f"  QUALIFY ROW_NUMBER() OVER (PARTITION BY s.{ROW_COLUMN} ORDER BY h.{bq_quote(time)} DESC, "
            f"h.{INGEST_TIME} DESC, h.{MESSAGE_ID} DESC) = 1\n)"
        )
        select.extend(
            f"{alias}.{bq_quote(f.name)} AS {bq_quote(c)}" for f, c in zip(j.features, j.columns, strict=True)
        )
        joins.append(f"LEFT JOIN {alias} ON {alias}.{ROW_COLUMN} = s.{ROW_COLUMN}")
    return spine_query(plan, spine, ctes, select, joins, aggregations, bq_quote)


def spine_query(
    plan: ExportPlan,
    spine: str,
    ctes: list[str],
    select: list[str],
    joins: list[str],
    aggregations: Sequence[str],
    quoted: Callable[[str], str],
) -> str:
    """The export's outer query, either dialect: the spine's rows in order, each join's columns beside them,
    then the aggregation families' (`aggregations`: one query per family, one row per spine row)."""
    for n, (a, sql) in enumerate(zip(plan.aggregations, aggregations, strict=True)):
        ctes.append(f"__agg{n} AS ({sql}\n)")
        for feature, column in zip(a.features, a.columns, strict=True):
            value = f"a{n}.{quoted(column)}"  # no counting event: COUNT and SUM are 0, the others null
            zero = feature.function in ("count", "sum")
            select.append(f"COALESCE({value}, 0) AS {quoted(column)}" if zero else f"{value} AS {quoted(column)}")
        joins.append(f"LEFT JOIN __agg{n} AS a{n} ON a{n}.{ROW_COLUMN} = s.{ROW_COLUMN}")
    return (
        "WITH " + ",\n".join(ctes) + "\n"
        "SELECT " + ",\n  ".join(select) + "\n"
        f"FROM {spine} AS s\n" + "\n".join(joins) + "\n"
        f"ORDER BY s.{ROW_COLUMN}"
    )


# --- the latest row per key (`fstore materialize`) ----------------------------------------------------

# A column the latest-row queries add: how many history rows (in the time range) the row's key has, so
# that one pass over the history also says how much of it there was.
KEY_ROWS = "__fstore_key_rows"


def latest_schema(spec: EntitySpec) -> pa.Schema:
    """What `OfflineStore.latest_rows` yields: the offline table's columns, then KEY_ROWS."""
    return arrow_schema(spec).append(pa.field(KEY_ROWS, pa.int64(), nullable=False))


def event_time_range(time: str, start: datetime | None, end: datetime | None, dialect: str) -> list[str]:
    """Filters on the column `time` (quoted) for event times in [start, end); None is unbounded, a naive
    datetime is UTC."""
    bounds = [(">=", start), ("<", end)]
    return [f"{time} {op} {timestamp_literal(_micros(at), dialect)}" for op, at in bounds if at is not None]


def _micros(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - EPOCH) // timedelta(microseconds=1)


def duckdb_latest_sql(key: str, time: str, history: str) -> str:
    """Per key, the row with the greatest (event time, ingest time, message id) of `history` (a query of
    one table's rows, each message id once: `duckdb_history`), plus KEY_ROWS.

    Not one window over the whole history, which sorts every row with all its columns: the latest event
    time per key comes from an aggregate over two narrow columns, a join keeps the rows that have it (one
    per key but for ties), and the tie-break window sorts only those. `history` is read twice for that."""
    k, t = quote(key), quote(time)
    return (
        f"SELECT h.*, last.{KEY_ROWS}\n"
        f"FROM ({history}) AS h\n"
        f"JOIN (SELECT {k}, max({t}) AS __fstore_last, count(*) AS {KEY_ROWS} FROM ({history}) GROUP BY {k}) AS last\n"
        f"  ON h.{k} = last.{k} AND h.{t} = last.__fstore_last\n"
        f"QUALIFY row_number() OVER (PARTITION BY h.{k} ORDER BY h.{INGEST_TIME} DESC, h.{MESSAGE_ID} DESC) = 1"
    )


def bigquery_latest_sql(table: str, key: str, time: str, filters: Sequence[str]) -> str:
    """The same in BigQuery Standard SQL over `table` (a quoted table path), each message id once (its
    earliest ingest): one window per key, which BigQuery spreads over its workers."""
    where = " AND ".join(filters) or "TRUE"
    k, t = bq_quote(key), bq_quote(time)
    return (
        f"SELECT *, COUNT(*) OVER (PARTITION BY {k}) AS {KEY_ROWS}\n"
        f"FROM (\n"
        f"  SELECT * FROM {table} WHERE {where}\n"
        f"  QUALIFY ROW_NUMBER() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1\n"
        f")\n"
        f"WHERE TRUE\n"
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {k} ORDER BY {t} DESC, {INGEST_TIME} DESC, {MESSAGE_ID} DESC) = 1"
    )
