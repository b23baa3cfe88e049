"""The JSON shape of online rows, shared by `fstore online get --json` and the read API.

`{"entity": "user", "version": 1, "rows": [{...} | null, ...]}`: rows in request order; int64 values as JSON
numbers (clients in JavaScript should read ids above 2**53 as strings); timestamps RFC 3339 in UTC (`...Z`);
bytes as base64.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    """`bytes` features as base64, as protobuf's JSON mapping writes them."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def online_response(entity: str, version: int, rows: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    return {"entity": entity, "version": version, "rows": list(rows)}


def dumps_online_response(entity: str, version: int, rows: Sequence[dict[str, Any] | None]) -> bytes:
    return orjson.dumps(online_response(entity, version, rows), default=_default, option=_OPTIONS)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTIONS)
