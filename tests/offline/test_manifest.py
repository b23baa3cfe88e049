"""The reproducibility manifest, `reproduce`, and bad input refused before any work."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fstore
from fstore.errors import UnknownEntityError, UnknownFeatureError, UnknownVersionError
from fstore.schema.registry import EntitySpec
from fstore.schema.tables import arrow_schema
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.export import ExportError, manifest_path, output_stats
from fstore.store.offline.manifest import ExportOptions
from fstore.store.offline.spine import SpineError, content_sha256

from .conftest import T0, at, rows


def random_history(spec: EntitySpec, n: int, users: int, seed: int, first_ingest: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    event = T0.timestamp() * 1e6 + rng.integers(0, 3 * 86_400_000_000, n)
    return pa.table(
        {
            "user_id": rng.integers(0, users, n),
            "event_time": pa.array(event.astype("int64")).cast(pa.timestamp("us", tz="UTC")),
            "ingest_time": pa.array(event.astype("int64") + first_ingest).cast(pa.timestamp("us", tz="UTC")),
            "message_id": [f"{seed}-{i}" for i in range(n)],
            "age": rng.integers(18, 90, n).astype("int32"),
            "country": pa.array(rng.choice(["DE", "FR", ""], n)),
            "is_premium": pa.nulls(n, pa.bool_()),
            "lifetime_orders": pa.nulls(n, pa.int64()),
            "avg_order_value": rng.random(n),
            "favorite_categories": [["a", "b"]] * n,
            "embedding": [list(map(float, range(4)))] * n,
        }
    ).cast(arrow_schema(spec))


@pytest.fixture
def spine_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    n = 30_000
    ts = (T0.timestamp() * 1e6 + rng.integers(0, 4 * 86_400_000_000, n)).astype("int64")
    path = tmp_path / "spine.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": rng.integers(0, 3_000, n),
                "event_timestamp": pa.array(ts).cast(pa.timestamp("us", tz="UTC")),
                "label": rng.integers(0, 2, n),
            }
        ),
        path,
    )
    return path


def test_reproduce_is_byte_identical_after_new_events(
    offline: DuckDBOfflineStore, user: EntitySpec, spine_file: Path, tmp_path: Path
) -> None:
    offline.write(user, random_history(user, 40_000, 3_000, seed=1, first_ingest=1_000_000))
    for chunk in range(3):  # a few fresh segments, so reads have partitions to deduplicate
        offline.write(user, random_history(user, 100, 3_000, seed=10 + chunk, first_ingest=2_000_000))
    first = tmp_path / "a.parquet"
    manifest = offline.export_training_set(str(spine_file), ["user:*"], first)
    assert manifest_path(first).is_file()
    assert json.loads(manifest_path(first).read_text()) == manifest

    # Newer events (later ingest) that would change the answer, a redelivery, then a compaction.
    offline.write(user, random_history(user, 20_000, 3_000, seed=2, first_ingest=10**12))
    offline.write(user, random_history(user, 100, 3_000, seed=10, first_ingest=10**12))
    offline.compact(user)
    live = tmp_path / "live.parquet"
    offline.export_training_set(str(spine_file), ["user:*"], live)
    assert pq.read_table(live) != pq.read_table(first)

    again = tmp_path / "b.parquet"
    reproduced = offline.export_training_set(None, None, again, ExportOptions(reproduce=manifest_path(first)))
    assert again.read_bytes() == first.read_bytes()
    assert reproduced["output"]["sha256"] == manifest["output"]["sha256"]


def test_manifest_contents(offline: DuckDBOfflineStore, user: EntitySpec, item: EntitySpec, tmp_path: Path) -> None:
    offline.write(user, rows(user, {"key": 1, "t": 0, "age": 3, "ingest": 7}))
    offline.write(item, rows(item, {"key": "a", "t": 0, "price": 2.0, "ingest": 9}))
    spine = pa.table({"user_id": [1, 2], "item_id": ["a", "a"], "event_timestamp": [at(1), at(1)]})
    m = offline.export_training_set(spine, ["user:age", "item:price", "item:brand"], tmp_path / "t.parquet")
    assert m["fstore_version"] == fstore.__version__
    assert m["features"] == ["user:age", "item:price", "item:brand"]
    assert [(e["entity"], e["version"], e["fingerprint"]) for e in m["entities"]] == [
        ("user", 1, user.fingerprint),
        ("item", 1, item.fingerprint),
    ]
    assert m["entities"][0]["high_water_mark"] == at(7).isoformat()
    assert m["spine"] == {"path": None, "rows": 2, "sha256": content_sha256(spine)}
    assert "arg_max(h.__fstore_position" in m["sql"]  # the query that ran (duckdb_join.py)
    assert m["output"]["rows"] == 2
    assert m["output"]["columns"] == {
        "user__age": {"nulls": 1},
        "item__price": {"nulls": 0},
        "item__brand": {"nulls": 2},
    }


def test_spine_hash_ignores_chunking_and_source() -> None:
    table = pa.table({"user_id": list(range(100_000)), "event_timestamp": [at(1)] * 100_000})
    rechunked = pa.concat_tables([table.slice(0, 33_333), table.slice(33_333)])
    assert content_sha256(table) == content_sha256(rechunked)
    assert content_sha256(table) != content_sha256(table.slice(1))


def test_reproduce_refuses_a_different_spine(offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path) -> None:
    offline.write(user, rows(user, {"key": 1, "t": 0, "age": 3}))
    spine = pa.table({"user_id": [1], "event_timestamp": [at(1)]})
    offline.export_training_set(spine, ["user:age"], tmp_path / "t.parquet")
    other = pa.table({"user_id": [2], "event_timestamp": [at(1)]})
    again = ExportOptions(reproduce=tmp_path / "t.parquet.manifest.json")
    with pytest.raises(ExportError, match="spine differs"):
        offline.export_training_set(other, None, tmp_path / "u.parquet", again)
    with pytest.raises(ExportError, match="in-memory"):
        offline.export_training_set(None, None, tmp_path / "u.parquet", again)


GOOD = {"user_id": [1], "event_timestamp": [at(1)]}


@pytest.mark.parametrize(
    ("spine", "features", "options", "error", "message"),
    [
        ({"user_id": [1]}, ["user:age"], {}, SpineError, "no timestamp column 'event_timestamp'"),
        ({"event_timestamp": [at(1)]}, ["user:age"], {}, SpineError, "no column 'user_id', the key of entity 'user'"),
        (
            {"user_id": ["1"], "event_timestamp": [at(1)]},
            ["user:age"],
            {},
            SpineError,
            "must be an integer, not string",
        ),
        ({"user_id": [1], "event_timestamp": ["2026-01-01"]}, ["user:age"], {}, SpineError, "must be a timestamp"),
        ({"user_id": [1], "event_timestamp": [None]}, ["user:age"], {}, SpineError, "must be a timestamp"),
        ({"item_id": [1], "event_timestamp": [at(1)]}, ["item:price"], {}, SpineError, "must be a string"),
        (GOOD, ["user:nope"], {}, UnknownFeatureError, "unknown feature 'nope'"),
        (GOOD, ["shop:age"], {}, UnknownEntityError, "unknown entity 'shop'"),
        (GOOD, ["user:age"], {"versions": {"user": 9}}, UnknownVersionError, "unknown version 9"),
        (GOOD, ["user:age"], {"versions": {"item": 1}}, ExportError, "no feature of it is requested"),
        (GOOD, ["userage"], {}, ExportError, "must look like entity:feature"),
        (GOOD, [], {}, ExportError, "no features requested"),
        (GOOD, ["user:age"], {"column_format": "{feature"}, ExportError, "column format"),
        (GOOD, ["user:age"], {"column_format": "user_id"}, ExportError, "clashes"),
        (GOOD, ["user:age"], {"reproduce": "/nonexistent/m.json"}, ExportError, "does not exist"),
        ({"user_id": [1, None], "event_timestamp": [at(1), at(2)]}, ["user:age"], {}, SpineError, "1 null ids"),
        (
            {"user_id": pa.array([2**64 - 1], pa.uint64()), "event_timestamp": [at(1)]},
            ["user:age"],
            {},
            SpineError,
            "18446744073709551615, which does not fit 'user''s int64 key",
        ),
        (
            {"user_id": [1], "event_timestamp": pa.array([datetime(1, 1, 1)], pa.timestamp("us"))},
            ["user:age"],
            {},
            SpineError,
            "outside years 1 to 9999",
        ),
        (
            {"user_id": [1], "event_timestamp": pa.array([datetime(9999, 12, 31, 23)], pa.timestamp("us"))},
            ["user:age"],
            {},
            SpineError,
            "outside years 1 to 9999",
        ),
    ],
)
def test_bad_input_is_refused_before_any_work(
    offline: DuckDBOfflineStore,
    tmp_path: Path,
    spine: dict,
    features: list[str],
    options: dict,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        offline.export_training_set(pa.table(spine), features, tmp_path / "t.parquet", ExportOptions(**options))
    assert not (tmp_path / "t.parquet").exists()


def test_null_spine_timestamps_are_refused(offline: DuckDBOfflineStore, tmp_path: Path) -> None:
    spine = pa.table({"user_id": [1, 2], "event_timestamp": pa.array([at(1), None], pa.timestamp("us", tz="UTC"))})
    with pytest.raises(SpineError, match="1 null timestamps"):
        offline.export_training_set(spine, ["user:age"], tmp_path / "t.parquet")


def test_missing_or_unreadable_spine_file(offline: DuckDBOfflineStore, tmp_path: Path) -> None:
    with pytest.raises(SpineError, match="does not exist"):
        offline.export_training_set(tmp_path / "nope.parquet", ["user:age"], tmp_path / "t.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(SpineError, match="not a readable parquet file"):
        offline.export_training_set(tmp_path / "junk.parquet", ["user:age"], tmp_path / "t.parquet")
    with pytest.raises(SpineError, match="must be a parquet path"):
        offline.export_training_set([1, 2], ["user:age"], tmp_path / "t.parquet")


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("gs://bucket/train.parquet", "remote paths are not supported yet"),
        ("DIR", "is a directory"),
        ("SPINE", "is the spine itself"),
    ],
)
def test_bad_outputs_are_refused_and_the_spine_is_untouched(
    offline: DuckDBOfflineStore, user: EntitySpec, tmp_path: Path, out: str, message: str
) -> None:
    offline.write(user, rows(user, {"key": 1, "t": 0, "age": 3}))
    spine = tmp_path / "spine.parquet"
    pq.write_table(pa.table(GOOD), spine)
    before = spine.read_bytes()
    target = {"DIR": str(tmp_path), "SPINE": str(spine)}.get(out, out)
    with pytest.raises(ExportError, match=message):
        offline.export_training_set(str(spine), ["user:age"], Path(target))
    assert spine.read_bytes() == before
    assert not Path("gs:").exists()


def test_a_remote_spine_is_refused_naming_it(offline: DuckDBOfflineStore, tmp_path: Path) -> None:
    with pytest.raises(SpineError, match=re.escape("--spine 'gs://bucket/spine.parquet': remote paths")):
        offline.export_training_set("gs://bucket/spine.parquet", ["user:age"], tmp_path / "t.parquet")


def test_reproduce_is_byte_identical_after_a_field_was_added(
    schema_copy: Any, spine_file: Path, tmp_path: Path
) -> None:
    before = schema_copy.registry()
    user_v1 = before.get("user", 1)
    store = DuckDBOfflineStore(tmp_path / "offline", before, threads=2)
    store.write(user_v1, random_history(user_v1, 20_000, 3_000, seed=1, first_ingest=1_000_000))
    first = tmp_path / "a.parquet"
    manifest = store.export_training_set(str(spine_file), ["user:*"], first)
    store.close()
    assert manifest["entities"][0]["columns"]["embedding"] == "repeated float"

    schema_copy.add_user_field()  # an optional double, added the compatible way; then more events carry it
    after = schema_copy.registry()
    grown = after.get("user", 1)
    assert user_v1.fingerprint in grown.earlier_fingerprints
    store = DuckDBOfflineStore(tmp_path / "offline", after, threads=2)
    newer = random_history(user_v1, 5_000, 3_000, seed=2, first_ingest=10**12)
    store.write(grown, newer.append_column("churn_score", pa.array(np.random.default_rng(3).random(5_000))))
    again = tmp_path / "b.parquet"
    store.export_training_set(None, None, again, ExportOptions(reproduce=manifest_path(first)))
    assert again.read_bytes() == first.read_bytes()

    # Anything else is refused, naming what changed: a column the export read that changed type…
    changed = json.loads(manifest_path(first).read_text())
    changed["entities"][0]["columns"]["age"] = "int64"
    with pytest.raises(ExportError, match="columns the manifest read changed \\(age was int64, is int32\\)"):
        store.export_training_set(None, None, tmp_path / "c.parquet", ExportOptions(reproduce=changed))
    # …or a fingerprint this version never had.
    changed["entities"][0]["fingerprint"] = "0" * 64
    with pytest.raises(ExportError, match="not an earlier compatible shape of user/v1"):
        store.export_training_set(None, None, tmp_path / "c.parquet", ExportOptions(reproduce=changed))
    store.close()


@pytest.mark.parametrize("compacted", [False, True], ids=["fresh", "compacted"])
def test_a_feature_added_after_every_file_reads_as_nulls_of_its_type(
    schema_copy: Any, spine_file: Path, tmp_path: Path, compacted: bool
) -> None:
    """Every file predates `churn_score`: the export's first statement fails to bind without the table of
    the current schema (join_source's `complete_schema`), and the second gives the column, all null."""
    user_v1 = schema_copy.registry().get("user", 1)
    store = DuckDBOfflineStore(tmp_path / "offline", schema_copy.registry(), threads=2)
    store.write(user_v1, random_history(user_v1, 20_000, 3_000, seed=1, first_ingest=1_000_000))
    if compacted:
        store.compact(user_v1)
    store.close()
    schema_copy.add_user_field()
    store = DuckDBOfflineStore(tmp_path / "offline", schema_copy.registry(), threads=2)
    out = tmp_path / "out.parquet"
    manifest = store.export_training_set(str(spine_file), ["user:churn_score", "user:age"], out)
    table = pq.read_table(out)
    assert table.schema.field("user__churn_score").type == pa.float64()
    assert table.column("user__churn_score").null_count == table.num_rows == 30_000
    assert table.column("user__age").null_count < table.num_rows
    assert manifest["output"]["columns"]["user__churn_score"]["nulls"] == 30_000
    store.close()


def test_null_counts_from_the_copy_equal_a_read_back(offline: DuckDBOfflineStore, user: EntitySpec) -> None:
    """The manifest's counts come from DuckDB's COPY statistics; over several row groups, with null lists,
    empty lists and unmatched rows, they equal counting the written file."""
    history = [
        {"key": k, "t": 10, "age": None if k % 3 else k, "favorite_categories": ["a"] if k % 2 else [],
         "embedding": [0.5] * 16 if k % 5 else []}
        for k in range(1, 3_000)
    ]  # fmt: skip
    offline.write(user, rows(user, *history))
    keys = [k % 4_000 for k in range(130_000)]  # more than one 122,880-row group; keys >= 3,000 match nothing
    spine = pa.table({"user_id": keys, "event_timestamp": [at(20)] * len(keys)})
    out = Path(offline.root).parent / "t.parquet"
    manifest = offline.export_training_set(spine, ["user:*"], out)
    assert pq.ParquetFile(out).metadata.num_row_groups > 1
    columns = list(manifest["output"]["columns"])
    assert manifest["output"] == output_stats(out, columns)  # without `counted`: DuckDB reads the file back
    assert 0 < manifest["output"]["columns"]["user__age"]["nulls"] < 130_000
