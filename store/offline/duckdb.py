"""The embedded offline store: parquet segments on local disk (segments.py), queried with in-memory DuckDB.

Writes are pyarrow only: a large batch becomes a parquet segment, a small one (the streaming job's) is
appended to this process's journal in its partition, which becomes a segment when full or old (segments.py).
Reads open a fresh in-memory DuckDB connection per call, so any number of processes can read while ingest
writes; they see journals up to their last complete batch.
Deduplication by message id: each written batch is deduplicated, and ids this process wrote recently are
skipped (recent.py); every read then deduplicates partitions holding fresh segments, keeping each message
id's earliest ingest, and compaction (compaction.py) folds those partitions into one deduplicated file,
after which reads skip the work.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import duckdb
import numpy as np
import pyarrow as pa

from fstore.errors import SchemaError, SettingsError
from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import INGEST_TIME, MESSAGE_ID, arrow_schema
from fstore.store.events import DeadLetter, utc_from_micros
from fstore.store.offline import segments
from fstore.store.offline.aggregation_sql import aggregation_history_filters, duckdb_aggregation_sql
from fstore.store.offline.base import Compaction, CompactionResult, LedgerEntry, OfflineStore
from fstore.store.offline.compaction import CompactionPolicy, Compactor, escape, partitions_to_fold
from fstore.store.offline.duckdb_join import (
    HOT_KEYS,
    JOURNAL_ROW,
    JoinSource,
    MixedPartition,
    Sources,
    duckdb_export_sql,
    find_hot_keys,
    join_source,
    match_unclean,
    partition_days,
)
from fstore.store.offline.export import check_output, copy_counts, finish_export, plan_export, quote
from fstore.store.offline.journal import Journal, JournalGone, journal_to_segment, quarantined, read_journals
from fstore.store.offline.manifest import ExportOptions, Manifest
from fstore.store.offline.memory import default_memory_limit
from fstore.store.offline.progress import execute_with_progress
from fstore.store.offline.recent import RecentMessageIds
from fstore.store.offline.schema import DEAD_LETTER_SCHEMA, DEAD_LETTERS_TABLE, dead_letters_to_table
from fstore.store.offline.spine import row_numbers
from fstore.store.offline.sql import (
    duckdb_history,
    duckdb_latest_sql,
    event_time_range,
    latest_schema,
)

SPINE_VIEW = "__fstore_spine"
READ_ATTEMPTS = 3  # a compaction may delete a file between listing and reading it: list again and retry
ROW_GROUP_ROWS = 122_880
_EPOCH_DAY = date(1970, 1, 1)
URL_OPTIONS = ("memory_limit", "threads", "temp_directory", "compact_after", "fsync")
# `latest_rows`: its memory limit when the store sets none (DuckDB's own default is most of the machine's
# memory), and rows per streamed batch.
LATEST_BATCH_ROWS = 50_000


class DuckDBOfflineStore(OfflineStore):
    def __init__(
        self,
        root: Path,
        registry: Registry,
        *,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_directory: Path | None = None,
        policy: CompactionPolicy | None = None,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync  # written batches (journal frames, segments) are on the disk before events are acked
        self.registry = registry
        self.memory_limit = memory_limit
        self.threads = threads
        self.temp_directory = temp_directory or self.root / ".tmp"
        self.policy = policy or CompactionPolicy()
        self._journals: dict[Path, tuple[EntitySpec, Journal]] = {}  # by partition
        self._journal_lock = threading.Lock()
        self._recent = RecentMessageIds()
        self._compactor = Compactor(self.policy, self._connect)

    @classmethod
    def from_url(cls, url: str, registry: Registry) -> DuckDBOfflineStore:
        """`duckdb:///relative/path`, `duckdb:////absolute/path`, with optional query parameters
        `memory_limit=2GB`, `threads=4`, `temp_directory=/path`, `compact_after=256`, `fsync=false`."""
        if not url.startswith("duckdb:///"):
            raise SettingsError(f"offline: {url!r} must look like duckdb:///path")
        path = url[len("duckdb:///") :].split("?", 1)[0]
        query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
        unknown = set(query) - set(URL_OPTIONS)
        if unknown or not path:
            raise SettingsError(f"offline: {url!r}: unknown parameter(s) {', '.join(sorted(unknown))} or no path")
        try:
            policy = CompactionPolicy(compact_after=int(query.get("compact_after", CompactionPolicy.compact_after)))
            return cls(
                Path(path),
                registry,
                memory_limit=query.get("memory_limit"),
                threads=int(query["threads"]) if "threads" in query else None,
                temp_directory=Path(query["temp_directory"]) if "temp_directory" in query else None,
                policy=policy,
                fsync=query.get("fsync", "true").lower() not in ("false", "0", "no"),
            )
        except ValueError as exc:
            raise SettingsError(f"offline: {url!r}: {exc}") from None

    @property
    def compaction(self) -> Compaction:
        return self

    # --- writes ------------------------------------------------------------------------------------------

    def write(self, spec: EntitySpec, rows: pa.Table) -> int:
        table = conform(rows, arrow_schema(spec), f"rows for {spec.ref}")
        for column in (spec.key.name, spec.event_time.name, INGEST_TIME, MESSAGE_ID):
            if table.column(column).null_count:
                raise SchemaError(f"rows for {spec.ref}: column {column!r} has nulls; every row needs one")
        table = self._recent.new_rows(table)
        if table.num_rows == 0:
            return 0
        table_dir = self.root / spec.table_name
        touched = []
        for day, part in split_by_day(table, spec.event_time.name):
            partition_dir = segments.partition_dir(table_dir, day)
            if part.num_rows < self.policy.journal_below_rows:
                self._journal(spec, partition_dir, part)
            else:
                segments.write_segment(partition_dir, part, fsync=self.fsync)
                touched.append(partition_dir)
        self._recent.remember(table.column(MESSAGE_ID).to_pylist())
        for partition_dir in touched:
            self._compactor.after_segment(spec, partition_dir)
        return int(table.num_rows)

    def _journal(self, spec: EntitySpec, partition_dir: Path, part: pa.Table) -> None:
        """Append to this process's journal in the partition; seal journals that are full or old, and turn
        them into segments in the background."""
        if part.schema.metadata:
            part = part.replace_schema_metadata(None)
        with self._journal_lock:
            held = self._journals.get(partition_dir)
            if held is not None and arrow_schema(held[0]) != arrow_schema(spec):
                # The schema changed while the job runs (a field added): a journal holds one schema.
                del self._journals[partition_dir]
                held[1].seal()
                self._compactor.submit(self._compactor.convert_journals, held[0], partition_dir)
            if partition_dir not in self._journals:
                self._journals[partition_dir] = (spec, Journal(partition_dir, arrow_schema(spec), fsync=self.fsync))
                self._compactor.submit(self._compactor.convert_journals, spec, partition_dir)  # dead writers'
            try:
                self._journals[partition_dir][1].append(part)
            except JournalGone:  # its partition was deleted under us: a new journal, in a recreated directory
                self._journals[partition_dir] = (spec, Journal(partition_dir, arrow_schema(spec), fsync=self.fsync))
                self._journals[partition_dir][1].append(part)
            now = time.monotonic()
            done = [path for path, (_, j) in self._journals.items() if self.policy.journal_done(j, now)]
            for path in done:
                owner, journal = self._journals.pop(path)
                journal.seal()
                self._compactor.submit(self._compactor.convert_journals, owner, path)

    def flush_journals(self) -> int:
        """Seal this store's journals and turn them into segments now; returns how many."""
        with self._journal_lock:
            sealed, self._journals = self._journals, {}
            for _, journal in sealed.values():
                journal.seal()
        for _, journal in sealed.values():
            journal_to_segment(journal.path)
        return len(sealed)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        if not letters:
            return 0
        table = dead_letters_to_table(letters)
        for day, part in split_by_day(table, INGEST_TIME):
            segments.write_segment(segments.partition_dir(self.root / DEAD_LETTERS_TABLE, day), part)
        return int(table.num_rows)

    # --- compaction --------------------------------------------------------------------------------------

    def compact(self, spec: EntitySpec, *, min_fresh: int = 1) -> CompactionResult:
        """Fold every partition with at least `min_fresh` fresh segments into one deduplicated file, sorted by
        key and event time. This store's journals become segments first, and so do journals no writer holds
        (writers that died); journals of live writers stay. Safe while ingest writes and exports read; a
        partition another process is compacting is skipped."""
        self.flush_journals()
        partitions = files = rows = 0
        for partition_dir in partitions_to_fold(self.root / spec.table_name, min_fresh):
            merged = self._compactor.fold(spec, partition_dir)
            if merged is not None:
                partitions, files, rows = partitions + 1, files + merged[0], rows + merged[1]
        return CompactionResult(spec.table_name, partitions, files, rows)

    def close(self) -> None:
        """Turn this store's journals into segments, after background work in progress."""
        self._compactor.close()
        self.flush_journals()

    # --- reads -------------------------------------------------------------------------------------------

    def history(self, spec: EntitySpec) -> pa.Table:
        order = ", ".join(quote(c) for c in (spec.key.name, spec.event_time.name, INGEST_TIME, MESSAGE_ID))

        def query(con: duckdb.DuckDBPyConnection) -> pa.Table:
            source = self._history_sql(con, spec, [])
            return con.sql(f"SELECT * FROM ({source}) ORDER BY {order}").to_arrow_table()

        return conform(self._read(query), arrow_schema(spec), spec.table_name, fill_missing=True)

    def latest_rows(
        self, spec: EntitySpec, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[pa.RecordBatch]:
        """`sql.duckdb_latest_sql` over the table's files, within the store's memory limit (memory.py),
        spilling to the temp directory beyond it. Every file is read before the first
        batch comes out (the tie-break window needs all its candidates), so `_read` retries the query when a
        compaction removes a file meanwhile, as for any read; the batches then stream from DuckDB's result,
        on a connection kept open until the last one."""
        filters = event_time_range(quote(spec.event_time.name), start, end, "duckdb")
        return self._stream(
            lambda con: duckdb_latest_sql(spec.key.name, spec.event_time.name, self._history_sql(con, spec, filters)),
            latest_schema(spec),
            spec.table_name,
        )

    def history_batches(self, spec: EntitySpec, start: datetime | None = None) -> Iterator[pa.RecordBatch]:
        """As `latest_rows`: every file is read before the first batch (the message-id window needs all its
        candidates)."""
        filters = event_time_range(quote(spec.event_time.name), start, None, "duckdb")
        return self._stream(lambda con: self._history_sql(con, spec, filters), arrow_schema(spec), spec.table_name)

    def _stream(
        self, query: Callable[[duckdb.DuckDBPyConnection], str], schema: pa.Schema, what: str
    ) -> Iterator[pa.RecordBatch]:
        """`query`'s rows as `schema` (columns a file lacks read as nulls), in batches of LATEST_BATCH_ROWS:
        `_read` retries until the first batch is out, then the rest stream on the same connection."""

        def first(con: duckdb.DuckDBPyConnection) -> tuple[Iterator[pa.RecordBatch], pa.RecordBatch | None]:
            batches = iter(con.sql(query(con)).to_arrow_reader(LATEST_BATCH_ROWS))
            return batches, next(batches, None)

        with self._connect() as con:
            batches, batch = self._read(first, connection=con)
            if batch is not None:
                yield from conformed_batches(schema, what, itertools.chain([batch], batches))

    def dead_letters(self) -> pa.Table:
        def query(con: duckdb.DuckDBPyConnection) -> pa.Table:
            files = [str(p) for part in segments.partitions(self.root / DEAD_LETTERS_TABLE) for p in part.files]
            con.register("__fstore_empty", empty_table(DEAD_LETTER_SCHEMA))
            source = duckdb_history([], files, [], "__fstore_empty")
            return con.sql(f"SELECT * FROM ({source}) ORDER BY {INGEST_TIME}, {MESSAGE_ID}").to_arrow_table()

        return conform(self._read(query), DEAD_LETTER_SCHEMA, "dead letters")

    def ledger(self) -> list[LedgerEntry]:
        entries = []
        for entity, version, table_dir in segments.table_dirs(self.root):
            spec = self._spec_or_none(entity, version)
            stats = self._read(lambda con, d=table_dir, s=spec: _table_stats(con, d, s))
            damaged = len(quarantined(table_dir))
            if stats[0] or damaged:
                rows, first, last, ingested = stats
                entry = LedgerEntry(entity, version, int(rows), _utc(first), _utc(last), _utc(ingested), damaged)
                entries.append(entry)
        return entries

    def high_water_mark(self, spec: EntitySpec) -> int | None:
        """Max ingest time (µs) stored for the entity version; None when it has no rows."""
        listing = segments.listing(self.root / spec.table_name)
        if not listing.journals:  # the footers alone, without opening DuckDB (20-30 ms to connect and close)
            footers = segments.max_from_footers([str(p) for p in listing.clean + listing.mixed], INGEST_TIME)
            if footers is not None or listing.empty:
                return footers

        def query(con: duckdb.DuckDBPyConnection) -> int | None:
            sources = _sources(con, self.root / spec.table_name)
            if sources.empty:
                return None
            files, rows = sources.clean + sources.mixed, []
            footers = segments.max_from_footers(files, INGEST_TIME)  # 8 ms for 30 files, a scan took 130
            if footers is not None:
                rows.append(f"SELECT make_timestamptz({footers}::BIGINT) AS t")
            elif files:
                rows.append(f"SELECT max({INGEST_TIME}) AS t FROM read_parquet({_file_list(files)})")
            if sources.journal:
                rows.append(f"SELECT max({INGEST_TIME}) AS t FROM {sources.journal}")
            row = con.execute(f"SELECT epoch_us(max(t)) FROM ({' UNION ALL '.join(rows)})").fetchone()
            return None if row is None or row[0] is None else int(row[0])

        result: int | None = self._read(query)
        return result

    # --- export ------------------------------------------------------------------------------------------

    def export_training_set(
        self, spine: Any, features: Sequence[str] | None, out: Path, options: ExportOptions | None = None
    ) -> Manifest:
        options = options or ExportOptions()
        plan = plan_export(self.registry, spine, features, options, self.high_water_mark)
        out = Path(out)
        check_output(out, plan)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        spine_table = plan.spine.table

        def run(con: duckdb.DuckDBPyConnection) -> tuple[str, tuple[int, dict[str, int]] | None]:
            # DuckDB rewrites `QUALIFY row_number() ... = 1` into a hash aggregate of arg_min over every column;
            # over fresh segments (grouped by message id, a string) that took 1.7x the window's time.
            con.execute("SET disabled_optimizers = 'top_n_window_elimination'")
            con.register(SPINE_VIEW, spine_table)
            listed: dict[str, tuple[Sources, str]] = {}
            for j in plan.joins:
                days = partition_days(j, plan.spine.time_bounds)
                found = _sources(con, self.root / j.spec.table_name, numbered=True, days=days)
                listed[j.spec.table_name] = (found, self._register_empty(con, j.spec))

            def join_sources(complete_schema: bool) -> dict[str, JoinSource]:
                by_table = {}
                for j in plan.joins:
                    found, empty = listed[j.spec.table_name]
                    source = join_source(j, found, plan.spine.time_bounds, empty, complete_schema=complete_schema)
                    by_table[j.spec.table_name] = source
                return by_table

            sources = join_sources(False)
            hot_keys: dict[int, str] = {}
            for n, j in enumerate(plan.joins):
                if (hot := find_hot_keys(con, SPINE_VIEW, spine_table, j.spec.key.name)) is not None:
                    hot_keys[n] = f"{HOT_KEYS}{n}"
                    con.register(hot_keys[n], hot)
            aggregations = []
            for a in plan.aggregations:
                source = a.family.source
                files = _sources(con, self.root / source.table_name)
                empty = self._register_empty(con, source)
                filters = aggregation_history_filters(a, plan.spine.time_bounds)
                history = duckdb_history(files.clean, files.mixed, filters, empty, files.journal)
                spine_rows = f"SELECT * FROM {SPINE_VIEW}"
                aggregations.append(
                    duckdb_aggregation_sql(a.family, a.features, a.columns, spine_rows, history, plan.timestamp_column)
                )
            show = options.progress and sys.stderr.isatty()
            matched, ran = match_unclean(con, plan, SPINE_VIEW, sources, hot_keys, show)
            # RETURN_STATS: the manifest's row and null counts without reading the file back.
            options_sql = f"FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_ROWS}, RETURN_STATS"
            target = escape(str(tmp))
            sql = duckdb_export_sql(plan, SPINE_VIEW, sources, hot_keys, aggregations, matched)
            try:
                returned = execute_with_progress(
                    con, f"COPY ({sql}) TO '{target}' ({options_sql})", plan.spine.rows, show
                )
            except duckdb.BinderException:  # every file read predates a feature (join_source says)
                sql = duckdb_export_sql(plan, SPINE_VIEW, join_sources(True), hot_keys, aggregations, matched)
                returned = execute_with_progress(
                    con, f"COPY ({sql}) TO '{target}' ({options_sql})", plan.spine.rows, show
                )
            return ";\n".join([*ran, sql]), copy_counts(returned)

        closing: list[threading.Thread] = []
        try:
            try:
                sql, counted = self._read(run, options.memory_limit, options.threads, closing=closing)
                os.replace(tmp, out)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return finish_export(plan, out, sql, "duckdb", counted)
        finally:
            for thread in closing:
                thread.join()

    # --- plumbing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(
        self, memory_limit: str | None = None, threads: int | None = None, closing: list[threading.Thread] | None = None
    ) -> Iterator[Any]:
        """A fresh in-memory connection with the store's settings. With `closing`, it is closed on a thread
        appended there, for the caller to join: closing frees the query's memory (20-25 ms after an export of a
        million rows), which an export overlaps with hashing its output."""
        con = duckdb.connect()
        try:
            # Not config={"TimeZone": ...}: that makes DuckDB fetch the icu extension, which fails offline.
            con.execute("SET TimeZone='UTC'")
            limit = memory_limit or self.memory_limit or default_memory_limit()
            con.execute(f"SET memory_limit='{escape(limit)}'")
            if threads or self.threads:
                con.execute(f"SET threads={int(threads or self.threads or 1)}")
            self.temp_directory.mkdir(parents=True, exist_ok=True)
            con.execute(f"SET temp_directory='{escape(str(self.temp_directory))}'")
            yield con
        finally:
            if closing is None:
                con.close()
            else:
                closing.append(threading.Thread(target=con.close, name="fstore-duckdb-close"))
                closing[-1].start()

    def _read(
        self,
        query: Any,
        memory_limit: str | None = None,
        threads: int | None = None,
        connection: duckdb.DuckDBPyConnection | None = None,
        closing: list[threading.Thread] | None = None,
    ) -> Any:
        """Run `query(con)`, listing files afresh and retrying when a compaction removed one meanwhile; on
        `connection` when given (a caller that still reads from it afterwards), else on a fresh one (closed on
        a thread appended to `closing` when given, as `_connect` says)."""
        for attempt in range(READ_ATTEMPTS):
            opened = (
                self._connect(memory_limit, threads, closing)
                if connection is None
                else contextlib.nullcontext(connection)
            )
            with opened as con:
                try:
                    return query(con)
                except FileNotFoundError:  # a journal turned into a segment meanwhile
                    if attempt == READ_ATTEMPTS - 1:
                        raise
                except (duckdb.IOException, duckdb.InvalidInputException) as exc:
                    gone = "No files found" in str(exc) or "No such file" in str(exc)  # compacted meanwhile
                    if gone and attempt < READ_ATTEMPTS - 1:
                        pass
                    elif (damaged := segments.damaged_file(exc)) is not None and not gone:
                        raise damaged from None
                    else:
                        raise
            time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _history_sql(self, con: duckdb.DuckDBPyConnection, spec: EntitySpec, filters: list[str]) -> str:
        sources = _sources(con, self.root / spec.table_name)
        empty = self._register_empty(con, spec)
        return duckdb_history(sources.clean, sources.mixed, filters, empty, sources.journal)

    def _register_empty(self, con: duckdb.DuckDBPyConnection, spec: EntitySpec) -> str:
        """An empty table of the entity's schema: what a table with no files reads as."""
        name = f"__fstore_empty_{spec.table_name}"
        con.register(name, empty_table(arrow_schema(spec)))
        return name

    def _spec_or_none(self, entity: str, version: int) -> EntitySpec | None:
        try:
            return self.registry.get(entity, version)
        except LookupError:
            return None


