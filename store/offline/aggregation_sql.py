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

import functools
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


# Float SUM and MEAN are exact sums, so the order in which DuckDB's threads add the terms cannot change them
# (`--reproduce` stays byte for byte) and no ordered aggregate is needed: each finite value x of a field is
# scaled by a power of two 2^k (exact), rounded to a HUGEINT (half to even) and the HUGEINTs are summed
# (integer sums are exact in any order); the sum is rounded once to a DOUBLE (DuckDB rounds to nearest) and
# divided by 2^k (exact: an exact sum of doubles is a multiple of 2^-1074, so a subnormal one has at most 52
# bits and the rounding to a DOUBLE left it as it was). k is one per group-by key and field: 125 - e(M) -
# e(N), with 2^e(M) > M, the largest finite nonzero |x| of that key's rows the family reads (e(M) >= -1073,
# a subnormal's), and 2^e(N) > N, that key's rows, so a window's sum (of at most N terms, all of its key)
# stays below 2^125 + N/2, far from HUGEINT's 2^127. A key's scale does not depend on any other key's values:
# a key with only 1e-300s is summed as exactly as one with only 7.0s, whatever else the history holds.
# k runs up to 1197 (M subnormal), past the largest power of two a DOUBLE holds (2^1023), so 2^k is two
# factors, 2^min(k, 1023) and 2^max(k - 1023, 0), each a multiplication (a division) that is exact.
# A value that is a multiple of 2^-k (every double of magnitude at least M * 2^(e(N) - 72), e.g. all of
# them within 2^-50 of M for 10^6 rows of the key; every double when k >= 1074) enters the sum exactly, so
# the sum is math.fsum's; any other is rounded by at most 2^-(k+1) (M * N * 2^-124): a window of values far
# below the largest its own key has elsewhere (1e-300s of a key that also has a 1e300, or 1e300 - 1e300 +
# 1e-300) is exact only to that bound.
# NaN and the infinities are not scaled but counted, beside the finite values, in one HUGEINT per value
# whose sum keeps each count in its own 42 bits (the codes below): a sum is NaN if it has a NaN or both
# infinities, else the infinity it has, as IEEE-754 addition gives in any order.
SCALE_BITS = 125
_DOUBLE_POWER = 1023  # the largest power of two that is a DOUBLE
_SMALLEST_EXPONENT = -1073  # e(M) of the smallest subnormal, 2^-1074 (and of none at all)
_CODE_BITS = 42
PLUS_INF_CODE, MINUS_INF_CODE = 1 << _CODE_BITS, 1 << 2 * _CODE_BITS  # a NaN is both; a finite value is 1


def _floating(feature: AggregationSpec) -> bool:
    return feature.field is not None and feature.field.kind in ("float", "double")


def exact_sum(feature: AggregationSpec) -> bool:
    """Summed exactly in HUGEINTs: SUM and MEAN of a float field (integer sums are exact already)."""
    return feature.function in ("sum", "mean") and _floating(feature)


def _scales(fields: Sequence[str]) -> str:
    """Per group-by key of __history (__key) and per field (quoted) n, the two factors of 2^k, __scale<n> =
    2^min(k, 1023) and __rescale<n> = 2^max(k - 1023, 0), k = 125 - e(M) - e(N) over that key's rows."""
    exponents, factors = [], []
    e_rows = "(CAST(floor(log2(count(*))) AS INTEGER) + 1)"
    for n, value in enumerate(fields):
        largest = f"max(abs({value})) FILTER (WHERE isfinite({value}) AND {value} <> 0)"
        e_max = f"coalesce(CAST(floor(log2({largest})) AS INTEGER) + 1, {_SMALLEST_EXPONENT})"
        exponents.append(f"{SCALE_BITS} - {e_max} - {e_rows} AS __k{n}")
        factors.append(f"pow(2.0, least(__k{n}, {_DOUBLE_POWER})) AS __scale{n}")
        factors.append(f"pow(2.0, greatest(__k{n} - {_DOUBLE_POWER}, 0)) AS __rescale{n}")
    return (
        f"SELECT __key, {', '.join(factors)}\n"
        f"  FROM (SELECT __key, {', '.join(exponents)} FROM __history GROUP BY __key)"
    )


