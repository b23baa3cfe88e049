"""The embedded offline store: append-only segments, dedup by message id, compaction, ledger, dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fstore.errors import SchemaError
from fstore.schema.registry import EntitySpec, Registry
from fstore.schema.tables import arrow_schema
from fstore.settings import load_settings
from fstore.store.events import DeadLetter
from fstore.store.offline import open_offline_store
from fstore.store.offline.compaction import CompactionPolicy
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.schema import DEAD_LETTER_SCHEMA, messages_to_table
from fstore.store.offline.segments import max_from_footers

from .conftest import T0, at, rows


def test_write_history_roundtrip_and_partitions(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    day = 86_400
    written = offline.write(
        user,
        rows(
            user,
            {"key": 2, "t": day + 5, "age": 20, "embedding": [1.0, 2.0]},
            {"key": 1, "t": 0, "age": 10, "favorite_categories": ["a"]},
            {"key": 1, "t": 3, "age": 11},
        ),
    )
    assert written == 3
    dates = sorted(p.name for p in (offline.root / "user_v1").iterdir())
    assert dates == ["date=2026-03-01", "date=2026-03-02"]
    history = offline.history(user)
    assert history.schema == arrow_schema(user)
    assert [(r["user_id"], r["age"]) for r in history.to_pylist()] == [(1, 10), (1, 11), (2, 20)]
    assert history.to_pylist()[2]["embedding"] == [1.0, 2.0]


def test_duplicates_are_stored_once(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    batch = rows(user, {"key": 1, "t": 0, "id": "x", "ingest": 5}, {"key": 1, "t": 0, "id": "x", "ingest": 2})
    assert offline.write(user, batch) == 1  # within the batch: the earliest ingest is kept
    assert offline.write(user, rows(user, {"key": 1, "t": 0, "id": "x", "ingest": 9})) == 0  # recently seen
    other_process = DuckDBOfflineStore(offline.root, offline.registry)
    other_process.write(user, rows(user, {"key": 1, "t": 0, "id": "x", "ingest": 7}))  # a redelivery elsewhere
    history = offline.history(user).to_pylist()
    assert [(r["message_id"], r["ingest_time"]) for r in history] == [("x", at(2))]
    assert offline.ledger()[0].rows == 1


def test_compaction_merges_and_dedups(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    for n in range(5):  # small batches: one journal
        offline.write(user, rows(user, {"key": n % 2, "t": n, "id": f"m{n}", "age": n}))
    other_process = DuckDBOfflineStore(offline.root, offline.registry)
    other_process.write(user, rows(user, {"key": 0, "t": 0, "id": "m0", "ingest": 99}))
    other_process.close()  # its journal becomes a segment
    before = offline.history(user)
    result = offline.compact(user)  # this store's journal becomes a segment, then both are merged
    assert (result.partitions, result.files_merged, result.rows) == (1, 2, 5)
    files = [p.name for p in (offline.root / "user_v1" / "date=2026-03-01").glob("*.parquet")]
    assert files == ["compacted-000000.parquet"]
    assert offline.history(user) == before
    offline.write(user, rows(user, {"key": 9, "t": 9, "id": "m9"}))
    assert offline.compact(user).files_merged == 2
    assert offline.compact(user).partitions == 0  # nothing fresh: nothing to do
    assert offline.history(user).num_rows == 6


def test_automatic_compaction(tmp_path: Path, registry: Registry, user: EntitySpec) -> None:
    # segments only, and the count policy alone (the test's day is long over)
    policy = CompactionPolicy(compact_after=4, journal_below_rows=0, settle_past_days=False)
    store = DuckDBOfflineStore(tmp_path / "o", registry, policy=policy)
    for n in range(9):
        store.write(user, rows(user, {"key": 1, "t": n, "id": f"m{n}"}))
    store.close()  # compaction runs in the background; close waits for it
    files = sorted(p.name for p in (tmp_path / "o" / "user_v1" / "date=2026-03-01").glob("*.parquet"))
    assert any(f.startswith("compacted-") for f in files) and len(files) < 9
    assert store.history(user).num_rows == 9


def test_messages_to_table_feeds_write(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    message: Any = user.message_class(user_id=5, age=33, country="DE", embedding=[0.25])
    message.event_time.FromDatetime(datetime(2026, 3, 1, 12, tzinfo=UTC))
    empty: Any = user.message_class(user_id=6)
    empty.event_time.FromDatetime(datetime(2026, 3, 1, 12, tzinfo=UTC))
    table = messages_to_table(user, [message, empty], [1_000_000, 2_000_000], ["p1", "p2"])
    assert offline.write(user, table) == 2
    got = offline.history(user).to_pylist()
    assert got[0]["age"] == 33 and got[0]["embedding"] == [0.25] and got[0]["is_premium"] is None
    assert got[1]["age"] is None and got[1]["favorite_categories"] == []


def test_write_rejects_bad_rows(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    good = rows(user, {"key": 1, "t": 0})
    with pytest.raises(SchemaError, match="missing column 'message_id'"):
        offline.write(user, good.drop_columns(["message_id"]))
    bad_type = good.set_column(0, "user_id", pa.array(["not a number"]))
    with pytest.raises(SchemaError, match="column 'user_id' is string"):
        offline.write(user, bad_type)
    nulls = pa.Table.from_pylist([{**good.to_pylist()[0], "message_id": None}], schema=good.schema.remove_metadata())
    with pytest.raises(SchemaError, match="'message_id' has nulls"):
        offline.write(user, nulls)
    assert offline.history(user).num_rows == 0


def test_ledger(offline: DuckDBOfflineStore, user: EntitySpec, item: EntitySpec) -> None:
    assert offline.ledger() == []
    offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 100}, {"key": 2, "t": 5, "ingest": 200}))
    offline.write(item, rows(item, {"key": "a", "t": 7}))
    ledger = {(e.entity, e.version): e for e in offline.ledger()}
    assert ledger[("user", 1)].rows == 2
    assert (ledger[("user", 1)].first_event_time, ledger[("user", 1)].last_event_time) == (at(5), at(10))
    assert ledger[("user", 1)].last_ingest_time == at(200)
    assert ledger[("item", 1)].rows == 1


def test_dead_letters_roundtrip(offline: DuckDBOfflineStore) -> None:
    letters = [
        DeadLetter(
            b"\x00garbage",
            {"fstore_entity": "user", "fstore_version": "1"},
            "decode_error",
            "bad bytes",
            "d1",
            T0,
            at(1),
        ),
        DeadLetter(b"{}", {}, "unknown_entity", "no fstore_entity attribute", "d2", None, at(2)),
    ]
    assert offline.write_dead_letters(letters) == 2
    offline.write_dead_letters(letters[:1])  # redelivered: stored once
    got = offline.dead_letters()
    assert got.schema == DEAD_LETTER_SCHEMA
    first, second = got.to_pylist()
    assert first["data"] == b"\x00garbage" and first["reason"] == "decode_error" and first["entity"] == "user"
    assert json.loads(first["attributes"]) == {"fstore_entity": "user", "fstore_version": "1"}
    assert first["publish_time"] == T0
    assert second["entity"] is None and second["publish_time"] is None and second["message_id"] == "d2"


def test_open_from_settings(tmp_path: Path, registry: Registry) -> None:
    settings = load_settings(offline=f"duckdb:///{tmp_path}/x?memory_limit=500MB&threads=1")
    store = open_offline_store(settings, registry)
    assert isinstance(store, DuckDBOfflineStore)
    assert (store.root, store.memory_limit, store.threads) == (tmp_path / "x", "500MB", 1)


CHILD_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
import pyarrow as pa
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.schema.tables import arrow_schema
from fstore.schema.registry import Registry

registry = Registry.from_descriptor_set(Path(sys.argv[2]))
spec = registry.get("user", 1)
t = datetime(2026, 3, 1, tzinfo=UTC)
rows = [{"user_id": i, "event_time": t, "ingest_time": t, "message_id": f"child-{i}"} for i in range(int(sys.argv[3]))]
DuckDBOfflineStore(Path(sys.argv[1]), registry).write(spec, pa.Table.from_pylist(rows, schema=arrow_schema(spec)))
"""


