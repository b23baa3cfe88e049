"""The embedded offline store: parquet segments on local disk (segments.py), queried with in-memory DuckDB.

Writes are pyarrow only: a large batch becomes a parquet segment, a small one (the streaming job's) is
appended to this process's journal in its partition, which becomes a segment when full or old (segments.py).
Reads open a fresh in-memory DuckDB connection per call, so any number of processes can read while ingest
writes; they see journals up to their last complete batch.
Deduplication by message id: each written batch is deduplicated, and ids this process wrote recently are
skipped (catches Pub/Sub redeliveries cheaply); every read then deduplicates partitions holding fresh
segments, keeping each message id's earliest ingest, and `compact` folds those partitions into one
deduplicated file, after which reads skip the work. Compaction runs on its own once a partition holds
`compact_after` fresh segments, and on demand with `fstore compact`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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
from fstore.store.offline.base import LedgerEntry, OfflineStore
from fstore.store.offline.export import finish_export, plan_export, quote
from fstore.store.offline.schema import DEAD_LETTER_SCHEMA, DEAD_LETTERS_TABLE, dead_letters_to_table
from fstore.store.offline.sql import (
    duckdb_compaction_sql,
    duckdb_export_source,
    duckdb_export_sql,
    duckdb_history,
    history_filters,
)

log = logging.getLogger("fstore.offline")

SPINE_VIEW = "__fstore_spine"
DEFAULT_COMPACT_AFTER = 256
RECENT_IDS = 200_000
READ_ATTEMPTS = 3  # a compaction may delete a file between listing and reading it: list again and retry
ROW_GROUP_ROWS = 122_880
JOURNAL_BELOW_ROWS = 1_000  # smaller batches are journaled; at 1,000 rows a segment costs ~1 µs a row
JOURNAL_MAX_ROWS = 100_000  # then the journal becomes a segment: readers hold journals in memory
JOURNAL_MAX_SECONDS = 60.0
PAST_DAY_RECOMPACT_SECONDS = 3_600.0
_EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class CompactionResult:
    table: str
    partitions: int
    files_merged: int
    rows: int


class DuckDBOfflineStore(OfflineStore):
    def __init__(
        self,
        root: Path,
        registry: Registry,
        *,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_directory: Path | None = None,
        compact_after: int = DEFAULT_COMPACT_AFTER,
        journal_below_rows: int = JOURNAL_BELOW_ROWS,
    ) -> None:
        self.root = Path(root)
        self.registry = registry
        self.memory_limit = memory_limit
        self.threads = threads
        self.temp_directory = temp_directory or self.root / ".tmp"
        self.compact_after = compact_after
        self.journal_below_rows = journal_below_rows
        self.journal_max_rows, self.journal_max_seconds = JOURNAL_MAX_ROWS, JOURNAL_MAX_SECONDS
        self.settle_past_days = True  # see _past_day_due
        self._journals: dict[Path, tuple[EntitySpec, segments.Journal]] = {}  # by partition
        self._journal_lock = threading.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_lock = threading.Lock()
        # Segments this process wrote per partition since it last looked: listing a partition on every small
        # streaming write cost more than writing the segment (measured), so we look every `compact_after / 4`.
        self._written_since_check: dict[Path, int] = {}
        # Compaction rewrites a whole day: off the write path, one at a time, so ingest never waits for it.
        self._compactor: ThreadPoolExecutor | None = None
        self._compacting: set[Path] = set()

    @classmethod
    def from_url(cls, url: str, registry: Registry) -> DuckDBOfflineStore:
        """`duckdb:///relative/path`, `duckdb:////absolute/path`, with optional query parameters
        `memory_limit=2GB`, `threads=4`, `temp_directory=/path`, `compact_after=256`."""
        if not url.startswith("duckdb:///"):
            raise SettingsError(f"offline: {url!r} must look like duckdb:///path")
        parsed = urlparse(url)
        path = url[len("duckdb:///") :].split("?", 1)[0]
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"memory_limit", "threads", "temp_directory", "compact_after"}
        if unknown or not path:
            raise SettingsError(f"offline: {url!r}: unknown parameter(s) {', '.join(sorted(unknown))} or no path")
        try:
            return cls(
                Path(path),
                registry,
                memory_limit=query.get("memory_limit"),
                threads=int(query["threads"]) if "threads" in query else None,
                temp_directory=Path(query["temp_directory"]) if "temp_directory" in query else None,
                compact_after=int(query.get("compact_after", DEFAULT_COMPACT_AFTER)),
            )
        except ValueError as exc:
            raise SettingsError(f"offline: {url!r}: {exc}") from None

    # --- writes ------------------------------------------------------------------------------------------

    def write(self, spec: EntitySpec, rows: pa.Table) -> int:
        table = conform(rows, arrow_schema(spec), f"rows for {spec.ref}")
        for column in (spec.key.name, spec.event_time.name, INGEST_TIME, MESSAGE_ID):
            if table.column(column).null_count:
                raise SchemaError(f"rows for {spec.ref}: column {column!r} has nulls; every row needs one")
        table = self._new_rows(table)
        if table.num_rows == 0:
            return 0
        table_dir = self.root / spec.table_name
        touched = []
        for day, part in split_by_day(table, spec.event_time.name):
            partition_dir = segments.partition_dir(table_dir, day)
            if part.num_rows < self.journal_below_rows:
                self._journal(spec, partition_dir, part)
            else:
                segments.write_segment(partition_dir, part)
                touched.append(partition_dir)
        self._remember(table.column(MESSAGE_ID).to_pylist())
        for partition_dir in touched:
            self._maybe_compact(spec, partition_dir)
        return int(table.num_rows)

    def _journal(self, spec: EntitySpec, partition_dir: Path, part: pa.Table) -> None:
        """Append to this process's journal in the partition; seal journals that are full or old, and turn
        them into segments in the background."""
        if part.schema.metadata:
            part = part.replace_schema_metadata(None)
        with self._journal_lock:
            if partition_dir not in self._journals:
                self._journals[partition_dir] = (spec, segments.Journal(partition_dir, arrow_schema(spec)))
                self._in_background(self._convert_journals, spec, partition_dir)  # any left by dead writers
            self._journals[partition_dir][1].append(part)
            now = time.monotonic()
            done = [
                path
                for path, (_, j) in self._journals.items()
                if j.rows >= self.journal_max_rows or now - j.opened >= self.journal_max_seconds
            ]
            for path in done:
                owner, journal = self._journals.pop(path)
                journal.seal()
                self._in_background(self._convert_journals, owner, path)

    def flush_journals(self) -> int:
        """Seal this store's journals and turn them into segments now; returns how many."""
        with self._journal_lock:
            sealed, self._journals = self._journals, {}
            for _, journal in sealed.values():
                journal.seal()
        for _, journal in sealed.values():
            segments.journal_to_segment(journal.path)
        return len(sealed)

    def _convert_journals(self, spec: EntitySpec, partition_dir: Path) -> None:
        """Turn the partition's unheld journals (sealed ones, or those of writers that died) into segments,
        then compact the partition if that is due."""
        converted = [segments.journal_to_segment(p) for p in segments.read_partition(partition_dir).journals]
        if any(converted) and self.compact_after > 0 and self._due(segments.read_partition(partition_dir)):
            self._compact_partition(spec, partition_dir)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        if not letters:
            return 0
        table = dead_letters_to_table(letters)
        for day, part in split_by_day(table, INGEST_TIME):
            segments.write_segment(segments.partition_dir(self.root / DEAD_LETTERS_TABLE, day), part)
        return int(table.num_rows)

    def _new_rows(self, table: pa.Table) -> pa.Table:
        """Each message id once (earliest ingest time), and none this process stored recently."""
        ids = table.column(MESSAGE_ID).to_pylist()
        ingest = table.column(INGEST_TIME).cast(pa.int64()).to_numpy()
        keep: dict[str, int] = {}
        with self._recent_lock:
            for i in np.argsort(ingest, kind="stable").tolist():
                if ids[i] not in keep and ids[i] not in self._recent:
                    keep[ids[i]] = i
        if len(keep) == len(ids):
            return table
        return table.take(pa.array(sorted(keep.values()), type=pa.int64()))

    def _remember(self, ids: list[str]) -> None:
        with self._recent_lock:
            for message_id in ids:
                self._recent[message_id] = None
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)

    # --- compaction --------------------------------------------------------------------------------------

    def compact(self, spec: EntitySpec, *, min_fresh: int = 1) -> CompactionResult:
        """Fold every partition with at least `min_fresh` fresh segments into one deduplicated file, sorted by
        key and event time. This store's journals become segments first, and so do journals no writer holds
        (writers that died); journals of live writers stay. Safe while ingest writes and exports read; a
        partition another process is compacting is skipped."""
        self.flush_journals()
        done = CompactionResult(spec.table_name, 0, 0, 0)
        for partition in segments.partitions(self.root / spec.table_name):
            if (len(partition.fresh) >= min_fresh or partition.journals) and not partition.is_clean:
                merged = self._compact_partition(spec, partition.path)
                if merged is not None:
                    done = CompactionResult(
                        spec.table_name, done.partitions + 1, done.files_merged + merged[0], done.rows + merged[1]
                    )
        return done

    def _maybe_compact(self, spec: EntitySpec, partition_dir: Path) -> None:
        if self.compact_after <= 0:
            return
        written = self._written_since_check.get(partition_dir, 0) + 1
        if written < max(1, self.compact_after // 4):
            self._written_since_check[partition_dir] = written
            return
        self._written_since_check[partition_dir] = 0
        if partition_dir in self._compacting or not self._due(segments.read_partition(partition_dir)):
            return
        with self._recent_lock:  # writers may share this store across threads
            if partition_dir in self._compacting:
                return
            self._compacting.add(partition_dir)
        self._in_background(self._compact_in_background, spec, partition_dir)

    def _in_background(self, work: Any, spec: EntitySpec, partition_dir: Path) -> None:
        with self._recent_lock:
            if self._compactor is None:
                self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fstore-compact")
            self._compactor.submit(self._logged, work, spec, partition_dir)

    @staticmethod
    def _logged(work: Any, spec: EntitySpec, partition_dir: Path) -> None:
        try:
            work(spec, partition_dir)
        except Exception:  # losing nothing: journals and segments stay as they are, the next attempt retries
            log.exception("background %s of %s failed; its files are kept as they are", work.__name__, partition_dir)

    def _due(self, partition: segments.Partition) -> bool:
        """Compaction rewrites the whole day, so rewriting it every `compact_after` segments would cost O(n²)
        over a busy day (measured: the streaming job fell from 90% to 79% of the runner's ceiling between
        30,000 and 100,000 events). Rewrite only when the fresh data is at least half the compacted file, so
        each rewrite is 1.5x the last and a day costs O(n log n); and always past 16x `compact_after` segments,
        which bounds what reads must deduplicate."""
        fresh = len(partition.fresh)
        if fresh and self.settle_past_days and self._past_day_due(partition):
            return True
        if fresh < self.compact_after:
            return False
        if partition.compacted is None or fresh >= 16 * self.compact_after:
            return True
        try:
            fresh_bytes = sum(p.stat().st_size for p in partition.fresh)
            return fresh_bytes * 2 >= partition.compacted.stat().st_size
        except FileNotFoundError:  # another process compacted meanwhile
            return False

    @staticmethod
    def _past_day_due(partition: segments.Partition) -> bool:
        """A day that is over (UTC) only gets late events: fold it whole, so exports read it without
        deduplication instead of leaving its last hours of segments mixed in until `fstore compact`; but at
        most once an hour, so a trickle of late events does not rewrite the whole day every minute."""
        if partition.day is None or partition.day >= datetime.now(UTC).date():
            return False
        if partition.compacted is None:
            return True
        try:
            return time.time() - partition.compacted.stat().st_mtime >= PAST_DAY_RECOMPACT_SECONDS
        except FileNotFoundError:  # another process compacted meanwhile
            return False

    def _compact_in_background(self, spec: EntitySpec, partition_dir: Path) -> None:
        try:
            self._compact_partition(spec, partition_dir)
        finally:
            self._compacting.discard(partition_dir)

    def close(self) -> None:
        """Turn this store's journals into segments, and wait for background work in progress (it is safe to
        interrupt, but finishing it is cheaper)."""
        if self._compactor is not None:
            self._compactor.shutdown(wait=True)
            self._compactor = None
        self.flush_journals()

    def _compact_partition(self, spec: EntitySpec, partition_dir: Path) -> tuple[int, int] | None:
        with segments.compaction_lock(partition_dir) as mine:
            if not mine:
                return None
            for journal in segments.read_partition(partition_dir).journals:
                segments.journal_to_segment(journal)  # those no writer holds
            partition = segments.read_partition(partition_dir)
            if not partition.fresh:
                return None  # one compacted file (journals being written aside) is as compact as it gets
            target = segments.next_compacted_path(partition)
            tmp = target.with_name(f".{target.name}.tmp")
            sql = duckdb_compaction_sql(spec.key.name, spec.event_time.name, [str(p) for p in partition.files])
            with self._connect() as con:
                con.execute(f"COPY ({sql}) TO '{_escape(str(tmp))}' (FORMAT parquet)")
                rows = con.execute(f"SELECT count(*) FROM read_parquet('{tmp}')").fetchone()
            os.replace(tmp, target)
            for path in partition.files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return len(partition.files), int(rows[0]) if rows else 0

    # --- reads -------------------------------------------------------------------------------------------

    def history(self, spec: EntitySpec) -> pa.Table:
        order = ", ".join(quote(c) for c in (spec.key.name, spec.event_time.name, INGEST_TIME, MESSAGE_ID))

        def query(con: duckdb.DuckDBPyConnection) -> pa.Table:
            source = self._history_sql(con, spec, [])
            return con.sql(f"SELECT * FROM ({source}) ORDER BY {order}").to_arrow_table()

        return conform(self._read(query), arrow_schema(spec), spec.table_name, fill_missing=True)

    def dead_letters(self) -> pa.Table:
        def query(con: duckdb.DuckDBPyConnection) -> pa.Table:
            files = [str(p) for part in segments.partitions(self.root / DEAD_LETTERS_TABLE) for p in part.files]
            con.register("__fstore_empty", DEAD_LETTER_SCHEMA.empty_table())
            source = duckdb_history([], files, [], "__fstore_empty")
            return con.sql(f"SELECT * FROM ({source}) ORDER BY {INGEST_TIME}, {MESSAGE_ID}").to_arrow_table()

        return conform(self._read(query), DEAD_LETTER_SCHEMA, "dead letters")

    def ledger(self) -> list[LedgerEntry]:
        entries = []
        for entity, version, table_dir in segments.table_dirs(self.root):
            spec = self._spec_or_none(entity, version)
            stats = self._read(lambda con, d=table_dir, s=spec: _table_stats(con, d, s))
            if stats[0]:
                rows, first, last, ingested = stats
                entries.append(LedgerEntry(entity, version, int(rows), _utc(first), _utc(last), _utc(ingested)))
        return entries

    def high_water_mark(self, spec: EntitySpec) -> int | None:
        """Max ingest time (µs) stored for the entity version; None when it has no rows."""

        def query(con: duckdb.DuckDBPyConnection) -> int | None:
            sources = _sources(con, self.root / spec.table_name)
            if sources.empty:
                return None
            files, rows = sources.clean + sources.mixed, []
            if files:
                rows.append(f"SELECT max({INGEST_TIME}) AS t FROM read_parquet({_file_list(files)})")
            if sources.journal:
                rows.append(f"SELECT max({INGEST_TIME}) AS t FROM {sources.journal}")
            row = con.execute(f"SELECT epoch_us(max(t)) FROM ({' UNION ALL '.join(rows)})").fetchone()
            return None if row is None or row[0] is None else int(row[0])

        result: int | None = self._read(query)
        return result

    # --- export ------------------------------------------------------------------------------------------

    def export_training_set(
        self,
        spine: Any,
        features: Sequence[str] | None,
        out: Path,
        *,
        timestamp_column: str | None = None,
        versions: dict[str, int] | None = None,
        column_format: str | None = None,
        reproduce: dict[str, Any] | str | Path | None = None,
        memory_limit: str | None = None,
        threads: int | None = None,
        progress: bool = True,
        **unknown: Any,
    ) -> dict[str, Any]:
        """Point-in-time-correct join of `spine` with `features` (`entity:feature` or `entity:*`), written to
        parquet at `out` with `<out>.manifest.json` beside it; returns the manifest.

        timestamp_column: the spine's timestamp column (default `event_timestamp`).
        versions: entity -> version to read (default: the latest version of each entity).
        column_format: output column names, from {entity}, {feature}, {version} (default `{entity}__{feature}`).
        reproduce: a manifest (or its path): re-run it, same features, versions and high-water marks.
        memory_limit / threads: DuckDB limits for this export (default: the store's); beyond the memory
            limit DuckDB spills to the store's temp directory.
        progress: show a progress bar, only when stderr is a terminal.
        """
        if unknown:
            raise TypeError(f"unknown export option(s): {', '.join(sorted(unknown))}")
        plan = plan_export(
            self.registry,
            spine,
            features,
            timestamp_column=timestamp_column,
            versions=versions,
            column_format=column_format,
            reproduce=reproduce,
            high_water_mark=self.high_water_mark,
        )
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        spine_table = plan.spine.table

        def run(con: duckdb.DuckDBPyConnection) -> str:
            con.register(SPINE_VIEW, spine_table)
            histories = {}
            for j in plan.joins:
                sources = _sources(con, self.root / j.spec.table_name)
                empty = self._register_empty(con, j.spec)
                filters = history_filters(j, plan.spine.time_bounds, "duckdb")
                histories[j.spec.table_name] = duckdb_export_source(
                    j, sources.clean, sources.mixed, filters, empty, sources.journal
                )
            sql = duckdb_export_sql(plan, SPINE_VIEW, histories)
            copy = f"COPY ({sql}) TO '{_escape(str(tmp))}' (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
            _execute_with_progress(con, copy, plan.spine.rows, progress and sys.stderr.isatty())
            return sql

        try:
            sql = self._read(run, memory_limit=memory_limit, threads=threads)
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return finish_export(plan, out, sql, "duckdb")

    # --- plumbing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, memory_limit: str | None = None, threads: int | None = None) -> Iterator[Any]:
        con = duckdb.connect()
        try:
            # Not config={"TimeZone": ...}: that makes DuckDB fetch the icu extension, which fails offline.
            con.execute("SET TimeZone='UTC'")
            limit = memory_limit or self.memory_limit
            if limit:
                con.execute(f"SET memory_limit='{_escape(limit)}'")
            if threads or self.threads:
                con.execute(f"SET threads={int(threads or self.threads or 1)}")
            self.temp_directory.mkdir(parents=True, exist_ok=True)
            con.execute(f"SET temp_directory='{_escape(str(self.temp_directory))}'")
            yield con
        finally:
            con.close()

    def _read(self, query: Any, memory_limit: str | None = None, threads: int | None = None) -> Any:
        """Run `query(con)`, listing files afresh and retrying when a compaction removed one meanwhile."""
        for attempt in range(READ_ATTEMPTS):
            with self._connect(memory_limit, threads) as con:
                try:
                    return query(con)
                except FileNotFoundError:  # a journal turned into a segment meanwhile
                    if attempt == READ_ATTEMPTS - 1:
                        raise
                except duckdb.IOException as exc:
                    if attempt == READ_ATTEMPTS - 1 or (
                        "No files found" not in str(exc) and "No such file" not in str(exc)
                    ):
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
        con.register(name, arrow_schema(spec).empty_table())
        return name

    def _spec_or_none(self, entity: str, version: int) -> EntitySpec | None:
        try:
            return self.registry.get(entity, version)
        except LookupError:
            return None


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


@dataclass(frozen=True)
class Sources:
    """What a read of one table uses: files already unique by message id, files that need deduplication,
    and the view of its journals' rows (which need it too), if any."""

    clean: list[str]
    mixed: list[str]
    journal: str | None

    @property
    def empty(self) -> bool:
        return not self.clean and not self.mixed and not self.journal


def _sources(con: duckdb.DuckDBPyConnection, table_dir: Path) -> Sources:
    listing = segments.listing(table_dir)
    journal = segments.read_journals(listing.journals)
    view = None
    if journal is not None:
        view = f"__fstore_journal_{table_dir.name}"
        con.register(view, journal)
    return Sources([str(p) for p in listing.clean], [str(p) for p in listing.mixed], view)


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


def _execute_with_progress(con: duckdb.DuckDBPyConnection, sql: str, total_rows: int, show: bool) -> None:
    if not show:
        con.execute(sql)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    error: list[BaseException] = []

    def work() -> None:
        try:
            con.execute(sql)
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    columns = (
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("spine rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("export", total=total_rows)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            # DuckDB reports the running query's progress as a percentage (-1 when it cannot tell).
            percent = con.query_progress()
            if percent >= 0:
                bar.update(task, completed=int(total_rows * min(percent, 100.0) / 100))
        bar.update(task, completed=total_rows)
    if error:
        raise error[0]


def _file_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + _escape(p) + "'" for p in paths) + "]"


def _escape(text: str) -> str:
    return text.replace("'", "''")


def _utc(micros: int | None) -> Any:
    return None if micros is None else utc_from_micros(int(micros))
