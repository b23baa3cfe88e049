"""Compaction of the embedded offline store: when a day's files are folded (`CompactionPolicy`), and the
worker that folds them off the write path (`Compactor`).

A day partition holds fresh segments (one per large batch or per journal), and at most one compacted file.
Reads deduplicate partitions that hold fresh segments; compaction folds them into one deduplicated file,
after which reads skip that work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fstore.schema.registry import EntitySpec
from fstore.store.offline import segments
from fstore.store.offline.journal import Journal, journal_to_segment
from fstore.store.offline.sql import duckdb_compaction_sql

log = logging.getLogger("fstore.offline")

Connect = Callable[[], AbstractContextManager[Any]]  # a fresh DuckDB connection with the store's limits


@dataclass(frozen=True)
class CompactionPolicy:
    """When to fold a day, and when a small batch goes to a journal instead of a segment of its own.

    compact_after: fresh segments in a day before folding it is considered (0: only `fstore compact`).
    journal_below_rows: smaller batches are appended to the writer's journal (the streaming job's).
    journal_max_rows / journal_max_seconds: a journal this full or this old becomes a segment (readers hold
        journals in memory).
    settle_past_days: fold a day that is over (UTC) whole, at most once per `past_day_recompact_seconds`.
    """

    compact_after: int = 256
    journal_below_rows: int = 1_000
    journal_max_rows: int = 100_000
    journal_max_seconds: float = 60.0
    settle_past_days: bool = True
    past_day_recompact_seconds: float = 3_600.0

    def journal_done(self, journal: Journal, now: float) -> bool:
        return journal.rows >= self.journal_max_rows or now - journal.opened >= self.journal_max_seconds

    def due(self, partition: segments.Partition) -> bool:
        """Folding rewrites the whole day, so doing it every `compact_after` segments would cost O(n²) over a
        busy day. Fold only when the fresh data is at least half the compacted file, so each rewrite is 1.5x
        the last and a day costs O(n log n); and always past 16x `compact_after` segments, which bounds what
        reads must deduplicate."""
        fresh = len(partition.fresh)
        if fresh and self.settle_past_days and self.past_day_due(partition):
            return True
        if self.compact_after <= 0 or fresh < self.compact_after:
            return False
        if partition.compacted is None or fresh >= 16 * self.compact_after:
            return True
        try:
            fresh_bytes = sum(p.stat().st_size for p in partition.fresh)
            return fresh_bytes * 2 >= partition.compacted.stat().st_size
        except FileNotFoundError:  # another process compacted meanwhile
            return False

    def past_day_due(self, partition: segments.Partition) -> bool:
        """A day that is over only gets late events: fold it whole, so exports read it without deduplication
        instead of leaving its last hours of segments mixed in until `fstore compact`; but not more often than
        `past_day_recompact_seconds`, so a trickle of late events does not rewrite the day every minute."""
        if partition.day is None or partition.day >= datetime.now(UTC).date():
            return False
        if partition.compacted is None:
            return True
        try:
            return time.time() - partition.compacted.stat().st_mtime >= self.past_day_recompact_seconds
        except FileNotFoundError:  # another process compacted meanwhile
            return False


class Compactor:
    """Folds one store's partitions: on demand (`fold`), or in one background thread when the policy says a
    partition is due (`after_segment`, `convert_journals`), so ingest never waits for a day's rewrite."""

    def __init__(self, policy: CompactionPolicy, connect: Connect) -> None:
        self.policy = policy
        self._connect = connect
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._compacting: set[Path] = set()
        # Segments written per partition since the last look: listing a partition on every small write
        # costs more than writing the segment, so a partition is looked at every `compact_after / 4`.
        self._written_since_check: dict[Path, int] = {}

    def after_segment(self, spec: EntitySpec, partition_dir: Path) -> None:
        """A segment was written to the partition: fold it in the background if that is due."""
        if self.policy.compact_after <= 0:
            return
        with self._lock:  # writers may share a store across threads
            written = self._written_since_check.get(partition_dir, 0) + 1
            if written < max(1, self.policy.compact_after // 4):
                self._written_since_check[partition_dir] = written
                return
            self._written_since_check[partition_dir] = 0
            if partition_dir in self._compacting:
                return
        if not self.policy.due(segments.read_partition(partition_dir)):
            return
        with self._lock:
            if partition_dir in self._compacting:
                return
            self._compacting.add(partition_dir)
        self.submit(self._fold_in_background, spec, partition_dir)

    def convert_journals(self, spec: EntitySpec, partition_dir: Path) -> None:
        """Turn the partition's unheld journals (sealed ones, or those of writers that died) into segments,
        then fold the partition if that is due."""
        converted = [journal_to_segment(p) for p in segments.read_partition(partition_dir).journals]
        if any(converted) and self.policy.compact_after > 0 and self.policy.due(segments.read_partition(partition_dir)):
            self.fold(spec, partition_dir)

    def submit(self, work: Callable[[EntitySpec, Path], Any], spec: EntitySpec, partition_dir: Path) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fstore-compact")
            self._executor.submit(_logged, work, spec, partition_dir)

    def fold(self, spec: EntitySpec, partition_dir: Path) -> tuple[int, int] | None:
        """Fold the partition's files into one deduplicated file sorted by key and event time; returns (files
        merged, rows), or None when another process holds the partition or there was nothing to fold."""
        with segments.compaction_lock(partition_dir) as mine:
            if not mine:
                return None
            for journal in segments.read_partition(partition_dir).journals:
                journal_to_segment(journal)  # those no writer holds
            partition = segments.read_partition(partition_dir)
            if not partition.fresh:
                return None  # one compacted file (journals being written aside) is as compact as it gets
            target = segments.next_compacted_path(partition)
            tmp = target.with_name(f".{target.name}.tmp")
            sql = duckdb_compaction_sql(spec.key.name, spec.event_time.name, [str(p) for p in partition.files])
            with self._connect() as con:
                try:
                    con.execute(f"COPY ({sql}) TO '{escape(str(tmp))}' (FORMAT parquet)")
                except Exception as exc:  # a damaged input: nothing is replaced or deleted
                    tmp.unlink(missing_ok=True)
                    damaged = segments.damaged_file(exc)
                    if damaged is None:
                        raise
                    raise damaged from None
                rows = con.execute(f"SELECT count(*) FROM read_parquet('{escape(str(tmp))}')").fetchone()
            # The folded file is on the disk before the files it replaces are deleted: a crash in between
            # leaves duplicates (removed by the next fold, never read twice), never a gap.
            segments.sync_to_disk(tmp)
            os.replace(tmp, target)
            segments.sync_to_disk(partition_dir)
            for path in partition.files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return len(partition.files), int(rows[0]) if rows else 0

    def close(self) -> None:
        """Wait for background work in progress (it is safe to interrupt, but finishing it is cheaper)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _fold_in_background(self, spec: EntitySpec, partition_dir: Path) -> None:
        try:
            self.fold(spec, partition_dir)
        finally:
            with self._lock:
                self._compacting.discard(partition_dir)


def _logged(work: Callable[[EntitySpec, Path], Any], spec: EntitySpec, partition_dir: Path) -> None:
    try:
        work(spec, partition_dir)
    except Exception:  # losing nothing: journals and segments stay as they are, the next attempt retries
        log.exception("background %s of %s failed; its files are kept as they are", work.__name__, partition_dir)


def escape(text: str) -> str:
    """A string for a single-quoted SQL literal."""
    return text.replace("'", "''")


def partitions_to_fold(table_dir: Path, min_fresh: int) -> Iterator[Path]:
    """Partitions with journals, or at least `min_fresh` fresh segments, that are not clean already."""
    for partition in segments.partitions(table_dir):
        if (len(partition.fresh) >= min_fresh or partition.journals) and not partition.is_clean:
            yield partition.path
