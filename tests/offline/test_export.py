"""Point-in-time semantics of the export on small hand-made data (DuckDB backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fstore.schema.registry import EntitySpec, Registry
from fstore.store.offline.compaction import CompactionPolicy
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.manifest import ExportOptions

from .conftest import at, rows

DAY = 86_400


def export(offline: DuckDBOfflineStore, tmp_path: Path, spine: Any, features: list[str], **options: Any) -> list[dict]:
    out = tmp_path / "train.parquet"
    offline.export_training_set(spine, features, out, ExportOptions(**options))
    return pq.read_table(out).to_pylist()


def spine_of(**columns: list[Any]) -> pa.Table:
    return pa.table(columns)


def test_exact_timestamp_included_future_excluded(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path
) -> None:
    offline.write(user, rows(user, {"key": 1, "t": 100, "age": 30}, {"key": 1, "t": 200, "age": 31}))
    spine = spine_of(user_id=[1, 1, 1, 1], event_timestamp=[at(100), at(199), at(200), at(50)])
    got = [r["user__age"] for r in export(offline, tmp_path, spine, ["user:age"])]
    assert got == [30, 30, 31, None]  # equality included; the value at 200 is the future for 199; nothing before 100


def test_ttl_boundary(offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path) -> None:
    ttl = user.ttl_seconds
    assert ttl > 0
    offline.write(user, rows(user, {"key": 1, "t": 0, "age": 30}))
    # exactly ts - TTL is excluded; one microsecond inside is included
    spine = spine_of(user_id=[1, 1], event_timestamp=[at(ttl), at(ttl - 0.000001)])
    got = [r["user__age"] for r in export(offline, tmp_path, spine, ["user:age"])]
    assert got == [None, 30]


def test_the_first_and_last_partitions_in_reach_are_read(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path
) -> None:
    """The export lists only the date partitions a spine row can reach (duckdb_join.partition_days): from the
    day of its earliest time minus the TTL to the day of its latest. Each key's one event sits on an edge."""
    ttl = user.ttl_seconds
    t = ttl + 5 * DAY + 10  # t - TTL is 10 s into a day
    events = {1: t - ttl + 1, 2: t - ttl, 3: t - ttl - 11, 4: t, 5: t + 1}  # in reach, boundary, the day before
    offline.write(user, rows(user, *({"key": k, "t": e, "age": k} for k, e in events.items())))
    for compact in (False, True):
        if compact:
            offline.compact(user)
        spine = spine_of(user_id=[1, 2, 3, 4, 5], event_timestamp=[at(t)] * 5)
        got = [r["user__age"] for r in export(offline, tmp_path, spine, ["user:age"])]
        assert got == [1, None, None, 4, None]


def test_no_ttl_means_no_limit(offline: DuckDBOfflineStore, item: EntitySpec, tmp_path: Path) -> None:
    assert item.ttl_seconds == 0
    offline.write(item, rows(item, {"key": "a", "t": 0, "price": 9.5}))
    spine = spine_of(item_id=["a"], event_timestamp=[at(3650 * DAY)])
    assert export(offline, tmp_path, spine, ["item:price"])[0]["item__price"] == 9.5


def test_ties_latest_ingest_then_message_id(offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path) -> None:
    offline.write(
        user,
        rows(
            user,
            {"key": 1, "t": 10, "ingest": 50, "id": "z", "age": 1},
            {"key": 1, "t": 10, "ingest": 60, "id": "y", "age": 2},  # latest ingest wins ...
            {"key": 2, "t": 10, "ingest": 50, "id": "a", "age": 3},
            {"key": 2, "t": 10, "ingest": 50, "id": "c", "age": 4},  # ... then the greatest message id
            {"key": 2, "t": 10, "ingest": 50, "id": "b", "age": 5},
        ),
    )
    spine = spine_of(user_id=[1, 2], event_timestamp=[at(10), at(20)])
    assert [r["user__age"] for r in export(offline, tmp_path, spine, ["user:age"])] == [2, 4]


