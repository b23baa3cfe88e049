"""Journals under faults, each caused for real: bytes flipped in a file, a full disk (a 2 MB tmpfs), a
partition deleted under a running writer. Rows in = rows readable (+ rows named as damaged), every time."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from fstore.errors import DamagedFileError
from fstore.ingest.retry import until_stored
from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import arrow_schema
from fstore.store.offline.compaction import CompactionPolicy
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.journal import Journal, quarantined, read_journal
from fstore.store.offline.segments import partition_dir
from tests.conftest import fill_disk
from tests.offline.conftest import T0, rows


def batch(spec: EntitySpec, n: int) -> object:
    return rows(spec, *({"key": n * 10 + i, "t": n, "id": f"b{n}-{i}"} for i in range(10)))


def dead_writers_journal(tmp_path: Path, user: EntitySpec, batches: int) -> Path:
    journal = Journal(partition_dir(tmp_path / "o" / user.table_name, T0.date()), arrow_schema(user))
    for n in range(batches):
        journal.append(batch(user, n))  # type: ignore[arg-type]
    journal._release()  # the writer dies: its lock goes, its file stays
    return journal.path


@pytest.mark.parametrize("damage", ["flip payload bytes", "zero a frame header"])
def test_a_damaged_journal_is_reported_quarantined_and_its_other_batches_kept(
    tmp_path: Path, registry: Registry, user: EntitySpec, damage: str
) -> None:
    path = dead_writers_journal(tmp_path, user, 10)
    data = bytearray(path.read_bytes())
    sixth = [i for i in range(len(data)) if data[i : i + 4] == b"FSJ1"][6]  # frame 0 is the schema
    if damage == "flip payload bytes":
        data[sixth + 40 : sixth + 48] = b"\xff" * 8  # where an event time could have turned into 1969
    else:
        data[sixth : sixth + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data))

    contents = read_journal(path)
    assert contents.damaged == 1 and contents.table is not None and contents.table.num_rows == 90
    store = DuckDBOfflineStore(tmp_path / "o", registry)
    assert store.history(user).num_rows == 90  # readers take every verified batch
    store.compact(user)
    assert not path.exists() and quarantined(tmp_path / "o" / user.table_name) != []  # kept, not deleted
    history = store.history(user)
    assert history.num_rows == 90 and "b5-0" not in history.column("message_id").to_pylist()
    (entry,) = store.ledger()
    assert entry.rows == 90 and entry.quarantined_files == 1
    store.compact(user)
    assert len(quarantined(tmp_path / "o" / user.table_name)) == 1  # compaction never removes it


def test_a_full_disk_stalls_the_writes_and_loses_nothing(
    small_disk: Path, registry: Registry, user: EntitySpec
) -> None:
    store = DuckDBOfflineStore(small_disk / "offline", registry)
    store.write(user, batch(user, 0))  # type: ignore[arg-type]  # the journal exists before the disk fills
    filler = fill_disk(small_disk)

    lifted = threading.Timer(2.0, filler.unlink)
    lifted.start()
    started = time.monotonic()
    try:
        for n in range(1, 101):  # 100 small batches while the disk is full, then after it has room again
            until_stored(lambda n=n: store.write(user, batch(user, n)), "offline write", max_delay=0.2)
    finally:
        lifted.join()
    assert time.monotonic() - started >= 1.5  # the writes did stall on the full disk
    store.close()
    history = DuckDBOfflineStore(small_disk / "offline", registry).history(user)
    assert history.num_rows == 1010 and len(set(history.column("message_id").to_pylist())) == 1010
    assert not quarantined(small_disk / "offline" / user.table_name)


def test_a_partition_deleted_under_the_writer_loses_no_later_event(
    tmp_path: Path, registry: Registry, user: EntitySpec
) -> None:
    store = DuckDBOfflineStore(tmp_path / "o", registry)
    store.write(user, batch(user, 0))  # type: ignore[arg-type]
    partition = next((tmp_path / "o" / user.table_name).iterdir())
    shutil.rmtree(partition)  # someone removes the day under the running job: its 10 rows are gone
    for n in range(1, 11):
        store.write(user, batch(user, n))  # type: ignore[arg-type]
    store.close()
    assert DuckDBOfflineStore(tmp_path / "o", registry).history(user).num_rows == 100  # every later one is kept


def test_a_truncated_segment_is_named_and_never_deleted(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    store = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(journal_below_rows=0))
    store.write(user, batch(user, 0))  # type: ignore[arg-type]  # a parquet segment
    store.write(user, batch(user, 1))  # type: ignore[arg-type]
    segment = sorted((tmp_path / "o" / user.table_name).rglob("*.parquet"))[0]
    os.truncate(segment, 100)
    for read in (lambda: store.history(user), store.ledger, lambda: store.compact(user)):
        with pytest.raises(DamagedFileError, match=f"cannot read {re.escape(str(segment))}"):
            read()
    assert segment.exists() and segment.stat().st_size == 100  # nothing made the damage worse


def test_compaction_puts_its_output_on_the_disk_before_deleting_what_it_replaces(
    tmp_path: Path, registry: Registry, user: EntitySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash safety by ordering: a journal becomes a segment fsynced before the journal goes, and a fold's
    output file (and its directory entry) is fsynced before the folded files are deleted."""
    from fstore.store.offline import segments

    events: list[str] = []
    real_sync, real_unlink = segments.sync_to_disk, Path.unlink
    monkeypatch.setattr(segments, "sync_to_disk", lambda p: (events.append(f"sync {Path(p).name}"), real_sync(p)))
    monkeypatch.setattr(Path, "unlink", lambda p, **kw: (events.append(f"unlink {p.name}"), real_unlink(p, **kw)))
    journal = dead_writers_journal(tmp_path, user, 3)
    store = DuckDBOfflineStore(tmp_path / "o", registry, fsync=False)  # even with the store's appends unsynced
    store.compact(user)  # the journal becomes a segment; a second writer's journal, then a fold of the two
    journal = dead_writers_journal(tmp_path, user, 1)
    store.compact(user)
    assert store.history(user).num_rows == 30
    store.close()

    gone = [e.removeprefix("unlink ") for e in events if e.startswith("unlink ") and not e.endswith(".tmp")]
    assert journal.name in gone and any(name.endswith(".parquet") for name in gone)  # journals, then segments
    for name in gone:
        synced = [e for e in events[: events.index(f"unlink {name}")] if e.startswith("sync ")]
        assert synced and synced[-1] == f"sync {journal.parent.name}", (name, events)  # its directory, last
        if name.endswith(".parquet"):  # a segment the fold replaced: the fold's own output was synced before
            assert any(e.startswith("sync .compacted-") for e in synced), (name, events)
