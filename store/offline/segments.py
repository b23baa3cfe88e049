"""The on-disk layout of the embedded offline store: append-only parquet segments, no database file.

    <root>/<entity>_v<N>/date=YYYY-MM-DD/<batch-uuid>.parquet       fresh segments, one per written batch
    <root>/<entity>_v<N>/date=YYYY-MM-DD/compacted-<gen>.parquet     a compaction of everything before it
    <root>/<entity>_v<N>/date=YYYY-MM-DD/<writer-uuid>.arrows        a journal: small batches, appended
    <root>/_dead_letters/date=YYYY-MM-DD/<batch-uuid>.parquet

Journals (journal.py) are for the streaming job's small batches: a parquet file per small batch is mostly
fixed overhead, and was the job's largest cost (docs/performance-notes.md). A writer appends small batches
to its own journal, holding an exclusive flock on it; readers read its verified batches. A full or old
journal is sealed and turned into one fresh segment, then deleted; a journal whose writer died (no lock) is
turned into a segment by the next compaction of its partition. Until then readers read it as it is.

Why files and not a DuckDB database: a DuckDB file open read-write in one process (the streaming ingest
job, for hours) cannot be opened by any other process, not even read-only. Plain files can be appended
by one process while others query them.

Partitions are by the UTC date of the event time, so every copy of one message (a redelivery has the same
bytes, hence the same event time) lands in the same partition: deduplication never has to look across
partitions. A partition is *clean* when it holds one compacted file and no fresh one: its rows are
already unique by message id, and reads skip the deduplication work for it. Writers never lock anything;
compaction takes a per-partition lock so two compactions of one partition never run at once. A partition
with a journal is never clean: the journal's rows may repeat message ids of its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fstore.errors import DamagedFileError

PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
COMPACTED = re.compile(r"^compacted-(\d+)\.parquet$")
TABLE_DIR = re.compile(r"^(?P<entity>[a-z][a-z0-9_]*)_v(?P<version>[1-9][0-9]*)$")
LOCK_FILE = ".compact.lock"
JOURNAL_SUFFIX = ".arrows"


@dataclass
class Partition:
    """The files of one date partition that a reader should use (older compactions are left out)."""

    path: Path
    compacted: Path | None = None
    fresh: list[Path] = field(default_factory=list)
    journals: list[Path] = field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        return self.compacted is not None and not self.fresh and not self.journals

    @property
    def day(self) -> date | None:
        match = PARTITION.match(self.path.name)
        return date.fromisoformat(match[1]) if match else None

    @property
    def files(self) -> list[Path]:
        return ([self.compacted] if self.compacted else []) + self.fresh


@dataclass(frozen=True)
class Listing:
    """One table's files, split into those whose rows are already unique and those that need dedup."""

    clean: list[Path]
    mixed: list[Path]
    fresh_segments: int
    journals: list[Path]
    unclean: list[Partition]  # the partitions `mixed` and `journals` come from

    @property
    def empty(self) -> bool:
        return not self.clean and not self.mixed and not self.journals


@dataclass(frozen=True)
class DayRange:
    """Date partitions from `first` (None: the earliest) to `last`, both included. A partition holds the
    rows whose event time falls on its UTC date (`DuckDBOfflineStore.write`), so a read of event times in a
    range needs only the partitions of the range's days."""

    first: date | None
    last: date

    def holds(self, day: date) -> bool:
        return (self.first is None or self.first <= day) and day <= self.last


def partition_dir(table_dir: Path, day: date) -> Path:
    """Where a table keeps one day's rows (`Partition.day` reads the date back)."""
    return table_dir / f"date={day.isoformat()}"