def test_two_entities_labels_order_and_missing(
    offline: DuckDBOfflineStore, user: EntitySpec, item: EntitySpec, tmp_path: Path
) -> None:
    offline.write(user, rows(user, {"key": 1, "t": 0, "age": 30, "country": "DE", "embedding": [0.5, 1.5]}))
    offline.write(user, rows(user, {"key": 2, "t": 0, "age": 40, "favorite_categories": ["shoes", "hats"]}))
    offline.write(
        item, rows(item, {"key": "a", "t": 0, "price": 1.0, "tags": ["x"]}, {"key": "b", "t": 5, "price": 2.0})
    )
    spine = pd.DataFrame(
        {
            "label": [1.0, 0.0, 1.0, 0.0],
            "user_id": [2, 1, 99, 1],
            "item_id": ["b", "a", "a", "zzz"],
            "event_timestamp": pd.to_datetime([at(10), at(10), at(10), at(1)]),
            "note": ["x", "y", None, "w"],
        }
    )
    got = export(offline, tmp_path, spine, ["user:age", "user:embedding", "user:favorite_categories", "item:*"])
    assert [r["label"] for r in got] == [1.0, 0.0, 1.0, 0.0]  # spine order and labels kept
    assert [r["note"] for r in got] == ["x", "y", None, "w"]
    assert [r["user__age"] for r in got] == [40, 30, None, 30]  # user 99 unknown -> null
    assert [r["item__price"] for r in got] == [2.0, 1.0, 1.0, None]  # item zzz unknown -> null
    assert got[1]["user__embedding"] == pytest.approx([0.5, 1.5])
    assert got[0]["user__favorite_categories"] == ["shoes", "hats"]
    assert got[2]["user__embedding"] is None  # no match: null, not an empty list
    assert got[1]["item__tags"] == ["x"]
    schema = pq.read_schema(tmp_path / "train.parquet")
    assert schema.names[:5] == ["label", "user_id", "item_id", "event_timestamp", "note"]
    assert schema.field("user__age").type == pa.int32()
    assert schema.field("user__embedding").type == pa.list_(pa.float32())
    assert schema.field("item__tags").type == pa.list_(pa.string())
    assert schema.field("item__stock").type == pa.int32()


def test_duplicates_by_message_id_keep_the_earliest(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path
) -> None:
    # A tie on event time with another message: a redelivered copy of "a" (later ingest) must not make
    # "a" beat "b"; only its first ingest counts.
    offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 11, "id": "a", "age": 1}))
    offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 12, "id": "b", "age": 2}))
    offline = DuckDBOfflineStore(offline.root, offline.registry)  # a new process: no memory of recent ids
    assert offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 13, "id": "a", "age": 1})) == 1
    spine = spine_of(user_id=[1], event_timestamp=[at(10)])
    assert export(offline, tmp_path, spine, ["user:age"])[0]["user__age"] == 2
    offline.compact(user)
    assert export(offline, tmp_path, spine, ["user:age"])[0]["user__age"] == 2


def test_column_format_timestamp_column_and_naive_times(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path
) -> None:
    offline.write(user, rows(user, {"key": 1, "t": 0, "age": 30}))
    naive = at(5).replace(tzinfo=None)  # naive spine timestamps are UTC
    spine = spine_of(user_id=pa.array([1], pa.int32()), ts=pa.array([naive], pa.timestamp("ns")))
    got = export(offline, tmp_path, spine, ["user:age"], timestamp_column="ts", column_format="f_{feature}_v{version}")
    assert got == [{"user_id": 1, "ts": naive, "f_age_v1": 30}]


def test_spine_from_a_parquet_path(offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path) -> None:
    offline.write(user, rows(user, {"key": 7, "t": 0, "country": "FR"}))
    path = tmp_path / "spine.parquet"
    pq.write_table(spine_of(user_id=[7, 8], event_timestamp=[at(1), at(1)]), path)
    assert [r["user__country"] for r in export(offline, tmp_path, str(path), ["user:country"])] == ["FR", None]


