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

from fstore.schema.tables import INGEST_TIME, MESSAGE_ID
from fstore.store.offline.export import EntityJoin, ExportPlan, quote
from fstore.store.offline.spine import ROW_COLUMN
from fstore.store.offline.sql import (
    SUPERSEDED_AT,
    duckdb_file_list,
    history_filters,
    spine_query,
    time_range_filters,
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
    """One table as the join reads it: `narrow` (key, event time, POSITION; one row per key and event time,
    the tie-break winner) and `wide` (POSITION and the join's features, for every row `narrow` may name)."""

    narrow: str
    wide: str


def join_source(join: EntityJoin, sources: Sources, bounds: tuple[int, int] | None, empty_view: str) -> JoinSource:
    """`sources` as `_sources(..., numbered=True)` lists them; `bounds`: the spine's time range (µs)."""
    key, time = quote(join.spec.key.name), quote(join.spec.event_time.name)
    features = ", ".join(quote(f.name) for f in join.features)
    where = " AND ".join(history_filters(join, bounds, "duckdb"))
    clean, partitions = _reads(sources)
    narrow: list[str] = []
    if clean and join.high_water_mark is not None:
        mark = timestamp_literal(join.high_water_mark, "duckdb")
        narrow.append(
            f"SELECT {key}, {time}, {clean.position} AS {POSITION} FROM {clean.relation}\n"
            f"    WHERE {where} AND ({SUPERSEDED_AT} IS NULL OR {SUPERSEDED_AT} > {mark})"
        )
    first_ingest = f"QUALIFY row_number() OVER (PARTITION BY {MESSAGE_ID} ORDER BY {INGEST_TIME}) = 1"
    latest = f"PARTITION BY {key}, {time} ORDER BY {INGEST_TIME} DESC, {MESSAGE_ID} DESC"
    for unsure in partitions:
        rows = "\n    UNION ALL ".join(
            f"SELECT {key}, {time}, {INGEST_TIME}, {MESSAGE_ID}, {r.position} AS {POSITION} FROM {r.relation}"
            f" WHERE {where}"
            for r in unsure
        )
        narrow.append(
            f"SELECT {key}, {time}, {POSITION} FROM (\n    SELECT * FROM ({rows}) {first_ingest}\n  )"
            f" QUALIFY row_number() OVER ({latest}) = 1"
        )
    reads = ([clean] if clean else []) + [r for unsure in partitions for r in unsure]
    # The fetch reads only matched positions: no high-water mark needed (its column costs a decode per row);
    # the time range stays, for row-group pruning. By name, with the (empty) table of the current schema:
    # files older than a column lack it.
    pruning = " AND ".join(time_range_filters(join, bounds, "duckdb"))
    wide = [f"SELECT {r.position} AS {POSITION}, * FROM {r.relation} WHERE {pruning}" for r in reads]
    wide.append(f"SELECT NULL::BIGINT AS {POSITION}, * FROM {empty_view}")
    if not narrow:
        narrow.append(f"SELECT {key}, {time}, NULL::BIGINT AS {POSITION} FROM {empty_view}")
    rows = "\n    UNION ALL BY NAME\n    ".join(wide)
    return JoinSource("\n  UNION ALL\n  ".join(narrow), f"SELECT {POSITION}, {features} FROM (\n    {rows}\n  )")


@dataclass(frozen=True)
class _Read:
    relation: str
    position: str


def _reads(sources: Sources) -> tuple[_Read | None, list[list[_Read]]]:
    """The clean files' read, then per mixed partition its reads, each with its position expression: files
    and journals are numbered in that order."""
    clean = _Read(_parquet(sources.clean), _position("file_index", "file_row_number")) if sources.clean else None
    first, partitions = len(sources.clean), []
    for p in sources.partitions:
        reads = [_Read(_parquet(p.files), _position(f"{first} + file_index", "file_row_number"))] if p.files else []
        first += len(p.files)
        if p.journal:
            reads.append(_Read(p.journal, _position(str(first), JOURNAL_ROW)))
            first += 1
        partitions.append(reads)
    return clean, partitions


def _parquet(files: Sequence[str]) -> str:
    return f"read_parquet({duckdb_file_list(files)}, union_by_name = true, file_row_number = true)"


def _position(file: str, row: str) -> str:
    return f"((({file})::BIGINT << {_FILE_SHIFT}) | {row})"


def duckdb_export_sql(
    plan: ExportPlan,
    spine_view: str,
    sources: dict[str, JoinSource],
    hot_keys: dict[int, str],
    aggregations: Sequence[str] = (),
) -> str:
    """`sources`: table name -> its `join_source`; `hot_keys`: join index -> a view (one column `key`, the
    spine's type) of the spine keys with more than HOT_KEY_SPINE_ROWS rows, for the joins that have any;
    `aggregations`: per `plan.aggregations`, its `duckdb_aggregation_sql` (one row per spine row)."""
    ts = f"CAST(s.{quote(plan.timestamp_column)} AS TIMESTAMPTZ)"
    ctes: list[str] = []
    select = [f"s.{quote(c)}" for c in plan.spine.columns]
    joins: list[str] = []
    for n, j in enumerate(plan.joins):
        source = sources[j.spec.table_name]
        ctes.append(f"__history{n} AS (\n  {source.narrow}\n)")
        ctes.append(f"__match{n} AS (\n  {_match(j, n, spine_view, ts, hot_keys.get(n))}\n)")
        features = ", ".join(f"w.{quote(f.name)}" for f in j.features)
        ctes.append(
            f"__found{n} AS (\n  SELECT m.{ROW_COLUMN}, {features}\n  FROM __match{n} AS m\n"
            f"  JOIN (\n  {source.wide}\n  ) AS w ON w.{POSITION} = m.{POSITION}\n)"
        )
        select += [f"j{n}.{quote(f.name)} AS {quote(c)}" for f, c in zip(j.features, j.columns, strict=True)]
        joins.append(f"LEFT JOIN __found{n} AS j{n} ON j{n}.{ROW_COLUMN} = s.{ROW_COLUMN}")
    return spine_query(plan, spine_view, ctes, select, joins, aggregations, quote)


def _match(join: EntityJoin, n: int, spine_view: str, ts: str, hot: str | None) -> str:
    """(spine row, position of its history row) for the spine rows that have one."""
    key, time = quote(join.spec.key.name), quote(join.spec.event_time.name)
    key_type = "BIGINT" if join.spec.key.kind == "int64" else "VARCHAR"
    spine_key = f"CAST(s.{key} AS {key_type})"
    fresh_enough = f"h.{time} > {ts} - INTERVAL '{join.spec.ttl_seconds} seconds'" if join.spec.ttl_seconds else ""
    spine = f"{spine_view} AS s" + (f" ANTI JOIN {hot} AS hot ON s.{key} = hot.key" if hot else "")
    pairs = f"h.{key} = {spine_key} AND h.{time} <= {ts}" + (f" AND {fresh_enough}" if fresh_enough else "")
    by_hash = (
        f"SELECT s.{ROW_COLUMN}, arg_max(h.{POSITION}, h.{time}) AS {POSITION}\n"
        f"  FROM {spine}\n  JOIN __history{n} AS h ON {pairs}\n  GROUP BY s.{ROW_COLUMN}"
    )
    if hot is None:
        return by_hash
    hot_history = f"(SELECT * FROM __history{n} WHERE {key} IN (SELECT CAST(key AS {key_type}) FROM {hot}))"
    return (
        f"{by_hash}\n  UNION ALL\n"
        f"  SELECT s.{ROW_COLUMN}, h.{POSITION}\n"
        f"  FROM (SELECT s.* FROM {spine_view} AS s SEMI JOIN {hot} AS hot ON s.{key} = hot.key) AS s\n"
        f"  ASOF JOIN {hot_history} AS h ON h.{key} = {spine_key} AND {ts} >= h.{time}"
        + (f"\n  WHERE {fresh_enough}" if fresh_enough else "")
    )
