"""Aggregation features for a spine, as DuckDB SQL and as BigQuery Standard SQL: `fstore.schema.aggregations.counts`
written as a join.

For each spine row (key k, time t) and each feature of one family, the aggregate over the source entity's
events of key k that are accepted (no later than the allowed lateness, or backfilled), known at t (ingest
time, or event time for a backfilled row, <= t) and whose event-time tile lies in the W/T tiles ending with
t's tile. Backfilled rows are the ones whose message id the backfill derived (`backfill:…`).
The history read is already one row per message id. Output: one row per spine row that has any candidate
event, keyed by the spine's row number; the export left-joins it and fills COUNT and SUM with 0.

The DuckDB SQL is the reference. The BigQuery SQL says the same in that dialect; the tests parse it as BigQuery,
transpile it to DuckDB with SQLGlot and require the reference's answers (tests/offline/test_aggregations_bigquery.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fstore.schema.aggregations import AggregationSpec, FamilySpec
from fstore.schema.tables import INGEST_TIME, MESSAGE_ID
from fstore.store.offline.export import AggregationJoin, quote
from fstore.store.offline.spine import ROW_COLUMN
from fstore.store.offline.sql import bigquery_table, bq_quote, timestamp_literal

BACKFILL_ID_PREFIXES = ("backfill:",)  # ingest/sources.py and ingest/parquet.py derive them
_SQL_TYPES = {"int32": "INTEGER", "int64": "BIGINT", "uint32": "UINTEGER", "uint64": "UBIGINT", "float": "FLOAT",
              "double": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR", "bytes": "BLOB"}  # fmt: skip


def result_type(feature: AggregationSpec) -> str:
    """The SQL type of a feature's value (`AggregationSpec.result_kind`)."""
    return _SQL_TYPES[feature.result_kind]


def _tile(micros: str, size: int) -> str:
    # floor to the tile, also before 1970 (DuckDB's % keeps the dividend's sign)
    return f"({micros} - ((({micros}) % {size}) + {size}) % {size})"


def _in_window(feature: AggregationSpec, event_us: str, t_us: str, tile: Callable[[str, int], str] = _tile) -> str:
    if feature.window is None or feature.tile is None:
        return "TRUE"
    now, then = tile(t_us, feature.tile), tile(event_us, feature.tile)
    return f"({then} > {now} - {feature.window} AND {then} <= {now})"


def _reach(features: Sequence[AggregationSpec]) -> int | None:
    """How long before t an event may be and still count for one of `features` (None: a lifetime one): the
    widest window and the widest tile, since the window's edge is tile(t) - W, not t - W."""
    windows = [f.window for f in features]
    if None in windows:
        return None
    return max(w for w in windows if w is not None) + max(f.tile or 0 for f in features)


def _terms(
    feature: AggregationSpec,
    event_us: str,
    t_us: str,
    tile: Callable[[str, int], str],
    quote_name: Callable[[str], str],
) -> tuple[str, str, str]:
    """A feature's window condition, its field's value (empty for COUNT) and when that value counts: in the
    window and not null."""
    window = _in_window(feature, event_us, t_us, tile)
    if feature.field is None:
        return window, "", window
    value = f"e.{quote_name(feature.field.name)}"
    return window, value, f"{window} AND {value} IS NOT NULL"


def _aggregate(feature: AggregationSpec, event_us: str, t_us: str) -> str:
    window, value, present = _terms(feature, event_us, t_us, _tile, quote)
    if feature.function == "count":
        return f"count(*) FILTER (WHERE {window})"
    if feature.function == "last":
        order = f"{{'t': {event_us}, 'i': e.{INGEST_TIME}, 'm': e.{MESSAGE_ID}}}"
        return f"arg_max({value}, {order}) FILTER (WHERE {present})"
    function = {"sum": "sum", "mean": "avg", "min": "min", "max": "max"}[feature.function]
    # Floating-point sums depend on the order of the terms, and DuckDB's threads vary it: summing in event
    # order keeps a rerun (`--reproduce`) byte for byte the same.
    order = f" ORDER BY {event_us}, e.{MESSAGE_ID}" if function in ("sum", "avg") else ""
    return f"{function}({value}{order}) FILTER (WHERE {present})"


def aggregation_history_filters(join: AggregationJoin, bounds: tuple[int, int] | None) -> list[str]:
    """What the aggregation of one family may read of its source table: nothing past the high-water mark,
    and (for pruning) no event time outside the spine's range widened by the widest window and its tile."""
    return _history_filters(join, bounds, "duckdb", quote)


