"""The export against a brute-force Python reference, on random small histories full of ties, duplicates
and TTL boundaries."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fstore.schema.registry import Registry
from fstore.store.offline.compaction import CompactionPolicy
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.duckdb_join import HOT_KEY_SPINE_ROWS

from .conftest import at, rows

TTL = 2_592_000  # user v1's TTL, checked below
TIMES = [0, 1, 5, TTL - 1, TTL, TTL + 1, TTL + 5, 2 * TTL]


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "key": st.integers(1, 3),
                    "t": st.sampled_from(TIMES),
                    "ingest_offset": st.integers(0, 2),
                    "age": st.integers(0, 99) | st.none(),
                }
            ),
            max_size=25,
        )
    )
    records: list[dict[str, Any]] = [
        {
            "key": e["key"],
            "t": e["t"],
            "ingest": e["t"] + e["ingest_offset"],
            "id": f"m{n:02d}",
            "age": e["age"],
        }
        for n, e in enumerate(events)
    ]
    if records:  # redeliveries: the same message again, ingested later
        for original in draw(st.lists(st.sampled_from(records), max_size=5)):
            records.append({**original, "ingest": original["ingest"] + draw(st.integers(0, 3))})
    return draw(st.permutations(records))


def reference(history: list[dict[str, Any]], spine: list[tuple[int, int]]) -> list[int | None]:
    first: dict[str, dict[str, Any]] = {}
    for r in history:
        if r["id"] not in first or r["ingest"] < first[r["id"]]["ingest"]:
            first[r["id"]] = r
    answers = []
    for key, ts in spine:
        candidates = [r for r in first.values() if r["key"] == key and ts - TTL < r["t"] <= ts]
        best = max(candidates, key=lambda r: (r["t"], r["ingest"], r["id"]), default=None)
        answers.append(None if best is None else best["age"])
    return answers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=histories(),
    spine=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(TIMES)), min_size=1, max_size=12),
    batches=st.integers(1, 4),
    compact=st.booleans(),
)
def test_export_matches_brute_force(
    registry: Registry, history: list[dict[str, Any]], spine: list[tuple[int, int]], batches: int, compact: bool
) -> None:
    assert export_ages(registry, history, spine, batches, compact) == reference(history, spine)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=histories(),
    spine=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(TIMES)), max_size=12),
    hot_key=st.integers(1, 4),
    hot_times=st.lists(st.sampled_from(TIMES), min_size=HOT_KEY_SPINE_ROWS + 1, max_size=HOT_KEY_SPINE_ROWS + 8),
    batches=st.integers(1, 4),
    compact=st.booleans(),
)
def test_keys_with_many_spine_rows_match_brute_force(
    registry: Registry,
    history: list[dict[str, Any]],
    spine: list[tuple[int, int]],
    hot_key: int,
    hot_times: list[int],
    batches: int,
    compact: bool,
) -> None:
    """A key with more than HOT_KEY_SPINE_ROWS spine rows takes the ASOF route (duckdb_join.py), the others
    the hash join, in one export."""
    spine = spine + [(hot_key, t) for t in hot_times]
    assert export_ages(registry, history, spine, batches, compact) == reference(history, spine)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=histories(),
    spine=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(TIMES)), min_size=1, max_size=20),
    batches=st.integers(2, 5),
    compact_after=st.integers(0, 5),
)
def test_compacted_files_fresh_segments_and_journals_together_match_brute_force(
    registry: Registry, history: list[dict[str, Any]], spine: list[tuple[int, int]], batches: int, compact_after: int
) -> None:
    """Every other batch a fresh segment, the others journals; a compaction after batch `compact_after` (none
    when it is past the last), so a partition may hold a compacted file, fresh segments and journals at once."""
    got = export_ages(registry, history, spine, batches, False, segments=True, compact_after=compact_after)
    assert got == reference(history, spine)


def export_ages(
    registry: Registry,
    history: list[dict[str, Any]],
    spine: list[tuple[int, int]],
    batches: int,
    compact: bool,
    *,
    segments: bool = False,
    compact_after: int | None = None,
) -> list[int | None]:
    user = registry.get("user", 1)
    assert user.ttl_seconds == TTL
    with tempfile.TemporaryDirectory() as tmp:
        store = DuckDBOfflineStore(Path(tmp) / "offline", registry)
        for n in range(batches):
            part = history[n::batches]
            if part:
                # each batch from a fresh store object: duplicates across batches reach the files
                policy = CompactionPolicy(compact_after=0, journal_below_rows=1) if segments and n % 2 else None
                DuckDBOfflineStore(store.root, registry, policy=policy).write(user, rows(user, *part))
            if n == compact_after:
                store.compact(user)
        if compact:
            store.compact(user)
        table = pa.table({"user_id": [k for k, _ in spine], "event_timestamp": [at(t) for _, t in spine]})
        out = Path(tmp) / "train.parquet"
        store.export_training_set(table, ["user:age"], out)
        ages: list[int | None] = pq.read_table(out).column("user__age").to_pylist()
        return ages