def empty_table(schema: pa.Schema) -> pa.Table:
    """`schema.empty_table()` without its cost: that imports pandas (0.2 s, most of an export's fixed cost
    besides its statement, in a process that had not)."""
    return pa.Table.from_batches([], schema=schema)


def conform(table: pa.Table, schema: pa.Schema, what: str, *, fill_missing: bool = False) -> pa.Table:
    """`table` with exactly `schema`'s columns, in order and types; a missing column or an uncastable type
    raises SchemaError naming it (`fill_missing`: a column added to the schema later reads as nulls)."""
    if table.schema.equals(schema, check_metadata=False):
        return table  # the ingest job's batches (messages_to_table) already are: skip 13 casts per batch
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not fill_missing:
                raise SchemaError(f"{what}: missing column {field.name!r} (expected {', '.join(schema.names)})")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"{what}: column {field.name!r} is {column.type}, expected {field.type}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(None) if fill_missing else schema)


def conformed_batches(schema: pa.Schema, what: str, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A query's batches as `schema` (`arrow_schema(spec)`, `sql.latest_schema(spec)`): columns a file lacks
    read as nulls."""
    for batch in batches:
        yield from conform(pa.Table.from_batches([batch]), schema, what, fill_missing=True).to_batches()


def split_by_day(table: pa.Table, time_column: str) -> Iterator[tuple[date, pa.Table]]:
    """The table's rows grouped by the UTC date of `time_column`."""
    micros = table.column(time_column).cast(pa.int64()).to_numpy()
    days = micros // 86_400_000_000
    unique = np.unique(days)
    if len(unique) == 1:
        yield _EPOCH_DAY + timedelta(days=int(unique[0])), table
        return
    for day in unique.tolist():
        yield _EPOCH_DAY + timedelta(days=day), table.filter(pa.array(days == day))


def _sources(
    con: duckdb.DuckDBPyConnection, table_dir: Path, *, numbered: bool = False, days: segments.DayRange | None = None
) -> Sources:
    """`numbered` (the export's): also each mixed partition on its own, its journals' rows as a view carrying
    JOURNAL_ROW, each row's number (for the export's positions). `days`: those partitions only."""
    listing = segments.listing(table_dir, days)
    clean, mixed = [str(p) for p in listing.clean], [str(p) for p in listing.mixed]
    if not numbered:
        journal, view = read_journals(listing.journals), None
        if journal is not None:
            view = f"__fstore_journal_{table_dir.name}"
            con.register(view, journal)
        return Sources(clean, mixed, view)
    partitions = []
    for n, p in enumerate(listing.unclean):
        rows, numbered_view = read_journals(p.journals), None
        if rows is not None:
            numbered_view = f"__fstore_journal_{table_dir.name}_{n}"
            con.register(numbered_view, rows.append_column(JOURNAL_ROW, row_numbers(rows.num_rows)))
        partitions.append(MixedPartition([str(f) for f in p.files], numbered_view))
    return Sources(clean, mixed, None, tuple(partitions))


def _table_stats(con: duckdb.DuckDBPyConnection, table_dir: Path, spec: EntitySpec | None) -> Any:
    """Rows, first/last event time and last ingest time (µs) of one table, each message id once."""
    sources = _sources(con, table_dir)
    if sources.empty:
        return (0, None, None, None)
    source = duckdb_history(sources.clean, sources.mixed, [], "", sources.journal)
    t = quote(spec.event_time.name if spec else "event_time")
    return con.execute(
        f"SELECT count(*), epoch_us(min({t})), epoch_us(max({t})), epoch_us(max({INGEST_TIME})) FROM ({source})"
    ).fetchone()


def _file_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + escape(p) + "'" for p in paths) + "]"


def _utc(micros: int | None) -> Any:
    return None if micros is None else utc_from_micros(int(micros))