def test_other_processes_write_while_this_one_reads(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    """No database lock: a second process appends while this one has read the store."""
    offline.write(user, rows(user, {"key": 100, "t": 0, "id": "first"}))
    assert offline.history(user).num_rows == 1
    descriptors = Path(__file__).resolve().parents[2] / "clients/registry/descriptor_set.binpb"
    subprocess.run([sys.executable, "-c", CHILD_WRITER, str(offline.root), str(descriptors), "50"], check=True)
    assert offline.history(user).num_rows == 51


def test_the_high_water_mark_from_footers_equals_a_scan(tmp_path: Path, registry: Registry) -> None:
    """The max ingest time comes from the parquet footers' statistics (segments, compacted files); a file
    without statistics falls back to a scan, with the same answer."""
    user = registry.get("user", 1)
    store = DuckDBOfflineStore(tmp_path / "offline", registry, policy=CompactionPolicy(journal_below_rows=1))
    store.write(user, rows(user, {"key": 1, "t": 5, "ingest": 50}, {"key": 2, "t": 86_400 * 2, "ingest": 9}))
    files = [str(p) for p in (tmp_path / "offline" / user.table_name).rglob("*.parquet")]
    assert max_from_footers(files, "ingest_time") == int(at(50).timestamp() * 1_000_000)
    assert store.high_water_mark(user) == int(at(50).timestamp() * 1_000_000)
    store.compact(user)
    assert store.high_water_mark(user) == int(at(50).timestamp() * 1_000_000)
    bare = tmp_path / "offline" / user.table_name / "date=2030-01-01"  # no statistics written
    bare.mkdir()
    pq.write_table(rows(user, {"key": 3, "t": 7, "ingest": 70}), bare / "b.parquet", write_statistics=False)
    assert max_from_footers([str(bare / "b.parquet")], "ingest_time") is None
    assert store.high_water_mark(user) == int(at(70).timestamp() * 1_000_000)
