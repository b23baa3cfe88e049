"""Float SUM and MEAN in the DuckDB export are exact and do not depend on the order of the rows
(store/offline/aggregation_sql.py): through `export_training_set`, a window's exported sum is `math.fsum` of
its values to the bit, its mean that sum divided by the count, for adversarial values (cancellation,
1e300 beside 1e-300, subnormals, ties, -0.0, sums past the largest double), and the exported file is the
same bytes whatever the files and the row order the history was written in. NaN and the infinities follow
IEEE addition; nulls are skipped; MIN and MAX are NaN when the window holds a NaN.

The rules checked here, beyond `math.fsum`:
- a zero SUM, MEAN, MIN or MAX is +0.0 (the online tiles start their sums from 0.0 too);
- SUM and MEAN: NaN if the window has a NaN or both infinities, else the infinity it has;
- MIN and MAX: NaN if the window has a NaN (IEEE 754-2019 minimum/maximum, BigQuery's MIN/MAX), else the
  least/greatest value, the infinities included; a NaN is exported as the one quiet NaN (0x7ff8...);
- nulls count for COUNT (it counts events) and for nothing else: no value at all is SUM 0, MEAN/MIN/MAX null.
"""

from __future__ import annotations

import fractions
import math
import random
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fstore.schema.aggregations import HOUR, MINUTE, AggregationSpec, FamilySpec
from fstore.schema.registry import Registry
from fstore.schema.tables import arrow_schema
from fstore.store.offline.duckdb import DuckDBOfflineStore

from .test_aggregations import T0, history_table

EDGES = "order_edges"
LARGEST = 1.7976931348623157e308
NAN, INF = math.nan, math.inf
Values = Sequence[float | None]


def edge_family(registry: Registry) -> FamilySpec:
    """A family of `order` with every float aggregate of `amount`, over a lifetime and over 1 h."""
    order = registry.get("order")
    amount = order.feature("amount")
    features = [AggregationSpec("orders", "count", None, None, None)]
    for window, tile, suffix in ((None, None, ""), (HOUR, 5 * MINUTE, "_1h")):
        features += [AggregationSpec(f"amount_{f}{suffix}", f, amount, window, tile) for f in ("sum", "mean")]
    features += [AggregationSpec(f"amount_{f}", f, amount, None, None) for f in ("min", "max")]
    return FamilySpec(EDGES, order, order.feature("user_id"), HOUR, tuple(features))


def edge_registry() -> Registry:
    """The repository's registry with `order_edges` beside the declared `user_orders`."""
    default = Registry.default()
    families = [default.family(name) for name in default.families()]
    return Registry(list(default), default.source, families=[*families, edge_family(default)])


FEATURES = [f"{EDGES}:*", "user_orders:amount_sum_7d", "user_orders:amount_mean_1d", "user_orders:order_count_1h"]
SUMS = ["order_edges__amount_sum", "order_edges__amount_sum_1h", "user_orders__amount_sum_7d"]
MEANS = ["order_edges__amount_mean", "order_edges__amount_mean_1h", "user_orders__amount_mean_1d"]
AT = T0 + 30 * 24 * HOUR  # the spine's time: every event is in the last 50 minutes before it


def events(windows: Mapping[int, Values]) -> list[dict[str, Any]]:
    """One order per value, user = the window's key, all within the 1 h window before AT."""
    out = []
    for key, values in windows.items():
        for i, value in enumerate(values):
            event_us = AT - (1 + i % 3000) * 1_000_000
            ids = {"order_id": f"{key}-{i}", "message_id": f"{key}-{i}", "user_id": key}
            times = {"event_us": event_us, "ingest_us": event_us, "backfilled": False}
            out.append({**ids, **times, "amount": value, "status": "paid"})
    return out


