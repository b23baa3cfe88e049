"""Journals: small batches (the streaming job's) are appended to a per-writer Arrow IPC journal, readable at
once, and become parquet segments when full, old, closed, or left behind by a writer that died."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import arrow_schema
from fstore.store.offline.compaction import CompactionPolicy
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.journal import Journal
from tests.offline.conftest import T0, at, rows

DAY = "date=2026-03-01"


def files(store: DuckDBOfflineStore, suffix: str) -> list[Path]:
    return sorted(p for p in (store.root / "user_v1" / DAY).glob(f"*{suffix}") if not p.name.startswith("."))


def test_small_batches_are_journaled_and_read_at_once(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    store = DuckDBOfflineStore(tmp_path / "o", registry)
    for n in range(3):
        store.write(user, rows(user, {"key": n, "t": n, "id": f"m{n}", "age": 20 + n}))
    assert files(store, ".parquet") == [] and len(files(store, ".arrows")) == 1
    reader = DuckDBOfflineStore(tmp_path / "o", registry)  # another process's view
    assert [r["age"] for r in reader.history(user).to_pylist()] == [20, 21, 22]
    assert reader.ledger()[0].rows == 3
    assert reader.high_water_mark(user) == int(at(3).timestamp() * 1_000_000)
    store.close()
    assert len(files(store, ".parquet")) == 1 and files(store, ".arrows") == []
    assert [r["age"] for r in reader.history(user).to_pylist()] == [20, 21, 22]


def test_large_batches_skip_the_journal(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    store = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(journal_below_rows=3))
    store.write(user, rows(user, *({"key": n, "t": n} for n in range(3))))
    assert len(files(store, ".parquet")) == 1 and files(store, ".arrows") == []
    store.close()


def test_full_or_old_journals_become_segments(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    store = DuckDBOfflineStore(
        tmp_path / "o", registry, policy=CompactionPolicy(journal_max_rows=4, journal_max_seconds=1)
    )
    for n in range(5):  # well within the second: the first four fill a journal, the 5th opens another
        store.write(user, rows(user, {"key": n, "t": n}))
    time.sleep(1.1)
    store.write(user, rows(user, {"key": 9, "t": 9}))  # the 5th row's journal is old by now
    store.close()
    assert len(files(store, ".parquet")) == 2 and files(store, ".arrows") == []
    assert store.history(user).num_rows == 6


def test_a_dead_writers_journal_is_read_up_to_its_last_whole_batch_then_compacted(
    tmp_path: Path, registry: Registry, user: EntitySpec
) -> None:
    # Its new journal makes the store look for dead writers' journals in the background; if that ran after
    # the "death" below, the past-day rule would compact the partition once more than this test counts.
    store = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(settle_past_days=False))
    store.write(user, rows(user, {"key": 1, "t": 0, "id": "a"}))
    partition = tmp_path / "o" / "user_v1" / DAY
    dead = Journal(partition, arrow_schema(user))
    dead.append(rows(user, {"key": 2, "t": 1, "id": "b"}))
    dead.append(rows(user, {"key": 1, "t": 0, "id": "a", "ingest": 50}))  # a redelivery, stored twice
    stream = pa.BufferOutputStream()
    with pa.ipc.new_stream(stream, arrow_schema(user)) as writer:
        writer.write_table(rows(user, {"key": 3, "t": 2, "id": "c"}))
    with open(dead.path, "ab") as f:  # the writer dies in the middle of its next append
        f.write(stream.getvalue().to_pybytes()[:-40])
    del dead  # its process is gone: the lock with it

    def seen() -> list[tuple[str, float]]:
        return [(r["message_id"], r["ingest_time"].timestamp()) for r in store.history(user).to_pylist()]

    assert seen() == [("a", at(1).timestamp()), ("b", at(2).timestamp())]  # "c" was never whole; "a" once
    result = store.compact(user)
    assert (result.partitions, result.files_merged) == (1, 2)
    assert [p.name for p in files(store, "")] == ["compacted-000000.parquet"]
    assert seen() == [("a", at(1).timestamp()), ("b", at(2).timestamp())]


def test_a_live_writers_journal_is_left_alone(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    writer = DuckDBOfflineStore(tmp_path / "o", registry)
    writer.write(user, rows(user, {"key": 1, "t": 0, "id": "a"}))
    other = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(journal_below_rows=0))
    other.write(user, rows(user, {"key": 1, "t": 0, "id": "a", "ingest": 30}))  # a redelivery, as a segment
    other.compact(user)
    assert [p.name for p in files(writer, ".parquet")] == ["compacted-000000.parquet"]
    assert len(files(writer, ".arrows")) == 1  # still being written: not clean, so reads deduplicate it
    assert [r["ingest_time"] for r in other.history(user).to_pylist()] == [at(1)]
    writer.close()
    other.close()


def test_reads_during_appends_and_conversions_see_whole_batches(
    tmp_path: Path, registry: Registry, user: EntitySpec
) -> None:
    # journals keep turning into segments while the reader reads
    writer = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(journal_max_rows=15))
    reader = DuckDBOfflineStore(tmp_path / "o", registry)
    batches, size = 60, 3
    done = threading.Event()

    def write() -> None:
        for b in range(batches):
            writer.write(user, rows(user, *({"key": b * size + i, "t": b} for i in range(size))))
            time.sleep(0.005)  # a stream, not a burst: the reader reads many states
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    counts = []
    while not done.is_set() or not counts or counts[-1] < batches * size:
        counts.append(reader.history(user).num_rows)
        if done.is_set() and len(counts) > 1000:
            break
    thread.join()
    writer.close()
    assert all(c % size == 0 for c in counts)  # never part of a batch
    assert counts == sorted(counts) and counts[-1] == batches * size  # never a row lost, then found again
    assert files(writer, ".arrows") == [] and reader.history(user).num_rows == batches * size


def test_a_day_that_is_over_is_folded_whole_at_most_once_an_hour(
    tmp_path: Path, registry: Registry, user: EntitySpec
) -> None:
    def write_late(*records: dict[str, int]) -> None:  # another writer, whose journal fills and closes
        writer = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(journal_max_rows=len(records)))
        writer.write(user, rows(user, *records))
        writer.close()  # waits for its background work

    compacted = tmp_path / "o" / "user_v1" / DAY / "compacted-000000.parquet"
    write_late({"key": 1, "t": 0}, {"key": 2, "t": 1})  # T0's day is long over: its segment is folded at once
    assert [p.name for p in files_of(tmp_path)] == [compacted.name]
    write_late({"key": 3, "t": 2})
    assert len(files_of(tmp_path)) == 2  # folded an instant ago: late events wait, up to an hour
    an_hour_ago = time.time() - 3_601
    os.utime(compacted, (an_hour_ago, an_hour_ago))
    write_late({"key": 4, "t": 3})
    assert [p.name for p in files_of(tmp_path)] == ["compacted-000001.parquet"]
    assert DuckDBOfflineStore(tmp_path / "o", registry).history(user).num_rows == 4


def test_today_is_not_folded_early(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    writer = DuckDBOfflineStore(tmp_path / "o", registry, policy=CompactionPolicy(journal_max_rows=1))
    writer.write(user, rows(user, {"key": 1, "t": (datetime.now(UTC) - T0).total_seconds()}))
    writer.close()
    assert [p.name.startswith("compacted-") for p in files_of(tmp_path, "*")] == [False]


def files_of(root: Path, day: str = DAY) -> list[Path]:
    return sorted(p for p in (root / "o" / "user_v1").glob(f"{day}/*.parquet"))
