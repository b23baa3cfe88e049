"""Aggregation features for a spine, as DuckDB SQL: `fstore.schema.aggregations.counts` written as a join.

For each spine row (key k, time t) and each feature of one family, the aggregate over the source entity's
events of key k that are accepted (no later than the allowed lateness, or backfilled), known at t (ingest
time, or event time for a backfilled row, <= t) and whose event-time tile lies in the W/T tiles ending with
t's tile. Backfilled rows are the ones whose message id the backfill derived (`backfill:…`).
The history read is already one row per message id. Output: one row per spine row that has any candidate
event, keyed by the spine's row number; the export left-joins it and fills COUNT and SUM with 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from fstore.schema.aggregations import AggregationSpec, FamilySpec
from fstore.schema.tables import INGEST_TIME, MESSAGE_ID
from fstore.store.offline.export import AggregationJoin, quote
from fstore.store.offline.spine import ROW_COLUMN
from fstore.store.offline.sql import timestamp_literal

BACKFILL_ID_PREFIXES = ("backfill:",)  # ingest/sources.py and ingest/parquet.py derive them
_SQL_TYPES = {"int32": "INTEGER", "int64": "BIGINT", "uint32": "UINTEGER", "uint64": "UBIGINT", "float": "FLOAT",
              "double": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR", "bytes": "BLOB"}  # fmt: skip


def result_type(feature: AggregationSpec) -> str:
    """The SQL type of a feature's value (`AggregationSpec.result_kind`)."""
    return _SQL_TYPES[feature.result_kind]


def _tile(micros: str, size: int) -> str:
    # floor to the tile, also before 1970 (DuckDB's % keeps the dividend's sign)
    return f"({micros} - ((({micros}) % {size}) + {size}) % {size})"


def _in_window(feature: AggregationSpec, event_us: str, t_us: str) -> str:
    if feature.window is None or feature.tile is None:
        return "TRUE"
    now, then = _tile(t_us, feature.tile), _tile(event_us, feature.tile)
    return f"({then} > {now} - {feature.window} AND {then} <= {now})"


def _aggregate(feature: AggregationSpec, event_us: str, t_us: str) -> str:
    window = _in_window(feature, event_us, t_us)
    if feature.function == "count":
        return f"count(*) FILTER (WHERE {window})"
    assert feature.field is not None
    value = f"e.{quote(feature.field.name)}"
    present = f"{window} AND {value} IS NOT NULL"
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
    if join.high_water_mark is None or bounds is None:
        return ["FALSE"]
    time = quote(join.family.source.event_time.name)
    widest_tile = max(f.tile or 0 for f in join.features)
    filters = [
        f"{INGEST_TIME} <= {timestamp_literal(join.high_water_mark, 'duckdb')}",
        f"{time} < {timestamp_literal(bounds[1] + widest_tile, 'duckdb')}",
    ]
    if all(f.window is not None for f in join.features):
        widest = max(f.window or 0 for f in join.features)
        filters.append(f"{time} > {timestamp_literal(bounds[0] - widest - widest_tile, 'duckdb')}")
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
    windows = [f.window for f in features]
    widest = None if None in windows else max(w for w in windows if w is not None)
    event_us, t_us = "e.__event_us", "s.__t_us"
    reach = "" if widest is None else f" AND e.__event_us > {t_us} - {widest + max(f.tile or 0 for f in features)}"
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
