"""Aggregation families: declared with the schema (`order` v1 declares `user_orders`), checked by
`fstore schema check`, outside the entity's fingerprint, and the one definition of a window at time t."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fstore.codegen.check import fstore_rules
from fstore.schema.aggregations import DAY, HOUR, MINUTE, counts, parse_window, tile_size
from fstore.schema.registry import Registry

ORDER_PROTO = "schemas/fstore/entities/order/v1/order.proto"


def test_the_order_schema_declares_user_orders() -> None:
    family = Registry.default().family("user_orders")
    assert family.source.ref == "order/v1" and family.group_by.name == "user_id"
    assert family.allowed_lateness == HOUR
    shape = [(f.name, f.function, f.field.name if f.field else None, f.window, f.tile) for f in family.features]
    assert shape == [
        ("order_count_1h", "count", None, HOUR, 5 * MINUTE),
        ("order_count_7d", "count", None, 7 * DAY, HOUR),
        ("amount_sum_7d", "sum", "amount", 7 * DAY, HOUR),
        ("amount_mean_1d", "mean", "amount", DAY, HOUR),
        ("amount_max_30d", "max", "amount", 30 * DAY, DAY),
        ("last_status", "last", "status", None, None),
    ]
    assert [f.window_text for f in family.features] == ["1h", "7d", "7d", "1d", "30d", "lifetime"]


def test_windows_and_their_tiles() -> None:
    assert (parse_window("5m"), parse_window("90m"), parse_window("90d"), parse_window("lifetime")) == (
        5 * MINUTE, 90 * MINUTE, 90 * DAY, None,
    )  # fmt: skip
    assert (tile_size(12 * HOUR), tile_size(13 * HOUR), tile_size(12 * DAY), tile_size(13 * DAY)) == (
        5 * MINUTE, HOUR, HOUR, DAY,
    )  # fmt: skip
    for bad, why in [("7m", "whole number"), ("91d", "90 days"), ("1w", "look like"), ("0h", "look like")]:
        with pytest.raises(ValueError, match=why):
            parse_window(bad)


def edit_order(schema_copy: Any, old: str, new: str) -> None:
    proto = schema_copy.root / ORDER_PROTO
    text = proto.read_text()
    assert old in text
    proto.write_text(text.replace(old, new))


def test_a_family_is_not_part_of_the_fingerprint(schema_copy: Any) -> None:
    """Changing what is computed from the events leaves what the events are (and their producers) alone."""
    before = schema_copy.registry().get("order").fingerprint
    edit_order(schema_copy, 'function: SUM field: "amount" window: "7d"', 'function: SUM field: "amount" window: "14d"')
    schema_copy.codegen()
    after = schema_copy.registry()
    assert after.get("order").fingerprint == before
    assert after.family("user_orders").feature("amount_sum_7d").window == 14 * DAY


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('group_by: "user_id"', 'group_by: "buyer"', "group_by 'buyer' is not a field of order/v1"),
        ('group_by: "user_id"', 'group_by: "amount"', "group_by 'amount' must be int64 or string, not double"),
        ('function: MAX field: "amount"', 'function: MAX field: "status"', "MAX needs a numeric scalar field"),
        ('function: COUNT window: "1h"', 'function: COUNT field: "amount" window: "1h"', "COUNT takes no field"),
        ('window: "30d"', 'window: "7m"', "not a whole number of its 5-minute tiles"),
        ('name: "amount_mean_1d"', 'name: "amount_sum_7d"', "unique in the family"),
    ],
)
def test_the_schema_check_refuses_a_broken_family(schema_copy: Any, old: str, new: str, problem: str) -> None:
    edit_order(schema_copy, old, new)
    problems = fstore_rules(Path(schema_copy.root / "schemas"), {})
    assert any(problem in p for p in problems), problems


T = 5 * MINUTE  # the tile of a 1 h window


def test_the_window_at_t_covers_whole_tiles_ending_with_ts_own() -> None:
    family = Registry.default().family("user_orders")
    hour = family.feature("order_count_1h")
    t = 1_000 * T + 2 * MINUTE  # inside a tile
    oldest = (1_000 - 11) * T  # 12 tiles of 5 minutes, t's included

    def at(event_time: int, ingest_time: int | None = None, backfilled: bool = False) -> bool:
        ingest = event_time if ingest_time is None else ingest_time  # default: ingested at once
        return counts(family, hour, t, event_time, ingest, backfilled)

    assert at(oldest) and not at(oldest - 1)  # the oldest edge is inclusive, at a tile boundary
    assert at(t) and at(1_001 * T - 1, ingest_time=t)  # t's tile counts events known at t, even later ones
    assert not at(1_001 * T, ingest_time=t)  # the next tile does not
    assert not at(t - MINUTE, ingest_time=t + 1)  # not known at t: ingested after it
    assert at(t - MINUTE, ingest_time=t + DAY, backfilled=True)  # a backfilled row is known at its event time
    assert not at(t + 1, ingest_time=t + DAY, backfilled=True)
    lifetime = family.feature("last_status")
    late = t - 2 * HOUR
    assert counts(family, lifetime, t, late, late + HOUR, False)  # as late as allowed
    assert not counts(family, lifetime, t, late, late + HOUR + 1, False)  # later: kept offline, in no aggregate
