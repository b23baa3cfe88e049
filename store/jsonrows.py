"""The JSON shape of online rows, shared by `fstore online get --json` and the read API.

`{"entity": "user", "version": 1, "rows": [{...} | null, ...]}`: rows in request order; int64 values as JSON
numbers (clients in JavaScript should read ids above 2**53 as strings); timestamps RFC 3339 in UTC (`...Z`);
bytes as base64; non-finite floats as the strings "NaN", "Infinity" and "-Infinity", as protobuf's JSON
mapping writes them, so that a broken value is never read as a missing one (null).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from fstore.schema.registry import FieldSpec

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    """`bytes` features as base64, as protobuf's JSON mapping writes them."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def online_response(entity: str, version: int, rows: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    return {"entity": entity, "version": version, "rows": list(rows)}


def dumps_online_response(
    entity: str, version: int, rows: Sequence[dict[str, Any] | None], float_fields: Sequence[str] = ()
) -> bytes:
    """`float_fields`: the rows' float and double fields, where a non-finite value may hide."""
    if float_fields:
        rows = [_finite(row, float_fields) for row in rows]
    return orjson.dumps(online_response(entity, version, rows), default=_default, option=_OPTIONS)


def float_field_names(fields: Iterable[FieldSpec]) -> list[str]:
    return [f.name for f in fields if f.kind in ("float", "double")]


def _finite(row: dict[str, Any] | None, names: Sequence[str]) -> dict[str, Any] | None:
    if row is None:
        return None
    changed = None
    for name in names:
        value = row.get(name)
        if isinstance(value, float):
            if not math.isfinite(value):
                changed = changed or dict(row)
                changed[name] = _NON_FINITE[_key(value)]
        elif isinstance(value, list) and not all(map(math.isfinite, value)):
            changed = changed or dict(row)
            changed[name] = [v if math.isfinite(v) else _NON_FINITE[_key(v)] for v in value]
    return changed or row


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _key(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTIONS)
