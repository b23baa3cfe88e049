"""The point-in-time join in DuckDB: find each spine row's history row by position, then fetch its features.

The answer is the one `sql.py` defines (latest event time <= the spine's timestamp, within the TTL, ties to
the later ingest time, then the greater message id). The query finds it in two steps, because the wide
columns (an embedding, a list of strings) are what make a join slow when they travel through it:

1. **Match**, on narrow columns only. Every history row gets a *position*: its file's index in the read
   list shifted left by 40 bits, or'ed with its row number in the file (journal rows: the journal's own row
   number after the files). One row per (key, event time) is kept, the tie-break winner: compacted files
   say which by SUPERSEDED_AT, fresh segments and journals settle it with two windows over the narrow
   columns, one partition at a time (Sources). Then each spine row takes `arg_max(position, event time)`
   over a hash join on the key with `event time <= t` (and `> t - TTL`).
2. **Fetch**: the wide columns of the matched positions only, by a hash join on the position, and the
   spine's own columns in the spine's order.

The hash join visits every (spine row, earlier history row) pair of a key, so a key with many spine rows
would multiply its history: spine rows of keys that appear more than HOT_KEY_SPINE_ROWS times go through an
ASOF join instead (over their keys' history only), which costs a sort but is linear. docs/training-sets.md
"Performance" has the formulations measured and why this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from fstore.schema.tables import INGEST_TIME, MESSAGE_ID
from fstore.store.events import utc_from_micros
from fstore.store.offline.export import EntityJoin, ExportPlan, quote
from fstore.store.offline.progress import run_with_progress
from fstore.store.offline.segments import DayRange
from fstore.store.offline.spine import ROW_COLUMN
from fstore.store.offline.sql import (
    SUPERSEDED_AT,
    duckdb_file_list,
    history_filters,
    spine_query,
    time_reach,
    timestamp_literal,
)

POSITION = "__fstore_position"
JOURNAL_ROW = "__fstore_journal_row"  # the row number the journal view carries for positions
HOT_KEYS = "__fstore_hot_keys"  # per join: a view of the spine's keys that appear too often for the hash join
HOT_KEY_SPINE_ROWS = 16
_FILE_SHIFT = 40  # a file's row numbers stay below 2^40; a position is (file << 40) | row


@dataclass(frozen=True)
class MixedPartition:
    """One date partition that needs deduplication (fresh segments, journals): its files and its journals'
    rows (a view carrying JOURNAL_ROW)."""

    files: list[str]
    journal: str | None


@dataclass(frozen=True)
class Sources:
    """What a read of one table uses: files already unique by message id, files that need deduplication,
    and the view of its journals' rows (which need it too), if any. The export reads `partitions` instead of
    `mixed` and `journal` (`_sources(..., numbered=True)`): a message's redeliveries and a tie's rows share
    their event time, hence their partition, so each partition is deduplicated on its own, in memory."""

    clean: list[str]
    mixed: list[str]
    journal: str | None
    partitions: tuple[MixedPartition, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.clean and not self.mixed and not self.journal and not self.partitions


@dataclass(frozen=True)
class JoinSource:
    """One table as the join reads it: `narrow` (key, event time, POSITION: one row per key and event time,
    the tie-break winner, in clean partitions; every row the export may read in the others), `wide`
    (POSITION and the join's features, for every row `narrow` may name), and per unclean partition `unsure`,
    the rows it added to `narrow` with INGEST_TIME and MESSAGE_ID, for settling the ties among them."""

    narrow: str
    wide: str
    clean: str | None = None  # the clean partitions' part of `narrow`
    unsure: tuple[str, ...] = ()


def partition_days(join: EntityJoin, bounds: tuple[int, int] | None) -> DayRange | None:
    """The date partitions a spine in `bounds` (its time range, µs) can reach through `join`: from the day of
    its earliest time minus the TTL (every earlier day without a TTL) to the day of its latest time; None
    (all of them) for an empty spine, which reads nothing anyway."""
    if bounds is None:
        return None
    earliest, latest = time_reach(join, bounds)
    return DayRange(None if earliest is None else utc_from_micros(earliest).date(), utc_from_micros(latest).date())


def join_source(
    join: EntityJoin,
    sources: Sources,
    bounds: tuple[int, int] | None,
    empty_view: str,
    *,
    complete_schema: bool = False,
) -> JoinSource:
    """`sources` as `_sources(..., numbered=True, days=partition_days(join, bounds))` lists them; `bounds`: the
    spine's time range (µs). `complete_schema`: `wide` also takes the (empty) table of the entity's current
    schema, by name, which it needs when every file it reads predates one of the join's features (files
    older than a column lack it; without that table the statement fails to bind). It costs about 5% of an
    export at 1 GB (docs/training-sets.md), so the export binds without it first."""
    key, time = quote(join.spec.key.name), quote(join.spec.event_time.name)
    features = ", ".join(quote(f.name) for f in join.features)
    where = " AND ".join(history_filters(join, bounds, "duckdb"))
    reads = _reads(sources)
    clean = reads.clean
    narrow: list[str] = []
    if clean and join.high_water_mark is not None:
        mark = timestamp_literal(join.high_water_mark, "duckdb")
        narrow.append(
            f"SELECT {key}, {time}, {clean.position} AS {POSITION} FROM {clean.relation}\n"
            f"    WHERE {where} AND ({SUPERSEDED_AT} IS NULL OR {SUPERSEDED_AT} > {mark})"
        )
    clean_narrow = narrow[0] if narrow else None

    def selected(of: list[_Read], columns: str = "") -> str:
        selects = (
            f"SELECT {key}, {time}, {columns}{r.position} AS {POSITION} FROM {r.relation} WHERE {where}" for r in of
        )
        return "\n    UNION ALL ".join(selects)

    if reads.unclean:
        narrow.append(selected(reads.unclean))
    unsure = [selected(part, f"{INGEST_TIME}, {MESSAGE_ID}, ") for part in reads.partitions]
    # The fetch reads only matched positions: no filter at all (the match applied them; the time range cost
    # 6% of an export as a row filter here, and the listing already left out the partitions out of reach).
    every = ([clean] if clean else []) + reads.unclean
    wide = [f"SELECT {r.position} AS {POSITION}, * FROM {r.relation}" for r in every]
    if complete_schema or not wide:
        wide.append(f"SELECT NULL::BIGINT AS {POSITION}, * FROM {empty_view}")
    if not narrow:
        narrow.append(f"SELECT {key}, {time}, NULL::BIGINT AS {POSITION} FROM {empty_view}")
    rows = "\n    UNION ALL BY NAME\n    ".join(wide)
    wide_rows = f"SELECT {POSITION}, {features} FROM (\n    {rows}\n  )"
    return JoinSource("\n  UNION ALL\n  ".join(narrow), wide_rows, clean_narrow, tuple(unsure))


@dataclass(frozen=True)
class _Read:
    relation: str
    position: str


@dataclass(frozen=True)
class _Reads:
    """A table's reads, each with its position expression. Files are numbered clean ones first, then the
    unclean partitions' in partition order, then the journals: so that one read takes every unclean file
    (`unclean`: a union of thirty reads, one per fresh day, ran out of memory where one read did not, 100M
    rows at 1 GB), and `partitions` the same rows one partition at a time (for its windows)."""

    clean: _Read | None
    unclean: list[_Read]
    partitions: list[list[_Read]]


def _reads(sources: Sources) -> _Reads:
    clean = _Read(_parquet(sources.clean), _position("file_index", "file_row_number")) if sources.clean else None
    files = [f for p in sources.partitions for f in p.files]
    first = len(sources.clean)
    unclean = [_Read(_parquet(files), _position(f"{first} + file_index", "file_row_number"))] if files else []
    journal, partitions = first + len(files), []
    for p in sources.partitions:
        reads = [_Read(_parquet(p.files), _position(f"{first} + file_index", "file_row_number"))] if p.files else []
        first += len(p.files)
        if p.journal:
            reads.append(_Read(p.journal, _position(str(journal), JOURNAL_ROW)))
            unclean.append(reads[-1])
            journal += 1
        partitions.append(reads)
    return _Reads(clean, unclean, partitions)


def _parquet(files: Sequence[str]) -> str:
    return f"read_parquet({duckdb_file_list(files)}, union_by_name = true, file_row_number = true)"


def _position(file: str, row: str) -> str:
    return f"((({file})::BIGINT << {_FILE_SHIFT}) | {row})"


def find_hot_keys(con: duckdb.DuckDBPyConnection, spine_view: str, spine: pa.Table, key: str) -> pa.Table | None:
    """The spine's keys with more than HOT_KEY_SPINE_ROWS rows, as a table of one column `key` of the spine's
    key type; None when there are none (the common case: the query then has no ASOF part).

    Integer keys by a sort in numpy: sorted, a value appears more than N times exactly when it equals the
    value N places after it. 11-14 ms per million spine rows in a fresh process, where DuckDB's GROUP BY took
    about 60 ms. Other keys (strings) by that GROUP BY.
    """
    column = spine.column(key)
    if pa.types.is_integer(column.type):
        array = column.combine_chunks()
        dtype = np.dtype(f"{'u' if pa.types.is_unsigned_integer(array.type) else 'i'}{array.type.bit_width // 8}")
        # From the buffer: pyarrow's to_numpy imports pandas (0.2 s) in a process that had not.
        values = np.sort(np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize))
        later = values[HOT_KEY_SPINE_ROWS:]
        hot = np.unique(later[later == values[: len(later)]])
        if not len(hot):
            return None
        keys = pa.Array.from_buffers(column.type, len(hot), [None, pa.py_buffer(hot)])  # no pandas import
        return pa.table({"key": keys})
    query = f"SELECT {quote(key)} AS key FROM {spine_view} GROUP BY ALL HAVING count(*) > {HOT_KEY_SPINE_ROWS}"
    table = con.sql(query).to_arrow_table()
    return table if table.num_rows else None


def match_unclean(
    con: duckdb.DuckDBPyConnection,
    plan: ExportPlan,
    spine_view: str,
    sources: dict[str, JoinSource],
    hot_keys: dict[int, str],
    progress: bool = False,
) -> tuple[dict[int, str], list[str]]:
    """For each join over unclean partitions, its match (ROW_COLUMN, POSITION, and _TIME, NULL), made before
    the export's statement, which then plans with its true size (`_Match`). Each result is an Arrow table
    registered on `con` (24 bytes a spine row, beside the spine's own Arrow table): DuckDB cannot spill a
    temporary table of an in-memory database, and the statements' results stream out. `progress`: a bar
    over the pairs' statement, the long one. Returns join index -> view, and the statements run, for the
    manifest."""
    views: dict[int, str] = {}
    ran: list[str] = []

    def register(name: str, sql: str, show: bool = False) -> pa.Table:
        ran.append(f"{name} = {sql}")
        table = run_with_progress(
            con, lambda: con.sql(sql).to_arrow_reader(_BATCH_ROWS).read_all(), plan.spine.rows, show, "matching"
        )
        con.register(name, table)
        return table

    for n, j in enumerate(plan.joins):
        source = sources[j.spec.table_name]
        if not source.unsure:
            continue
        ts = f"CAST(s.{quote(plan.timestamp_column)} AS TIMESTAMPTZ)"
        match = _Match(j, n, source, spine_view, ts, hot_keys.get(n))
        pairs, ambiguous = f"__fstore_pairs{n}", f"__fstore_ambiguous{n}"
        views[n] = pairs
        found = register(pairs, match.pairs(), progress)
        if found.column(_TIME).null_count < found.num_rows:  # some latest event times have several rows
            register(ambiguous, match.ambiguous(pairs))
            views[n] = f"__fstore_matched{n}"
            register(views[n], match.settled(pairs, ambiguous))
    return views, ran


def duckdb_export_sql(
    plan: ExportPlan,
    spine_view: str,
    sources: dict[str, JoinSource],
    hot_keys: dict[int, str],
    aggregations: Sequence[str] = (),
    matched: dict[int, str] | None = None,
) -> str:
    """`sources`: table name -> its `join_source`; `hot_keys`: join index -> a view (one column `key`, the
    spine's type) of the spine keys with more than HOT_KEY_SPINE_ROWS rows, for the joins that have any;
    `aggregations`: per `plan.aggregations`, its `duckdb_aggregation_sql` (one row per spine row);
    `matched`: join index -> its match already made (`match_unclean`), for the joins over unclean partitions."""
    ts = f"CAST(s.{quote(plan.timestamp_column)} AS TIMESTAMPTZ)"
    ctes: list[str] = []
    select = [f"s.{quote(c)}" for c in plan.spine.columns]
    joins: list[str] = []
    for n, j in enumerate(plan.joins):
        source = sources[j.spec.table_name]
        if matched and n in matched:
            ctes.append(
                f"__match{n} AS (\n  SELECT {ROW_COLUMN}, {POSITION} FROM {matched[n]} WHERE {_TIME} IS NULL\n)"
            )
        else:
            ctes.append(f"__history{n} AS (\n  {source.narrow}\n)")
            ctes.append(f"__match{n} AS (\n  {_Match(j, n, source, spine_view, ts, hot_keys.get(n)).clean()}\n)")
        features = ", ".join(f"w.{quote(f.name)}" for f in j.features)
        ctes.append(
            f"__found{n} AS (\n  SELECT m.{ROW_COLUMN}, {features}\n  FROM __match{n} AS m\n"
            f"  JOIN (\n  {source.wide}\n  ) AS w ON w.{POSITION} = m.{POSITION}\n)"
        )
        select += [f"j{n}.{quote(f.name)} AS {quote(c)}" for f, c in zip(j.features, j.columns, strict=True)]
        joins.append(f"LEFT JOIN __found{n} AS j{n} ON j{n}.{ROW_COLUMN} = s.{ROW_COLUMN}")
    return spine_query(plan, spine_view, ctes, select, joins, aggregations, quote)


# A pair's order as one HUGEINT: its event time (µs, shifted positive: years 1 to 9999 stay below 2^62 in
# magnitude) in the upper 64 bits, MAX_POSITION - its position in the lower ones. The greatest of a spine
# row's pairs names its latest event time and the least position among that time's rows; `arg_max` over
# the event time and position names the greatest.
_TIME_OFFSET = 1 << 62
_MAX_POSITION = (1 << 63) - 1
_LOW_BITS = (1 << 64) - 1
_BATCH_ROWS = 1 << 20
_TIME = "__fstore_tied_time"  # in a pairs table: the latest event time (µs) when two rows have it, else NULL


@dataclass(frozen=True)
class _Match:
    """(spine row, position of its history row) for the spine rows that have one.

    Over clean partitions only, `__history{n}` holds one row per key and event time, so the latest pair is
    the answer (`clean`: arg_max in the export's statement). Rows of unclean partitions come into it as they
    are, without the deduplication windows (which were most of an export over fresh segments): each spine
    row takes its latest event time's greatest and least position in one aggregate (`pairs`); when they
    differ (a tie, or a message delivered twice), only that key and event time is settled by the windows,
    over that group's rows (`ambiguous`, `settled`). A message's copies have the same bytes, hence the same
    key and event time, so deduplicating by message id within the group is deduplicating it in its
    partition. These run as statements of their own (`match_unclean`), so that the export's statement plans
    its fetch with their true sizes."""

    join: EntityJoin
    n: int
    source: JoinSource
    spine_view: str
    ts: str
    hot: str | None

    def clean(self) -> str:
        key, time = self.key, self.time
        hot_history = f"(SELECT * FROM __history{self.n} WHERE {key} IN ({self.hot_keys}))"
        return (
            f"SELECT s.{ROW_COLUMN}, arg_max(h.{POSITION}, h.{time}) AS {POSITION}\n"
            f"  FROM {self.spine}\n  JOIN {self.pairs_of(f'__history{self.n}')}\n  GROUP BY s.{ROW_COLUMN}"
            + self.by_asof(hot_history, "")
        )

    def pairs(self) -> str:
        """ROW_COLUMN, POSITION and _TIME (NULL unless the latest event time has several rows)."""
        key, time = self.key, self.time
        upper = f"(epoch_us(h.{time}) + {_TIME_OFFSET})::HUGEINT << 64"
        latest = f"arg_max(h.{POSITION}, ({upper}) | h.{POSITION})"
        least = f"max(({upper}) | ({_MAX_POSITION} - h.{POSITION}))"
        tied = f"CASE WHEN {POSITION} <> {_MAX_POSITION} - (__least & {_LOW_BITS})::BIGINT"
        tied += f" THEN (__least >> 64)::BIGINT - {_TIME_OFFSET} END"
        hot_history = ""
        if self.hot:
            clean = (
                [f"SELECT * FROM ({self.source.clean}) WHERE {key} IN ({self.hot_keys})"] if self.source.clean else []
            )
            hot_history = (
                "(" + "\n  UNION ALL ".join([*clean, self.settle(f"WHERE u.{key} IN ({self.hot_keys})")]) + ")"
            )
        history = f"(\n  {self.source.narrow}\n  )"
        return (
            f"SELECT {ROW_COLUMN}, {POSITION}, {tied} AS {_TIME} FROM (\n"
            f"  SELECT s.{ROW_COLUMN}, {latest} AS {POSITION}, {least} AS __least\n"
            f"  FROM {self.spine}\n  JOIN {self.pairs_of(history)}\n  GROUP BY s.{ROW_COLUMN}\n)"
            + self.by_asof(hot_history, f", NULL::BIGINT AS {_TIME}")
        )

    def ambiguous(self, pairs: str) -> str:
        """The spine rows whose latest event time has several rows: ROW_COLUMN, the key, _TIME."""
        key = self.key
        return (
            f"SELECT p.{ROW_COLUMN}, CAST(s.{key} AS {self.key_type}) AS {key}, p.{_TIME}\n"
            f"FROM {pairs} AS p JOIN {self.spine_view} AS s ON s.{ROW_COLUMN} = p.{ROW_COLUMN}\n"
            f"WHERE p.{_TIME} IS NOT NULL"
        )

    def settled(self, pairs: str, ambiguous: str) -> str:
        """The match: `pairs`' unambiguous rows, and the tie-break winner of the ambiguous ones' groups."""
        key, time = self.key, self.time
        group = f"u.{key} = a.{key} AND epoch_us(u.{time}) = a.{_TIME}"
        return (
            f"SELECT {ROW_COLUMN}, {POSITION}, NULL::BIGINT AS {_TIME} FROM {pairs} WHERE {_TIME} IS NULL\n"
            f"UNION ALL\n"
            f"SELECT a.{ROW_COLUMN}, u.{POSITION}, NULL::BIGINT AS {_TIME} FROM {ambiguous} AS a\n"
            f"JOIN (\n  {self.settle(f'SEMI JOIN {ambiguous} AS a ON {group}')}\n) AS u ON {group}"
        )

    def settle(self, restrict: str) -> str:
        """The tie-break winner per key and event time among the unclean partitions' rows (aliased `u`) that
        `restrict` keeps: each message id at its first ingest, then the latest ingest time, the greatest
        message id. One partition at a time (a group never spans two)."""
        key, time = self.key, self.time
        first_ingest = f"QUALIFY row_number() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1"
        latest = f"PARTITION BY {key}, {time} ORDER BY {INGEST_TIME} DESC, {MESSAGE_ID} DESC"
        return "\n  UNION ALL\n  ".join(
            f"SELECT {key}, {time}, {POSITION} FROM (\n    SELECT * FROM ({rows}) AS u {restrict} {first_ingest}\n  )"
            f" QUALIFY row_number() OVER ({latest}) = 1"
            for rows in self.source.unsure
        )

    @property
    def key(self) -> str:
        return quote(self.join.spec.key.name)

    @property
    def time(self) -> str:
        return quote(self.join.spec.event_time.name)

    @property
    def key_type(self) -> str:
        return "BIGINT" if self.join.spec.key.kind == "int64" else "VARCHAR"

    @property
    def spine(self) -> str:
        """The spine rows the hash join takes: all but the hot keys'."""
        key = self.key
        return f"{self.spine_view} AS s" + (f" ANTI JOIN {self.hot} AS hot ON s.{key} = hot.key" if self.hot else "")

    def pairs_of(self, history: str) -> str:
        key, time = self.key, self.time
        on = f"{history} AS h ON h.{key} = CAST(s.{key} AS {self.key_type}) AND h.{time} <= {self.ts}"
        return on + (f" AND {self.fresh_enough}" if self.fresh_enough else "")

    @property
    def hot_keys(self) -> str:
        return f"SELECT CAST(key AS {self.key_type}) FROM {self.hot}"

    @property
    def fresh_enough(self) -> str:
        ttl = self.join.spec.ttl_seconds
        return f"h.{self.time} > {self.ts} - INTERVAL '{ttl} seconds'" if ttl else ""

    def by_asof(self, hot_history: str, extra: str) -> str:
        """Hot keys' spine rows by an ASOF join over `hot_history` (their keys' tie-break winners)."""
        if self.hot is None:
            return ""
        key, time = self.key, self.time
        return (
            f"\n  UNION ALL\n"
            f"  SELECT s.{ROW_COLUMN}, h.{POSITION}{extra}\n"
            f"  FROM (SELECT s.* FROM {self.spine_view} AS s SEMI JOIN {self.hot} AS hot ON s.{key} = hot.key) AS s\n"
            f"  ASOF JOIN {hot_history} AS h ON h.{key} = CAST(s.{key} AS {self.key_type}) AND {self.ts} >= h.{time}"
            + (f"\n  WHERE {self.fresh_enough}" if self.fresh_enough else "")
        )