def _history_filters(
    join: AggregationJoin, bounds: tuple[int, int] | None, dialect: str, quote_name: Callable[[str], str]
) -> list[str]:
    if join.high_water_mark is None or bounds is None:
        return ["FALSE"]
    time = quote_name(join.family.source.event_time.name)
    widest_tile = max(f.tile or 0 for f in join.features)
    filters = [
        f"{INGEST_TIME} <= {timestamp_literal(join.high_water_mark, dialect)}",
        f"{time} < {timestamp_literal(bounds[1] + widest_tile, dialect)}",
    ]
    reach = _reach(join.features)
    if reach is not None:
        filters.append(f"{time} > {timestamp_literal(bounds[0] - reach, dialect)}")
    return filters


def duckdb_aggregation_sql(
    family: FamilySpec,
    features: Sequence[AggregationSpec],
    columns: Sequence[str],
    spine_sql: str,
    history_sql: str,
    timestamp_column: str,
) -> str:
    """(ROW_COLUMN, one column per feature) for the spine rows of `spine_sql` (with ROW_COLUMN, the family's
    group-by column and `timestamp_column`) against `history_sql` (the source entity's rows, one per message
    id, nothing past the high-water mark)."""
    key, time = quote(family.group_by.name), quote(family.source.event_time.name)
    backfilled = " OR ".join(f"starts_with({MESSAGE_ID}, '{p}')" for p in BACKFILL_ID_PREFIXES)
    lateness = family.allowed_lateness
    event_us, t_us = "e.__event_us", "s.__t_us"
    widest = _reach(features)
    reach = "" if widest is None else f" AND e.__event_us > {t_us} - {widest}"
    selected = ",\n    ".join(
        f"CAST({_aggregate(f, event_us, t_us)} AS {result_type(f)}) AS {quote(c)}"
        for f, c in zip(features, columns, strict=True)
    )
    return f"""
WITH __spine AS (
  SELECT {ROW_COLUMN}, {key} AS __key, epoch_us(CAST({quote(timestamp_column)} AS TIMESTAMPTZ)) AS __t_us
  FROM ({spine_sql})
), __events AS (
  SELECT *, {key} AS __key, epoch_us({time}) AS __event_us,
    CASE WHEN {backfilled} THEN epoch_us({time}) ELSE epoch_us({INGEST_TIME}) END AS __known_us
  FROM ({history_sql})
  WHERE ({backfilled}) OR epoch_us({INGEST_TIME}) - epoch_us({time}) <= {lateness}
)
SELECT s.{ROW_COLUMN},
    {selected}
FROM __spine s JOIN __events e ON e.__key = s.__key AND e.__known_us <= {t_us}{reach}
GROUP BY s.{ROW_COLUMN}"""


# --- BigQuery -----------------------------------------------------------------------------------------

# LAST's order (event time, ingest time, message id) as one STRING, because BigQuery orders no STRUCT and
# the ordered `ARRAY_AGG(... LIMIT 1)` has no DuckDB counterpart in SQLGlot (it refuses LIMIT inside
# ARRAY_AGG), so the tests could not run it. Both times are shifted by the microseconds from 0001-01-01
# (BigQuery's earliest TIMESTAMP) to the epoch, which makes them non-negative and below 10^18 up to 9999-12-31
# (its latest): zero-padded to 18 digits, string order is then numeric order, and the message id after them
# breaks the remaining ties as the tuple does.
_ORDER_OFFSET = 62_135_596_800 * 1_000_000
_ORDER_DIGITS = 18
_BIGQUERY_RESULT_TYPES = {"BIGINT": "INT64", "DOUBLE": "FLOAT64"}


def bigquery_aggregation_history_filters(join: AggregationJoin, bounds: tuple[int, int] | None) -> list[str]:
    """`aggregation_history_filters` in BigQuery Standard SQL (backquoted names, TIMESTAMP literals)."""
    return _history_filters(join, bounds, "bigquery", bq_quote)


def bigquery_aggregation_history(
    join: AggregationJoin, project: str, dataset: str, bounds: tuple[int, int] | None
) -> str:
    """The `history_sql` of `bigquery_aggregation_sql` for one family: its source table's rows within
    `bigquery_aggregation_history_filters`, each message id once (its earliest ingest, as every read of a
    BigQuery table deduplicates: streaming inserts' insertId dedup is only best-effort)."""
    table = bigquery_table(project, dataset, join.family.source.table_name)
    filters = " AND ".join(bigquery_aggregation_history_filters(join, bounds))
    return (
        f"SELECT * FROM {table} WHERE {filters}\n"
        f"  QUALIFY ROW_NUMBER() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1"
    )


