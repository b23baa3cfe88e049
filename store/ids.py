"""Entity ids checked against the key's type before any store is touched."""

from __future__ import annotations

from collections.abc import Iterable

from fstore.errors import InvalidIdError
from fstore.schema.registry import EntitySpec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_ids(spec: EntitySpec, ids: Iterable[object], *, from_text: bool = False) -> list[int | str]:
    """The ids as the key's Python type. With `from_text` (HTTP query strings, CLI arguments), decimal
    strings are accepted for int64 keys; otherwise an int64 key takes ints only (never bools)."""
    key = spec.key
    checked: list[int | str] = []
    for position, value in enumerate(ids):
        if key.kind == "int64":
            if isinstance(value, str) and from_text:
                try:
                    value = int(value, 10)
                except ValueError:
                    raise InvalidIdError(_bad(spec, position, value)) from None
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
        f"got {type(value).__name__} {value!r} at position {position}"
    )