def test_empty_store_gives_nulls(offline: DuckDBOfflineStore, tmp_path: Path) -> None:
    spine = spine_of(user_id=[1], event_timestamp=[at(1)])
    manifest = offline.export_training_set(spine, ["user:age"], tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").to_pylist() == [
        {"user_id": 1, "event_timestamp": at(1), "user__age": None}
    ]
    assert manifest["entities"][0]["high_water_mark_micros"] is None
    assert manifest["output"]["columns"] == {"user__age": {"nulls": 1}}


def test_tie_winner_ingested_after_the_high_water_mark(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path
) -> None:
    """Compacted partitions resolve ties with a precomputed column; a reproduction must still pick the
    row that won among the rows it may read."""
    offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 11, "id": "a", "age": 1}))
    spine = spine_of(user_id=[1], event_timestamp=[at(10)])
    manifest = offline.export_training_set(spine, ["user:age"], tmp_path / "first.parquet")
    offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 20, "id": "b", "age": 2}))  # wins the tie
    offline.compact(user)
    assert export(offline, tmp_path, spine, ["user:age"])[0]["user__age"] == 2
    offline.export_training_set(spine, None, tmp_path / "again.parquet", ExportOptions(reproduce=manifest))
    assert pq.read_table(tmp_path / "again.parquet").column("user__age").to_pylist() == [1]


def test_progress_bar_runs_the_query(offline: DuckDBOfflineStore, tmp_path: Path) -> None:
    """The bar polls DuckDB's progress from another thread; the query's result and errors come through."""
    import duckdb

    from fstore.store.offline.progress import execute_with_progress

    con = duckdb.connect()
    out = tmp_path / "p.parquet"
    execute_with_progress(con, f"COPY (SELECT range AS n FROM range(2000000)) TO '{out}' (FORMAT parquet)", 10, True)
    assert pq.read_metadata(out).num_rows == 2_000_000
    with pytest.raises(duckdb.Error, match="nope"):
        execute_with_progress(con, "SELECT * FROM nope", 10, True)


def test_progress_bar_claims_no_rows_duckdb_does_not_report() -> None:
    """DuckDB reports -1, or 0 all along for an export (its ORDER BY blocks): the bar pulses instead of
    showing 0 of N spine rows done; a real percentage becomes rows."""
    from fstore.store.offline.progress import completed_rows

    assert completed_rows(-1.0, 1_000) is None and completed_rows(0.0, 1_000) is None
    assert completed_rows(42.5, 1_000) == 425 and completed_rows(130.0, 1_000) == 1_000


def test_progress_bar_over_an_arrow_result() -> None:
    """The match over unclean partitions streams its result into Arrow under a bar of its own."""
    import duckdb

    from fstore.store.offline.progress import run_with_progress

    con = duckdb.connect()
    query = "SELECT range % 7 AS k, count(*) AS n FROM range(3000000) GROUP BY k"
    table = run_with_progress(con, lambda: con.sql(query).to_arrow_reader(1 << 20).read_all(), 10, True, "matching")
    assert sorted(table.column("n").to_pylist()) == [428_571] * 4 + [428_572] * 3