# MIN and MAX of a float field are NaN when a value in the window is NaN (IEEE 754-2019's minimum and
# maximum, BigQuery's MIN and MAX; SUM and MEAN are NaN then too), else the least or greatest value, the
# infinities being values like any other. DuckDB orders NaN above every number, so its MAX keeps a NaN and
# its MIN drops it: MIN is written as -MAX(-x), in both dialects, so that it says the same on either.
# A zero MIN or MAX is +0.0: both engines hold -0.0 and 0.0 equal and keep the one they met last, which
# would make the bytes depend on the order of the rows (adding 0.0 changes no other value); a NaN is the
# one quiet NaN, whatever bits the NaN read had.
_NAN = {"duckdb": ("isnan", "'nan'::DOUBLE"), "bigquery": ("IS_NAN", "CAST('NaN' AS FLOAT64)")}


def _extreme(function: str, most: Callable[[str], str], value: str, dialect: str) -> str:
    """A float MIN or MAX by the rule above; `most` turns a term into its MAX over the window."""
    is_nan, nan = _NAN[dialect]
    sign = "" if function == "max" else "-"
    found = most(f"{sign}{value}")
    return f"CASE WHEN {is_nan}({found}) THEN {nan} ELSE {sign}{found} + 0.0 END"


class _Aggregates:
    """The join's distinct aggregates, each computed once (a SUM and a MEAN of the same field and window
    share their sums), named __a0, __a1, ..."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, sql: str, condition: str | None) -> str:
        if condition is not None:
            sql += f" FILTER (WHERE {condition})"
        return "g." + self.names.setdefault(sql, f"__a{len(self.names)}")

    def select(self) -> str:
        return "".join(f",\n    {sql} AS {name}" for sql, name in self.names.items())


def _window_max(aggregates: _Aggregates, condition: str | None, term: str) -> str:
    return aggregates(f"max({term})", condition)


class _Bounds:
    """Per spine row, the event-time bounds of each window: the W/T tiles ending with t's tile are
    tile(t) - W + T <= event time < tile(t) + T, computed once per spine row rather than per joined pair."""

    def __init__(self, t_us: str) -> None:
        self.t_us = t_us
        self.columns: dict[str, str] = {}

    def _column(self, name: str, sql: str) -> str:
        self.columns.setdefault(name, sql)
        return f"s.{name}"

    def window(self, feature: AggregationSpec) -> tuple[str, str] | None:
        if feature.window is None or feature.tile is None:
            return None
        size, now = feature.tile, _tile(self.t_us, feature.tile)
        start = self._column(f"__from_{feature.window}_{size}", f"{now} + {size - feature.window}")
        return start, self._column(f"__to_{size}", f"{now} + {size}")

    def select(self) -> str:
        return "".join(f",\n    {sql} AS {name}" for name, sql in self.columns.items())


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
    id, nothing past the high-water mark). Float sums and means are exact sums of scaled HUGEINTs (above);
    LAST is the value with the greatest (event time, ingest time, message id)."""
    key, time = quote(family.group_by.name), quote(family.source.event_time.name)
    backfilled = " OR ".join(f"starts_with({MESSAGE_ID}, '{p}')" for p in BACKFILL_ID_PREFIXES)
    bounds, aggregates = _Bounds("__t_us"), _Aggregates()
    summed = sorted({f.field.name for f in features if exact_sum(f) and f.field is not None})
    fields = sorted({f.field.name for f in features if f.field is not None})
    selected, windows = [], []
    for feature, column in zip(features, columns, strict=True):
        window = bounds.window(feature)
        windows.append(window)
        condition = None if window is None else f"e.__event_us >= {window[0]} AND e.__event_us < {window[1]}"
        value = "" if feature.field is None else f"e.{quote(feature.field.name)}"
        if feature.function == "count":
            sql = aggregates("count(*)", condition)
        elif exact_sum(feature) and feature.field is not None:
            n = summed.index(feature.field.name)
            total, codes = aggregates(f"sum(e.__fixed{n})", condition), aggregates(f"sum(e.__code{n})", condition)
            finite = f"CAST({total} AS DOUBLE) / c.__scale{n} / c.__rescale{n}"
            if feature.function == "mean":
                finite = f"{finite} / CAST({codes} % {PLUS_INF_CODE} AS DOUBLE)"
            sql = (
                f"CASE WHEN {codes} IS NULL THEN NULL WHEN {codes} < {PLUS_INF_CODE} THEN {finite}"
                f" WHEN {codes} < {MINUS_INF_CODE} THEN 'inf'::DOUBLE"
                f" WHEN {codes} % {MINUS_INF_CODE} < {PLUS_INF_CODE} THEN '-inf'::DOUBLE ELSE 'nan'::DOUBLE END"
            )
        elif feature.function == "last":
            sql = aggregates(f"arg_max({value}, e.__last_order)", condition)
        elif feature.function in ("min", "max") and _floating(feature):
            most = functools.partial(_window_max, aggregates, condition)
            sql = _extreme(feature.function, most, value, "duckdb")
        else:  # MIN, MAX, and integer SUM and MEAN (exact integer sums, then one division)
            function = {"sum": "sum", "mean": "avg", "min": "min", "max": "max"}[feature.function]
            sql = aggregates(f"{function}({value})", condition)
        selected.append(f"CAST({sql} AS {result_type(feature)}) AS {quote(column)}")
    selected_sql = ",\n    ".join(selected)

    reach = ""
    if all(w is not None for w in windows):  # no lifetime feature: an event outside every window never joins
        starts = sorted({w[0] for w in windows if w is not None})
        ends = sorted({w[1] for w in windows if w is not None})
        earliest = starts[0] if len(starts) == 1 else f"least({', '.join(starts)})"
        latest = ends[0] if len(ends) == 1 else f"greatest({', '.join(ends)})"
        reach = f" AND e.__event_us >= {earliest} AND e.__event_us < {latest}"
    values = "".join(f", {quote(f)}" for f in fields)
    last = ""
    if any(f.function == "last" for f in features):
        last = f",\n    {{'t': epoch_us({time}), 'i': {INGEST_TIME}, 'm': {MESSAGE_ID}}} AS __last_order"
    terms = "".join(
        f",\n    CASE WHEN isfinite({quote(f)}) THEN CAST({quote(f)} * c.__scale{n} * c.__rescale{n} AS HUGEINT) END"
        f" AS __fixed{n}"
        f",\n    CAST(CASE WHEN isfinite({quote(f)}) THEN 1"
        f" WHEN isnan({quote(f)}) THEN {PLUS_INF_CODE + MINUS_INF_CODE}"
        f" WHEN {quote(f)} > 0 THEN {PLUS_INF_CODE} WHEN {quote(f)} < 0 THEN {MINUS_INF_CODE} END AS HUGEINT)"
        f" AS __code{n}"
        for n, f in enumerate(summed)
    )
    if summed:  # each event scaled by its key's 2^k, each spine row's sums divided by it
        scales = f""", __scales AS (
  {_scales([quote(f) for f in summed])}
), __events AS (
  SELECT h.*{terms}
  FROM __history h JOIN __scales c ON c.__key = h.__key
)"""
        grouped, scaled = f"s.{ROW_COLUMN}, s.__key", " JOIN __scales c ON c.__key = g.__key"
    else:
        scales = ", __events AS NOT MATERIALIZED (SELECT * FROM __history)"
        grouped, scaled = f"s.{ROW_COLUMN}", ""
    return f"""
WITH __spine AS (
  SELECT *{bounds.select()}
  FROM (
    SELECT {ROW_COLUMN}, {key} AS __key, epoch_us(CAST({quote(timestamp_column)} AS TIMESTAMPTZ)) AS __t_us
    FROM ({spine_sql})
  )
), __history AS NOT MATERIALIZED (
  SELECT {key} AS __key, epoch_us({time}) AS __event_us,
    CASE WHEN {backfilled} THEN epoch_us({time}) ELSE epoch_us({INGEST_TIME}) END AS __known_us{values}{last}
  FROM ({history_sql})
  WHERE ({backfilled}) OR epoch_us({INGEST_TIME}) - epoch_us({time}) <= {family.allowed_lateness}
){scales}
SELECT g.{ROW_COLUMN},
    {selected_sql}
FROM (
  SELECT {grouped}{aggregates.select()}
  FROM __spine s JOIN __events e ON e.__key = s.__key AND e.__known_us <= s.__t_us{reach}
  GROUP BY {grouped}
) g{scaled}"""


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
    if feature.function in ("min", "max") and _floating(feature):  # NaN if any (see _extreme)
        return _extreme(feature.function, lambda term: f"MAX(IF({present}, {term}, NULL))", value, "bigquery")
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