def export(tmp_path: Path, writes: list[list[dict[str, Any]]], keys: list[int], name: str = "out") -> Path:
    """The export of FEATURES for `keys` at AT, from a store that got `writes` (one file each), in order."""
    registry = edge_registry()
    order = registry.get("order")
    store = DuckDBOfflineStore(tmp_path / f"{name}-offline", registry, threads=2)
    for chunk in writes:
        store.write(order, history_table(chunk).select(arrow_schema(order).names).cast(arrow_schema(order)))
    spine = pa.table({
        "user_id": pa.array(keys, pa.int64()),
        "event_timestamp": pa.array([AT] * len(keys), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    out = tmp_path / f"{name}.parquet"
    store.export_training_set(spine, FEATURES, out)
    store.close()
    return out


def exported(tmp_path: Path, windows: Mapping[int, Values]) -> dict[int, dict[str, Any]]:
    out = export(tmp_path, [events(windows)], [*windows, 0])  # user 0 has no events
    rows = {r["user_id"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == len(windows) + 1
    assert rows[0]["order_edges__orders"] == 0 and rows[0]["order_edges__amount_sum"] == 0.0
    assert rows[0]["order_edges__amount_mean"] is None and rows[0]["order_edges__amount_max"] is None
    return rows


def bits(value: float | None) -> bytes | None:
    return None if value is None else struct.pack("<d", value)


def correctly_rounded(values: Sequence[float]) -> float:
    """`math.fsum`, and where fsum refuses an intermediate sum above the largest double, the exact sum
    rounded (float() of a Fraction rounds correctly), or the infinity it rounds to."""
    try:
        return math.fsum(values)
    except OverflowError:
        exact = sum(map(fractions.Fraction, values))
        try:
            return float(exact)
        except OverflowError:
            return INF if exact > 0 else -INF


MAX_DOUBLE_RANGE = [LARGEST, LARGEST, -LARGEST]  # exactly LARGEST; a left-to-right sum is inf
EXACT: dict[str, dict[int, list[float]]] = {
    "one value": {1: [0.1], 2: [-7.25e-5]},
    "one tiny value": {1: [1e-300]},  # was 1.0000000028579316e-300: 2^k was capped at 2^1023
    "tiny values": {1: [1e-300, 3e-300, -2e-300, 7e-301]},
    "subnormals": {1: [5e-324, 1e-310, -3e-320, 2.2e-308, 2.2250738585072014e-308]},  # were 0.0 or off
    "a subnormal difference": {1: [2.2250738585072014e-308, -2.225073858507201e-308]},
    "1e300 beside 1e-300": {1: [1e300, 1e-300, 3e299, -1e-300, 1e-300, -2e299], 2: [1e-300, 1e300]},
    "cancellation": {1: [1e16, 1.0, -1e16], 2: [2.0**53, 1.0, 1.0, -(2.0**53)], 3: [1e16, -1e-3, -1e16, 1e-3, 5e-4]},
    "ties to even": {1: [2.0**53, 1.0], 2: [2.0**53 + 2, 1.0], 3: [2.0**53, 1.0, 1.0], 4: [1.0, 2.0**-53]},
    "-0.0": {1: [-0.0], 2: [-0.0, -0.0], 3: [0.0, -0.0], 4: [1.5, -1.5]},
    "past the largest double": {1: [LARGEST, LARGEST], 2: MAX_DOUBLE_RANGE, 3: [-LARGEST, -LARGEST, 1.0]},
}  # fmt: skip


def mixed_signs(seed: int, keys: int, per_key: int) -> dict[int, list[float]]:
    """Values of both signs over 14 decimal orders (well within the exact range for this many rows)."""
    rng = random.Random(seed)
    return {
        key: [rng.choice([1, -1]) * rng.uniform(0.5, 1) * 10.0 ** rng.randint(-7, 7) for _ in range(per_key)]
        for key in range(1, keys + 1)
    }


EXACT["many of mixed sign"] = mixed_signs(0, 3, 700)


@pytest.mark.parametrize("windows", list(EXACT.values()), ids=list(EXACT))
def test_an_exported_sum_is_fsum_to_the_bit(tmp_path: Path, windows: dict[int, list[float]]) -> None:
    """Every summed feature of the window (lifetime, 1 h, and the declared family's 7 d / 1 d) is the
    correctly rounded sum of its values, its mean that sum / the count, as `math.fsum(v) / len(v)` gives."""
    rows = exported(tmp_path, windows)
    for key, values in windows.items():
        total = correctly_rounded(values) + 0.0  # + 0.0: a zero sum is +0.0
        row = rows[key]
        for column in SUMS:
            assert bits(row[column]) == bits(total), (column, key, row[column], total)
        for column in MEANS:
            assert bits(row[column]) == bits(total / len(values) + 0.0), (column, key, row[column])
        assert row["order_edges__orders"] == len(values)
        assert row["order_edges__amount_min"] == min(values) and row["order_edges__amount_max"] == max(values)


def test_naive_sums_of_these_windows_are_not_exact() -> None:
    """The cases above have teeth: a left-to-right float sum gets most of them wrong."""
    wrong = [
        name for name, windows in EXACT.items()
        if any(bits(sum(vs) + 0.0) != bits(correctly_rounded(vs) + 0.0) for vs in windows.values())
    ]  # fmt: skip
    assert set(wrong) >= {"cancellation", "ties to even", "past the largest double", "many of mixed sign"}, wrong


def exact_from(values: Sequence[float]) -> float:
    """The least magnitude from which every double enters a key's sum exactly: 2^(e(M) + e(N) - 73), M the
    largest finite nonzero |x| among `values` (all the rows of one key the family reads), N their number,
    2^e(x) > x >= 2^(e(x) - 1). A double of at least that magnitude is a multiple of 2^-k, k = 125 - e(M) -
    e(N), the key's scale."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    return 2.0 ** (math.frexp(max(finite))[1] + len(values).bit_length() - 73)


def within_bound(got: float, window: Sequence[float], rows: Sequence[float] | None = None) -> bool:
    """The bound on a window's sum whose values are not all of at least `exact_from` of its key's `rows`
    (the window itself by default): each such value x is rounded to a multiple of 2^-k, off by at most
    min(|x|, 2^-(k+1)), and the sum is rounded once more (half an ulp; one ulp allowed here)."""
    rows = window if rows is None else rows
    k = 125 - math.frexp(max(abs(v) for v in rows if v))[1] - len(rows).bit_length()
    want = math.fsum(window)
    small = [abs(v) for v in window if abs(v) < exact_from(rows)]
    return abs(got - want) <= sum(min(v, 2.0 ** -(k + 1)) for v in small) + math.ulp(want)


def test_a_window_far_below_the_largest_value_read_is_exact_only_to_the_bound(tmp_path: Path) -> None:
    """k = 125 - e(M) - e(N) is one per group-by key and field (M the largest finite |x| of that key's rows
    the family reads, N that key's rows, 2^e(x) > x), so within one key a value that is no multiple of 2^-k,
    one below 2^(e(M) + e(N) - 73), is rounded to one: a window that cancels 1e300 down to 1e-300 (user 1)
    is off by at most min(|x|, 2^-(k+1)) per such value and the final rounding (here it reads 0.0). Another
    key's values change nothing: user 2's 1e-300s beside user 3's 1e300 are exact.
    Exactness is not claimed for user 1 (docs/aggregations.md); the bound is."""
    windows: dict[int, Values] = {1: [1e300, 1e-300, -1e300], 2: [1e-300, 2e-300], 3: [1e300], 4: [5e-4, 1e3]}
    rows = exported(tmp_path, windows)
    for key, values in windows.items():
        finite = [v for v in values if v is not None]
        for column in SUMS:
            assert within_bound(rows[key][column], finite), (column, key, rows[key][column], math.fsum(finite))
            if key > 1:
                assert bits(rows[key][column]) == bits(math.fsum(finite)), (column, key, rows[key][column])


def test_a_key_s_sums_do_not_depend_on_another_key_s_values(tmp_path: Path) -> None:
    """Online/offline parity for a key whatever the other keys hold: user 1's windows hold only 1e-300s,
    user 2's a 7.0. Each user's exported SUM and MEAN (lifetime, 1 h, 7 d, 1 d) are `math.fsum` of its own
    window (and / its count) to the bit, as the online tiles' double sums give them: 3e-300, not the 0.0 a
    scale chosen for the whole field (from user 2's 7.0) made of user 1's sum."""
    windows = {1: [1e-300, 1e-300, 1e-300], 2: [7.0]}
    rows = exported(tmp_path, windows)
    for key, values in windows.items():
        total = math.fsum(values)
        for column in SUMS:
            assert bits(rows[key][column]) == bits(total), (column, key, rows[key][column], total)
        for column in MEANS:
            assert bits(rows[key][column]) == bits(total / len(values)), (column, key, rows[key][column])
    assert rows[1]["order_edges__amount_sum"] == 3e-300 and rows[2]["order_edges__amount_sum"] == 7.0


def test_a_key_s_own_wide_range_is_exact_within_the_bound(tmp_path: Path) -> None:
    """User 1's values span 21 decimal orders (1e10 down to 1.3 * 2^-36) and cancel to 5.6e-10, beside
    user 2's 1e300: every one of user 1's values is at least 2^(e(M) + e(N) - 73) = 2^-36 for its own M =
    1e10 (e(M) = 34) and N = 6 rows (e(N) = 3: 2^3 > 6), so each is a multiple of its key's 2^-k, k = 125 -
    34 - 3 = 88, and the sum is fsum's to the bit (a left-to-right sum is not).
    What still applies within one key: M and N are over all the key's rows the family reads, not one
    window's. A value below 2^(e(M) + e(N) - 73) of its own key's M is rounded to a multiple of 2^-k, off by
    at most min(|x|, 2^-(k+1)), and the sum is rounded once more: a window that cancels to far below its key's
    largest value (user 3: 1e300 + 1e-300 - 1e300), or a window holding only small values while an older
    event of the same key, outside that window but read for a wider one, is large (user 4: 1e300 two hours
    ago, 1e-300 and 2e-300 within the last hour), is exact only to that bound; both read 0.0 where fsum gives
    1e-300 and 3e-300 (and the online tiles too)."""
    wide = [1e10, 3.3e-10, -1e10, 1.7e-10, 4.4e-11, 1.3 * 2.0**-36]
    assert min(abs(v) for v in wide) >= exact_from(wide) == 2.0**-36
    assert sum(wide) != math.fsum(wide)
    cancelling = [1e300, 1e-300, -1e300]
    windows: dict[int, Values] = {1: wide, 2: [1e300], 3: cancelling, 4: [1e-300, 2e-300]}
    older = events({4: [1e300]})[0] | {"order_id": "4-old", "message_id": "4-old"}
    older["event_us"] = older["ingest_us"] = AT - 2 * HOUR  # in the lifetime and 7 d windows, not the 1 h one
    out = export(tmp_path, [[*events(windows), older]], [1, 2, 3, 4])
    rows = {r["user_id"]: r for r in pq.read_table(out).to_pylist()}
    for column in SUMS:
        assert bits(rows[1][column]) == bits(math.fsum(wide)), (column, rows[1][column], math.fsum(wide))
        assert rows[2][column] == 1e300
        assert within_bound(rows[3][column], cancelling), (column, rows[3][column])
    assert exact_from(cancelling) > 1e-300
    assert rows[4]["order_edges__amount_sum"] == rows[4]["user_orders__amount_sum_7d"] == math.fsum([1e300, 3e-300])
    last_hour = rows[4]["order_edges__amount_sum_1h"]
    assert within_bound(last_hour, [1e-300, 2e-300], [1e300, 1e-300, 2e-300]), last_hour


SPECIAL: list[tuple[Values, float, float, float]] = [  # values, SUM (and MEAN's NaN/inf), MIN, MAX
    ([NAN], NAN, NAN, NAN),
    ([1.0, NAN, -2.0], NAN, NAN, NAN),
    ([1.0, -NAN], NAN, NAN, NAN),  # a NaN with its sign bit set: exported as the quiet NaN all the same
    ([INF], INF, INF, INF),
    ([-INF, 2.0, 1e300], -INF, -INF, 1e300),
    ([INF, -INF], NAN, -INF, INF),
    ([INF, 3.0, INF, -LARGEST], INF, -LARGEST, INF),
    ([NAN, INF, None], NAN, NAN, NAN),
    ([-INF, -INF, 5.0, None], -INF, -INF, 5.0),
    ([0.0, -0.0], 0.0, 0.0, 0.0),
    ([-0.0, 0.0, -0.0], 0.0, 0.0, 0.0),
]


def same(got: float | None, want: float | None) -> bool:
    """Equal to the bit, NaN being the quiet NaN (0x7ff8000000000000) and zeros +0.0."""
    if want is not None and math.isnan(want):
        want = NAN
    return bits(got) == bits(want)


def test_nan_and_the_infinities(tmp_path: Path) -> None:
    """SUM and MEAN as IEEE addition gives in any order; MIN and MAX NaN when the window has one."""
    windows = {key: values for key, (values, _, _, _) in enumerate(SPECIAL, start=1)}
    rows = exported(tmp_path, windows)
    for key, (values, total, least, greatest) in enumerate(SPECIAL, start=1):
        row, n = rows[key], sum(v is not None for v in values)
        for column in SUMS:
            assert same(row[column], total), (column, values, row[column])
        for column in MEANS:
            mean = total if not math.isfinite(total) else total / n + 0.0
            assert same(row[column], mean), (column, values, row[column])
        assert same(row["order_edges__amount_min"], least), (values, row["order_edges__amount_min"])
        assert same(row["order_edges__amount_max"], greatest), (values, row["order_edges__amount_max"])


def test_nulls_count_as_events_and_as_no_value(tmp_path: Path) -> None:
    """COUNT counts events whatever their field holds; SUM, MEAN, MIN and MAX read only the values: none at
    all is SUM 0.0 and MEAN, MIN, MAX null, as for a key with no events (user 0 in `exported`)."""
    rows = exported(tmp_path, {1: [None, None], 2: [None, 2.5, None, -1.0], 3: [None, NAN]})
    assert [rows[1][f"order_edges__{f}"] for f in ("orders", "amount_sum", "amount_mean", "amount_min")] == [
        2, 0.0, None, None]  # fmt: skip
    assert rows[1]["user_orders__order_count_1h"] == 2 and rows[1]["user_orders__amount_mean_1d"] is None
    assert all(rows[1][c] == 0.0 for c in SUMS) and all(rows[1][c] is None for c in MEANS)
    assert rows[1]["order_edges__amount_max"] is None
    assert rows[2]["order_edges__orders"] == 4
    assert all(rows[2][c] == 1.5 for c in SUMS) and all(rows[2][c] == 0.75 for c in MEANS)  # 1.5 / 2, not / 4
    assert (rows[2]["order_edges__amount_min"], rows[2]["order_edges__amount_max"]) == (-1.0, 2.5)
    assert rows[3]["order_edges__orders"] == 2 and all(math.isnan(rows[3][c]) for c in SUMS + MEANS)


def test_the_export_does_not_depend_on_the_files_or_the_order_of_the_history(tmp_path: Path) -> None:
    """The same events written three ways (one file in key order, one file reversed, seven files of shuffled
    rows): the same exported bytes, and the sums are fsum's. A left-to-right float sum of the same windows
    in those orders differs, so the order could have shown."""
    rng = random.Random(3)
    exact = mixed_signs(1, 12, 150)
    exact[13] = [1e16, 1.0, -1e16, 1.0] * 20
    windows: dict[int, Values] = {**exact, 14: [0.0, -0.0] * 10 + [None, NAN], 15: [-0.0, 0.0] * 10 + [INF, 2.5]}
    # 14 and 15: MIN and MAX of zeros of both signs, +0.0 whatever the order
    rows = events(windows)
    shuffled = rng.sample(rows, len(rows))
    outs = [
        export(tmp_path, [rows], list(windows), "in-order"),
        export(tmp_path, [rows[::-1]], list(windows), "reversed"),
        export(tmp_path, [shuffled[i::7] for i in range(7)], list(windows), "seven-files"),
    ]
    first = outs[0].read_bytes()
    assert all(out.read_bytes() == first for out in outs[1:])
    got = {r["user_id"]: r for r in pq.read_table(outs[0]).to_pylist()}
    for key, values in exact.items():
        assert bits(got[key]["order_edges__amount_sum"]) == bits(math.fsum(values) + 0.0)
    assert got[15]["order_edges__amount_min"] == 0.0 and got[15]["order_edges__amount_max"] == INF

    def naive(events_in_order: list[dict[str, Any]]) -> dict[int, float]:
        totals: dict[int, float] = {}
        for e in events_in_order:
            if e["amount"] is not None:
                totals[e["user_id"]] = totals.get(e["user_id"], 0.0) + e["amount"]
        return totals

    forward, backward = naive(rows), naive(rows[::-1])
    assert any(bits(forward[k]) != bits(backward[k]) for k in exact)
