"""Aggregation families: sliding-window aggregates of an entity's events, declared with the entity's schema
(the `(fstore.aggregations)` message option) and defined once, here (docs/aggregations.md).

`counts(...)` is the definition of which event counts for a window at time t; the offline SQL and the online
tiles implement it, and tests compare both against it. Times are integer microseconds since the epoch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fstore.errors import UnknownFeatureError

if TYPE_CHECKING:  # the registry builds families: a runtime import would be circular
    from fstore.schema.registry import EntitySpec, FieldSpec

MINUTE = 60 * 1_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
MAX_WINDOW = 90 * DAY
DEFAULT_LATENESS_SECONDS = 3600
FUNCTIONS = ("count", "sum", "mean", "min", "max", "last")
NUMERIC = ("int32", "int64", "uint32", "uint64", "float", "double")
_WINDOW = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>[mhd])$")
_UNITS = {"m": MINUTE, "h": HOUR, "d": DAY}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_window(text: str) -> int | None:
    """`"7d"` -> microseconds; `"lifetime"` -> None. Raises ValueError naming the rule."""
    if text == "lifetime":
        return None
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"window {text!r} must look like 5m, 1h, 7d or be lifetime")
    micros = int(match["n"]) * _UNITS[match["unit"]]
    if micros > MAX_WINDOW:
        raise ValueError(f"window {text!r} is longer than 90 days")
    tile = _tile_of(micros)
    if micros % tile:
        raise ValueError(f"window {text!r} is not a whole number of its {tile // MINUTE}-minute tiles")
    return micros


def tile_size(window: int | None) -> int | None:
    """The tile a window is computed from: 5 minutes up to 12 h, 1 hour up to 12 days, else 1 day; None for
    lifetime (one running state)."""
    return None if window is None else _tile_of(window)


def _tile_of(window: int) -> int:
    if window <= 12 * HOUR:
        return 5 * MINUTE
    if window <= 12 * DAY:
        return HOUR
    return DAY


def tile(micros: int, size: int) -> int:
    """The start of the tile holding `micros` (floor division: correct before 1970 too)."""
    return micros // size * size


@dataclass(frozen=True)
class AggregationSpec:
    name: str
    function: str  # one of FUNCTIONS
    field: FieldSpec | None  # None for count
    window: int | None  # microseconds; None: lifetime
    tile: int | None  # microseconds; None: lifetime
    description: str = ""

    @property
    def result_kind(self) -> str:
        """The kind of the value: COUNT int64, MEAN double, SUM int64 or double by its field, else the field's."""
        if self.function == "count":
            return "int64"
        assert self.field is not None
        if self.function == "mean" or (self.function == "sum" and self.field.kind in ("float", "double")):
            return "double"
        return "int64" if self.function == "sum" else self.field.kind

    @property
    def window_text(self) -> str:
        if self.window is None:
            return "lifetime"
        for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
            if self.window % size == 0:
                return f"{self.window // size}{unit}"
        raise AssertionError(self.window)


@dataclass(frozen=True)
class FamilySpec:
    """One aggregation family: read like an entity (`name:feature`), keyed by the source's `group_by` field."""

    name: str
    source: EntitySpec
    group_by: FieldSpec
    allowed_lateness: int  # microseconds
    features: tuple[AggregationSpec, ...]
    description: str = ""

    @property
    def key_spec(self) -> EntitySpec:
        """The source entity's spec under the family's name and keyed by its group-by field: what id and
        spine checks take for the family."""
        return dataclasses.replace(self.source, name=self.name, key=self.group_by)

    def select(self, names: Sequence[str] | None) -> tuple[AggregationSpec, ...]:
        """The named features, in that order; None: all of them. An unknown name raises."""
        return self.features if not names else tuple(self.feature(n) for n in names)

    def feature(self, name: str) -> AggregationSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise UnknownFeatureError(self.name, self.source.version, name, [f.name for f in self.features])


def counts(
    family: FamilySpec, feature: AggregationSpec, t: int, event_time: int, ingest_time: int, backfilled: bool
) -> bool:
    """Whether one event counts for `feature` at time `t` (docs/aggregations.md, "The window at time t"):
    accepted (no later than the allowed lateness, or backfilled), known at t, and in the window's tiles."""
    if not backfilled and ingest_time - event_time > family.allowed_lateness:
        return False
    if (event_time if backfilled else ingest_time) > t:
        return False
    if feature.window is None or feature.tile is None:
        return True
    now_tile = tile(t, feature.tile)
    return now_tile - feature.window < tile(event_time, feature.tile) <= now_tile


def family_violations(source: EntitySpec, family: Any) -> list[str]:
    """The schema check's rules for one `(fstore.aggregations)` option of a valid entity, each problem naming
    the family or the feature."""
    where = f"{source.proto_file}: {source.full_name} (fstore.aggregations)"
    fields = {f.name: f for f in source.fields}
    problems = []
    if not _NAME.match(family.name):
        problems.append(f"{where}: name {family.name!r} must be lower_snake_case")
    group_by = fields.get(family.group_by)
    if group_by is None:
        problems.append(f"{where}: group_by {family.group_by!r} is not a field of {source.ref}")
    elif group_by.kind not in ("int64", "string") or group_by.repeated:
        problems.append(f"{where}: group_by {family.group_by!r} must be int64 or string, not {group_by.type_name}")
    if family.HasField("allowed_lateness_seconds") and family.allowed_lateness_seconds < 0:
        problems.append(f"{where}: allowed_lateness_seconds must be >= 0")
    if not family.features:
        problems.append(f"{where}: declares no features")
    seen = set()
    for feature in family.features:
        at = f"{where}: feature {feature.name!r}"
        if not _NAME.match(feature.name) or feature.name in seen:
            problems.append(f"{at}: names must be lower_snake_case and unique in the family")
        seen.add(feature.name)
        function = _function_name(feature.function)
        field = fields.get(feature.field)
        if function is None:
            problems.append(f"{at}: function must be one of {', '.join(f.upper() for f in FUNCTIONS)}")
        elif function == "count":
            if feature.field:
                problems.append(f"{at}: COUNT takes no field")
        elif field is None:
            problems.append(f"{at}: field {feature.field!r} is not a field of {source.ref}")
        elif field.repeated or (function != "last" and field.kind not in NUMERIC):
            wants = "a scalar field" if function == "last" else "a numeric scalar field"
            problems.append(f"{at}: {function.upper()} needs {wants}; {feature.field!r} is {field.type_name}")
        try:
            parse_window(feature.window)
        except ValueError as exc:
            problems.append(f"{at}: {exc}")
    return problems


def family_spec(family: Any, source: EntitySpec) -> FamilySpec:
    """The spec of a family that passed `family_violations`, read from the option message."""
    by_name = {f.name: f for f in source.fields}
    features = []
    for feature in family.features:
        window = parse_window(feature.window)
        function = _function_name(feature.function)
        assert function is not None
        features.append(
            AggregationSpec(
                name=feature.name,
                function=function,
                field=None if function == "count" else by_name[feature.field],
                window=window,
                tile=tile_size(window),
                description=feature.description,
            )
        )
    declared = family.HasField("allowed_lateness_seconds")
    lateness = family.allowed_lateness_seconds if declared else DEFAULT_LATENESS_SECONDS
    return FamilySpec(
        name=family.name,
        source=source,
        group_by=by_name[family.group_by],
        allowed_lateness=lateness * 1_000_000,
        features=tuple(features),
        description=family.description,
    )


def _function_name(number: int) -> str | None:
    return FUNCTIONS[number - 1] if 1 <= number <= len(FUNCTIONS) else None
