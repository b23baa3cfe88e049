"""Protobuf's JSON mapping of an entity message, parsed fast.

`json_format.Parse` walks descriptors in Python for every field of every line, too slow for a large
backfill. Entity messages are flat (scalars, repeated scalars, Timestamps), so a converter built once per
entity version does the same job without walking descriptors per line. Anything it does not handle exactly
(NaN strings, base64 bytes, nanosecond timestamps, wrong types) falls back to `json_format.Parse`, which
stays the judge of what is valid and produces the error message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from fstore.schema.registry import EntitySpec

_INT_KINDS = {"int32", "int64", "uint32", "uint64"}
FLOAT32_MAX = 3.4028234663852886e38


class _Fallback(Exception):
    """This line needs the reference parser."""


def _scalar(kind: str) -> Callable[[Any], Any]:
    if kind in _INT_KINDS:

        def to_int(value: Any) -> int:
            if isinstance(value, bool):
                raise _Fallback
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.lstrip("-").isdigit():
                return int(value)
            raise _Fallback

        return to_int
    if kind in ("float", "double"):
        limit = FLOAT32_MAX if kind == "float" else float("inf")

        def to_float(value: Any) -> float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= limit:
                return float(value)
            raise _Fallback  # out of a float32's range: the reference parser rejects it

        return to_float
    if kind == "bool":

        def to_bool(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            raise _Fallback

        return to_bool
    if kind == "string":

        def to_str(value: Any) -> str:
            if isinstance(value, str):
                return value
            raise _Fallback

        return to_str
    raise _Fallback  # bytes (base64) and anything else: the reference parser


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str) or len(value) < 20 or value[10] != "T":
        raise _Fallback
    dot = value.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(value) and value[end].isdigit():
            end += 1
        if end - dot - 1 > 6:  # nanoseconds: datetime would round them away
            raise _Fallback
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Fallback from None
    if moment.tzinfo is None:
        raise _Fallback
    return moment


def _plain_numbers(values: list[Any], limit: float) -> bool:
    """Only ints and floats (no bools), all within ±limit."""
    if not values:
        return True
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return False
    return bool(max(values) <= limit and min(values) >= -limit)


_NUMBER_TYPES = {int, float}


class JsonEventParser:
    """Parses one JSON line into a message of `spec`, exactly as `json_format.Parse` would."""

    def __init__(self, spec: EntitySpec, message_class: type[Message] | None = None) -> None:
        self.cls = message_class or spec.message_class
        self.converters: dict[str, tuple[str, bool, Callable[[Any], Any] | None]] = {}
        for field in spec.fields:
            descriptor = self.cls.DESCRIPTOR.fields_by_name[field.name]
            try:
                convert = None if field.kind == "timestamp" else _scalar(field.kind)
            except _Fallback:
                convert = None
                if field.kind != "timestamp":
                    continue  # unsupported kind: lines that use it go to the reference parser
            entry = (field.name, field.repeated, convert)
            self.converters[descriptor.json_name] = entry
            self.converters[field.name] = entry
        self.timestamps = {f.name for f in spec.fields if f.kind == "timestamp" and not f.repeated}
        self.numbers = {
            f.name: FLOAT32_MAX if f.kind == "float" else float("inf")
            for f in spec.fields
            if f.repeated and f.kind in ("float", "double")
        }

    def parse(self, line: str | bytes) -> Message:
        try:
            return self._fast(line)
        except (_Fallback, orjson.JSONDecodeError, TypeError, ValueError):
            message = self.cls()
            json_format.Parse(line, message)  # raises json_format.ParseError with the precise reason
            return message

    def _fast(self, line: str | bytes) -> Message:
        data = orjson.loads(line)
        if not isinstance(data, dict):
            raise _Fallback
        kwargs: dict[str, Any] = {}
        stamps: dict[str, datetime] = {}
        for key, value in data.items():
            entry = self.converters.get(key)
            if entry is None:
                raise _Fallback  # unknown field: the reference parser names it
            name, repeated, convert = entry
            if name in kwargs or name in stamps:
                raise _Fallback  # the same field twice (json and proto names)
            if value is None:
                continue
            if name in self.timestamps:
                stamps[name] = _timestamp(value)
            elif convert is None:
                raise _Fallback
            elif repeated:
                if not isinstance(value, list):
                    raise _Fallback
                if name in self.numbers and _plain_numbers(value, self.numbers[name]):
                    kwargs[name] = value  # embeddings: checked in C, not one Python call per value
                else:
                    kwargs[name] = [convert(v) for v in value]
            else:
                kwargs[name] = convert(value)
        message = self.cls(**kwargs)
        for name, moment in stamps.items():
            getattr(message, name).FromDatetime(moment)
        return message
