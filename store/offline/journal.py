"""Journals: where a writer appends its small batches (the streaming job's), one file per writer and partition.

A journal is a sequence of frames, each `FSJ1 | payload length (u32) | CRC-32 of the payload (u32) | payload`:
the first payload is the Arrow schema, every other one a record batch (Arrow IPC). A frame is written with
one `write` to an unbuffered file descriptor, so what an `append` returned is in the kernel before the caller
acks the events, and survives the writer being killed; with `fsync` it also survives the machine.

Faults:
- a failed append (a full disk) truncates the file back to the last whole frame, so no later batch is stuck
  behind a torn one, and raises: the caller retries until the disk has room;
- a reader takes every frame whose CRC matches, skips damaged ones (finding the next frame by its marker),
  and stops at an incomplete last frame (an append in progress, or a writer killed mid-write);
- a journal with damaged frames is turned into a segment of its verified batches and moved, not deleted, to
  `<root>/_quarantine/<table>/<partition>/`, where `fstore ledger` reports it;
- a journal whose file was deleted under its writer (its partition removed) is noticed at the next append,
  which fails, so the writer opens a new one instead of writing into a file nobody can read.

Journals written before frames existed (a bare Arrow IPC stream) are still read.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
import uuid
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from fstore.store.offline.segments import JOURNAL_SUFFIX, write_segment

log = logging.getLogger("fstore.offline")

QUARANTINE_DIR = "_quarantine"
MAGIC = b"FSJ1"
_HEADER = struct.Struct("<4sII")
_reported: set[Path] = set()  # damaged journals already logged by this process's reads


class JournalGone(OSError):
    """The journal's file was deleted under its writer: open a new journal."""


class Journal:
    """This process's journal in one partition. The exclusive flock held while it is open tells compactions
    (of any process) to leave it alone."""

    def __init__(self, partition_dir: Path, schema: pa.Schema, *, fsync: bool = False) -> None:
        partition_dir.mkdir(parents=True, exist_ok=True)
        self.path = partition_dir / f"{uuid.uuid4().hex}{JOURNAL_SUFFIX}"
        self.fsync = fsync
        # Created under a hidden name and locked before it is visible: a compaction that found it unlocked
        # would take it for a dead writer's and delete it under us.
        hidden = self.path.with_name(f".{self.path.name}.tmp")
        self._fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A store dropped without close() releases its journals too, for compactions to pick up.
        self._release = weakref.finalize(self, os.close, self._fd)
        self.size = 0
        try:
            self._write_frame(schema.serialize().to_pybytes())
            os.rename(hidden, self.path)  # the lock and the open file follow the inode
        except OSError:
            hidden.unlink(missing_ok=True)
            self._release()
            raise
        self.rows = 0
        self.opened = time.monotonic()

    def append(self, table: pa.Table) -> None:
        """Append the table's rows as one frame; raises (leaving the file as before) if it cannot."""
        if os.fstat(self._fd).st_nlink == 0:
            raise JournalGone(f"journal {self.path} was deleted under its writer")
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
        if batch is None:
            return
        self._write_frame(batch.serialize().to_pybytes())
        self.rows += table.num_rows

    def seal(self) -> Path:
        """No more appends; the lock is released, so the journal can be turned into a segment."""
        self._release()
        return self.path

    def _write_frame(self, payload: bytes) -> None:
        frame = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        try:
            written = 0
            while written < len(frame):
                written += os.write(self._fd, frame[written:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            # A torn frame would hide every later one from readers: cut the file back to its last whole frame.
            os.ftruncate(self._fd, self.size)
            os.lseek(self._fd, self.size, os.SEEK_SET)
            raise
        self.size += len(frame)


@dataclass(frozen=True)
class JournalContents:
    table: pa.Table | None  # the verified batches (None when there is none yet)
    damaged: int  # frames whose CRC did not match, or bytes that were no frame


def read_journal(path: Path) -> JournalContents:
    """Every verified batch of a journal. A journal deleted meanwhile raises FileNotFoundError: its rows are
    in a segment by then, so the caller lists the partition again."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        return _read_unframed(data)
    payloads, damaged = _frames(data)
    if not payloads:
        return JournalContents(None, damaged)
    schema = pa.ipc.read_schema(pa.py_buffer(payloads[0]))
    batches = [pa.ipc.read_record_batch(pa.py_buffer(p), schema) for p in payloads[1:]]
    if damaged and path not in _reported:
        _reported.add(path)
        log.warning("journal %s: %d damaged frame(s) skipped; its %d verified batches are read", path, damaged,
                    len(batches))  # fmt: skip
    return JournalContents(pa.Table.from_batches(batches, schema) if batches else None, damaged)


def _frames(data: bytes) -> tuple[list[bytes], int]:
    payloads: list[bytes] = []
    damaged, offset = 0, 0
    while offset + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if magic == MAGIC and end <= len(data):
            payload = data[offset + _HEADER.size : end]
            if zlib.crc32(payload) == crc:
                payloads.append(payload)
                offset = end
                continue
        elif magic == MAGIC and data.find(MAGIC, offset + 1) < 0:
            break  # the last frame is incomplete: an append in progress, or a writer killed mid-write
        damaged += 1  # a damaged frame: resume at the next marker
        following = data.find(MAGIC, offset + 1)
        if following < 0:
            break
        offset = following
    return payloads, damaged


def _read_unframed(data: bytes) -> JournalContents:
    """A journal of the first format: an Arrow IPC stream, read up to its last complete batch."""
    batches = []
    try:
        reader = pa.ipc.open_stream(data)
        while True:
            batches.append(reader.read_next_batch())
    except StopIteration:
        pass
    except (pa.ArrowInvalid, OSError):
        pass  # an incomplete tail (or an empty file: its writer has not written the schema yet)
    return JournalContents(pa.Table.from_batches(batches) if batches else None, 0)


def read_journals(paths: list[Path]) -> pa.Table | None:
    tables = [t for t in (read_journal(p).table for p in paths) if t is not None]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def quarantine_path(journal: Path) -> Path:
    """`<root>/<table>/<partition>/<file>` -> `<root>/_quarantine/<table>/<partition>/<file>`."""
    partition = journal.parent
    return partition.parent.parent / QUARANTINE_DIR / partition.parent.name / partition.name / journal.name


def quarantined(table_dir: Path) -> list[Path]:
    """Damaged files of one table, kept for inspection."""
    directory = table_dir.parent / QUARANTINE_DIR / table_dir.name
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []


def journal_to_segment(path: Path) -> Path | None:
    """Turn a journal no writer holds (sealed, or left by a writer that died) into one fresh segment, then
    delete it (or, when it had damaged frames, move it to the quarantine). None when a writer holds it, or
    another process got to it first."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None  # converted and deleted between our open and our lock
        except FileNotFoundError:
            return None
        contents = read_journal(path)
        table = contents.table
        # fsynced whatever the store's setting: the journal it replaces was durable, and is deleted next
        segment = write_segment(path.parent, table, fsync=True) if table is not None and table.num_rows else None
        # While still locked: no other converter can read it after the segment exists.
        if contents.damaged:
            target = quarantine_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            log.warning("journal %s had %d damaged frame(s): its verified rows are stored, the file is kept as %s",
                        path, contents.damaged, target)  # fmt: skip
        else:
            path.unlink()
        return segment
    finally:
        os.close(fd)