LAYOUTS = ["journals", "segments", "segment then journal", "compacted", "compacted then journal"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_late_redelivery_does_not_win_a_tie(tmp_path: Path, registry: Registry, layout: str) -> None:
    """Two messages at the same key and event time: the one first ingested later wins; a redelivery of the
    other, ingested later still, changes nothing (each message counts at its earliest ingest)."""
    user = registry.get("user", 1)
    root = tmp_path / "offline"
    batches = [
        [{"key": 1, "t": 5, "ingest": 5, "id": "a", "age": 10}, {"key": 1, "t": 5, "ingest": 6, "id": "b", "age": 20}],
        [{"key": 1, "t": 5, "ingest": 9, "id": "a", "age": 10}],  # a again, from another writer
    ]
    segment = CompactionPolicy(compact_after=0, journal_below_rows=1)
    for n, batch in enumerate(batches):
        journal = layout == "journals" or (n == 1 and layout.endswith("journal"))
        writer = DuckDBOfflineStore(root, registry, policy=None if journal else segment)
        writer.write(user, rows(user, *batch))
        if n == 0 and layout.startswith("compacted"):
            writer.compact(user)
        if layout == "compacted" and n == 1:
            writer.compact(user)
    store = DuckDBOfflineStore(root, registry)
    out = tmp_path / "train.parquet"
    store.export_training_set(pa.table({"user_id": [1, 1], "event_timestamp": [at(5), at(4)]}), ["user:age"], out)
    assert pq.read_table(out).column("user__age").to_pylist() == [20, None]


def test_unclean_partitions_settle_only_tied_groups(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path
) -> None:
    """Over fresh segments and journals the match takes every row as it is and settles, by the windows,
    only the spine rows whose latest event time has several rows (a tie, a redelivery); hot keys (the ASOF
    route) settle their keys' rows. Untied history needs no settling statement at all."""
    segment = DuckDBOfflineStore(
        offline.root, offline.registry, policy=CompactionPolicy(compact_after=0, journal_below_rows=1)
    )
    segment.write(
        user, rows(user, {"key": 1, "t": 10, "ingest": 11, "id": "a", "age": 1}, {"key": 2, "t": 10, "age": 7})
    )
    spine = spine_of(user_id=[2, 1], event_timestamp=[at(20), at(20)])
    manifest = offline.export_training_set(spine, ["user:age"], tmp_path / "untied.parquet")
    assert "__fstore_pairs0" in manifest["sql"] and "__fstore_ambiguous0" not in manifest["sql"]
    assert pq.read_table(tmp_path / "untied.parquet").column("user__age").to_pylist() == [7, 1]

    offline.write(user, rows(user, {"key": 1, "t": 10, "ingest": 12, "id": "b", "age": 2}))  # a journal: wins
    segment.write(user, rows(user, {"key": 1, "t": 10, "ingest": 13, "id": "a", "age": 1}))  # a redelivered
    hot = [3] * 20  # user 3 takes the ASOF route, over a tie of its own
    segment.write(
        user,
        rows(
            user,
            {"key": 3, "t": 5, "ingest": 6, "id": "p", "age": 30},
            {"key": 3, "t": 5, "ingest": 6, "id": "q", "age": 31},
        ),
    )
    spine = spine_of(user_id=[2, 1, 1, *hot], event_timestamp=[at(20), at(20), at(9), *[at(5)] * 20])
    manifest = offline.export_training_set(spine, ["user:age"], tmp_path / "tied.parquet")
    assert "__fstore_ambiguous0" in manifest["sql"]
    assert pq.read_table(tmp_path / "tied.parquet").column("user__age").to_pylist() == [7, 2, None] + [31] * 20


@pytest.mark.parametrize("layout", ["compacted", "fresh"])
def test_an_export_does_not_import_pandas(tmp_path: Path, registry: Registry, user: EntitySpec, layout: str) -> None:
    """pandas costs 0.2 s to import, more than the rest of an export's fixed work together; a process that
    exports a parquet spine never needs it (`schema.empty_table()` imported it, `empty_table` does not)."""
    import subprocess
    import sys

    from tests.conftest import DESCRIPTOR_SET

    offline = DuckDBOfflineStore(tmp_path / "offline", registry)
    offline.write(user, rows(user, *({"key": k, "t": 10, "age": k} for k in range(2_000))))
    if layout == "compacted":
        offline.compact(user)
    pq.write_table(pa.table({"user_id": [1, 2], "event_timestamp": [at(20), at(20)]}), tmp_path / "spine.parquet")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fstore.schema.registry import Registry\n"
        "from fstore.store.offline.duckdb import DuckDBOfflineStore\n"
        f"registry = Registry.from_descriptor_set(Path({str(DESCRIPTOR_SET)!r}))\n"
        f"store = DuckDBOfflineStore(Path({str(tmp_path / 'offline')!r}), registry)\n"
        f"spine, out = {str(tmp_path / 'spine.parquet')!r}, Path({str(tmp_path / 'out.parquet')!r})\n"
        "store.export_training_set(spine, ['user:*'], out)\n"
        "print('pandas' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    assert pq.read_table(tmp_path / "out.parquet").column("user__age").to_pylist() == [1, 2]