def _bigquery_tile(micros: str, size: int) -> str:
    # BigQuery has no % operator, and DIV and MOD both truncate toward zero: MOD twice floors, as in DuckDB
    return f"({micros} - MOD(MOD({micros}, {size}) + {size}, {size}))"


def _bigquery_aggregate(feature: AggregationSpec, event_us: str, t_us: str) -> str:
    # No FILTER clause in BigQuery: the aggregates skip NULLs, so IF(..., value, NULL) filters
    window, value, present = _terms(feature, event_us, t_us, _bigquery_tile, bq_quote)
    if feature.function == "count":
        return f"CAST(COUNTIF({window}) AS INT64)"
    if feature.function == "last":
        return f"MAX_BY(IF({present}, {value}, NULL), IF({present}, e.__last_order, NULL))"
    function = {"sum": "SUM", "mean": "AVG", "min": "MIN", "max": "MAX"}[feature.function]
    aggregate = f"{function}(IF({present}, {value}, NULL))"
    if function in ("MIN", "MAX"):
        return aggregate  # the column's own BigQuery type, as the table holds it
    return f"CAST({aggregate} AS {_BIGQUERY_RESULT_TYPES[result_type(feature)]})"


def bigquery_aggregation_sql(
    family: FamilySpec,
    features: Sequence[AggregationSpec],
    columns: Sequence[str],
    spine_table: str,
    history_sql: str,
    timestamp_column: str,
) -> str:
    """`duckdb_aggregation_sql` in BigQuery Standard SQL, with the same contract: (ROW_COLUMN, one column
    per feature) for the spine rows of `spine_table` (a quoted table path, as `bigquery_table` gives: the
    uploaded spine with ROW_COLUMN, the family's group-by column and `timestamp_column` as TIMESTAMP) against
    `history_sql` (the source entity's rows, one per message id, nothing past the high-water mark:
    `bigquery_aggregation_history`). One row per spine row with any candidate event; the caller left-joins
    it and fills COUNT and SUM with 0. COUNT and SUM of integers are INT64, MEAN and SUM of floats FLOAT64;
    MIN, MAX and LAST keep the column's BigQuery type (NUMERIC for uint64).

    Float sums and means equal DuckDB's to rounding (1e-9 relative), not byte for byte: BigQuery cannot
    order the terms of a SUM, and its workers add them in an order that can change between runs, so a
    `--reproduce` on BigQuery gives equal values but not necessarily equal bytes for them."""
    key, time = bq_quote(family.group_by.name), bq_quote(family.source.event_time.name)
    backfilled = " OR ".join(f"STARTS_WITH({MESSAGE_ID}, '{p}')" for p in BACKFILL_ID_PREFIXES)
    event_us, t_us = "e.__event_us", "s.__t_us"
    widest = _reach(features)
    reach = "" if widest is None else f" AND e.__event_us > {t_us} - {widest}"
    order = ""
    if any(f.function == "last" for f in features):
        digits = ", ".join(
            f"LPAD(CAST(UNIX_MICROS({c}) + {_ORDER_OFFSET} AS STRING), {_ORDER_DIGITS}, '0')"
            for c in (time, INGEST_TIME)
        )
        order = f",\n    CONCAT({digits}, {MESSAGE_ID}) AS __last_order"
    selected = ",\n    ".join(
        f"{_bigquery_aggregate(f, event_us, t_us)} AS {bq_quote(c)}" for f, c in zip(features, columns, strict=True)
    )
    return f"""
WITH __spine AS (
  SELECT {ROW_COLUMN}, {key} AS __key, UNIX_MICROS({bq_quote(timestamp_column)}) AS __t_us
  FROM {spine_table}
), __events AS (
  SELECT *, {key} AS __key, UNIX_MICROS({time}) AS __event_us,
    IF({backfilled}, UNIX_MICROS({time}), UNIX_MICROS({INGEST_TIME})) AS __known_us{order}
  FROM ({history_sql})
  WHERE ({backfilled}) OR UNIX_MICROS({INGEST_TIME}) - UNIX_MICROS({time}) <= {family.allowed_lateness}
)
SELECT s.{ROW_COLUMN},
    {selected}
FROM __spine s JOIN __events e ON e.__key = s.__key AND e.__known_us <= {t_us}{reach}
GROUP BY s.{ROW_COLUMN}"""