def partitions(table_dir: Path, days: DayRange | None = None) -> list[Partition]:
    """The table's date partitions, in date order; a missing directory is an empty table. `days`: only the
    partitions from its first day (None: the earliest) to its last, both included."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.scandir(table_dir), key=lambda e: e.name):
            if entry.is_dir() and (match := PARTITION.match(entry.name)):
                if days is not None and not days.holds(date.fromisoformat(match[1])):
                    continue
                found.append(read_partition(Path(entry.path)))
    return [p for p in found if p.files or p.journals]


def read_partition(path: Path) -> Partition:
    partition = Partition(path)
    generation = -1
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            name = entry.name
            if name.endswith(JOURNAL_SUFFIX) and not name.startswith("."):
                partition.journals.append(Path(entry.path))
                continue
            if name.startswith(".") or not name.endswith(".parquet"):
                continue  # temp files of writes in progress, the lock file
            match = COMPACTED.match(name)
            if match is None:
                partition.fresh.append(Path(entry.path))
            elif int(match[1]) > generation:
                # An older compaction still on disk is being deleted by the compaction that replaced it.
                generation, partition.compacted = int(match[1]), Path(entry.path)
    return partition


def listing(table_dir: Path, days: DayRange | None = None) -> Listing:
    """The table's files (`days`: of those partitions only, as `partitions` says)."""
    clean: list[Path] = []
    mixed: list[Path] = []
    journals: list[Path] = []
    unclean: list[Partition] = []
    fresh = 0
    for p in partitions(table_dir, days):
        (clean if p.is_clean else mixed).extend(p.files)
        if not p.is_clean:
            unclean.append(p)
        journals.extend(p.journals)
        fresh += len(p.fresh)
    return Listing(clean, mixed, fresh, journals, unclean)


def write_segment(partition_dir: Path, table: pa.Table, *, fsync: bool = False) -> Path:
    """Write one fresh segment atomically: readers see all of it or none of it. With `fsync`, the file and
    its directory entry are on the disk when this returns."""
    partition_dir.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.parquet"
    return write_atomically(partition_dir / name, table, fsync=fsync)


def write_atomically(path: Path, table: pa.Table, *, fsync: bool = False) -> Path:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # No embedded Arrow schema: DuckDB reads parquet's own logical types, and serializing the Arrow schema
        # was most of the cost of a small streaming segment (docs/performance-notes.md).
        pq.write_table(table, tmp, store_schema=False)
        if fsync:
            sync_to_disk(tmp)
        os.replace(tmp, path)
        if fsync:
            sync_to_disk(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


_TO_MICROS = {"milliseconds": (1_000, 1), "microseconds": (1, 1), "nanoseconds": (1, 1_000)}  # (times, over)


def max_from_footers(files: Sequence[str], column: str) -> int | None:
    """The largest value (µs) of a top-level timestamp `column` over `files`, from their parquet footers'
    statistics; None when any row group lacks them (or a footer cannot be read: the caller's scan then
    raises what is wrong)."""
    best: int | None = None
    try:
        for path in files:
            metadata = pq.read_metadata(path)
            names = metadata.schema.names
            if column not in names:
                return None
            index = names.index(column)
            logical = json.loads(metadata.schema.column(index).logical_type.to_json())
            scale = _TO_MICROS.get(logical.get("timeUnit", "")) if logical.get("Type") == "Timestamp" else None
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(index).statistics
                if scale is None or stats is None or not stats.has_min_max:
                    return None
                value = stats.max_raw * scale[0] // scale[1]
                best = value if best is None else max(best, value)
    except (OSError, ValueError, pa.ArrowException):
        return None
    return best


_NAMED_FILE = re.compile(r"'([^']+\.parquet)'")  # the file a DuckDB read error names


def damaged_file(exc: Exception) -> DamagedFileError | None:
    """The store's error for a DuckDB read error that names an unreadable parquet file; None for others."""
    named = _NAMED_FILE.search(str(exc))
    if named is None:
        return None
    return DamagedFileError(
        f"the offline store cannot read {named[1]} ({str(exc).splitlines()[0]}); fstore never deletes it: move "
        "it out of the store to read the rest, and restore it from a backup or re-run its backfill"
    )


def sync_to_disk(path: Path) -> None:
    """Put a file's (or a directory's entries') contents on the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def next_compacted_path(partition: Partition) -> Path:
    generation = 0
    if partition.compacted is not None:
        match = COMPACTED.match(partition.compacted.name)
        assert match is not None
        generation = int(match[1]) + 1
    return partition.path / f"compacted-{generation:06d}.parquet"


@contextlib.contextmanager
def compaction_lock(partition_dir: Path) -> Iterator[bool]:
    """Yields True when this process holds the partition's compaction lock, False when another does."""
    fd = os.open(partition_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def table_dirs(root: Path) -> list[tuple[str, int, Path]]:
    """(entity, version, directory) of every entity-version table under the root."""
    tables = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            match = TABLE_DIR.match(entry.name)
            if match and entry.is_dir():
                tables.append((match["entity"], int(match["version"]), Path(entry.path)))
    return sorted(tables)
