"""Entity ids checked against the key's type before any store is touched."""

from __future__ import annotations

import re
from collections.abc import Iterable

from fstore.errors import InvalidIdError
from fstore.schema.registry import EntitySpec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# ASCII digits with an optional sign: Python's int() also takes "9_0_0" and non-ASCII digits ("٤٢"), which
# would silently read as another id.
DECIMAL = re.compile(r"[+-]?[0-9]{1,19}")


def check_ids(spec: EntitySpec, ids: Iterable[object], *, from_text: bool = False) -> list[int | str]:
    """The ids as the key's Python type. With `from_text` (HTTP query strings, CLI arguments), decimal
    strings are accepted for int64 keys; otherwise an int64 key takes ints only (never bools)."""
    key = spec.key
    checked: list[int | str] = []
    for position, value in enumerate(ids):
        if key.kind == "int64":
            if isinstance(value, str) and from_text:
                if not DECIMAL.fullmatch(value):
                    raise InvalidIdError(_bad(spec, position, value))
                value = int(value, 10)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidIdError(_bad(spec, position, value))
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidIdError(f"{spec.name} id {value} at position {position} is outside int64")
        elif not isinstance(value, str):
            raise InvalidIdError(_bad(spec, position, value))
        elif not value:
            raise InvalidIdError(f"{spec.name} id at position {position} is empty; {spec.key.name} ids are non-empty")
        checked.append(value)
    return checked


def _bad(spec: EntitySpec, position: int, value: object) -> str:
    return (
        f"{spec.name} ids are {spec.key.kind} ({spec.key.name}); "
        f"got {type(value).__name__} {_shown(value)} at position {position}"
    )


def _shown(value: object, limit: int = 60) -> str:
    """An input value in a message, cut so the message stays short whatever was sent."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
