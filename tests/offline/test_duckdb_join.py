"""find_hot_keys: the spine keys routed to the ASOF join, by numpy for integer keys and by DuckDB for others."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

from fstore.store.offline.duckdb_join import HOT_KEY_SPINE_ROWS, find_hot_keys


def brute_force(keys: list[object]) -> set[object]:
    return {k for k in set(keys) if keys.count(k) > HOT_KEY_SPINE_ROWS}


@pytest.mark.parametrize("type_", [pa.int64(), pa.int32(), pa.uint64(), pa.int8(), pa.string()])
def test_hot_keys_are_the_keys_with_more_than_the_bound(type_: pa.DataType) -> None:
    rng = random.Random(7)
    sizes = [1, 2, HOT_KEY_SPINE_ROWS, HOT_KEY_SPINE_ROWS + 1, 40]
    for _ in range(30):
        counts = {k: rng.choice(sizes) for k in range(rng.randint(0, 8))}
        keys: list[object] = [str(k) if pa.types.is_string(type_) else k for k, n in counts.items() for _ in range(n)]
        rng.shuffle(keys)
        # One chunk or two, sliced with an offset: the numpy path reads the buffers itself.
        array = pa.array(["0" if pa.types.is_string(type_) else 0, *keys], type=type_)[1:]
        halves = [array[: len(keys) // 2], array[len(keys) // 2 :]]
        column = pa.chunked_array(rng.choice([halves, [array]]), type=type_)
        spine = pa.table({"k": column})
        con = duckdb.connect()
        con.register("spine", spine)
        hot = find_hot_keys(con, "spine", spine, "k")
        expected = brute_force(keys)
        assert (hot is None) == (not expected)
        if hot is not None:
            assert hot.column("key").type == type_
            assert set(hot.column("key").to_pylist()) == expected
