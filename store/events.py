"""Decoded events as the stores see them: event times, plain field values, dead letters.

`field_reader` turns a field of a decoded entity message into a plain Python value: the one conversion the
online store's rows, the offline store's Arrow columns and the API share.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message

from fstore.schema.registry import EntitySpec, FieldSpec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Ingest dead-letters an event more than this far ahead of its ingest time (`event_time_out_of_range`): a
# far-future one would pin the online row until that date, and aggregation tiles rely on the bound.
MAX_FUTURE_SECONDS = 3_600


def event_time_micros(spec: EntitySpec, message: Message) -> int:
    """Event time in microseconds since the epoch (0 when unset)."""
    ts = getattr(message, spec.event_time.name)
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1_000


def event_times_micros(spec: EntitySpec, messages: Iterable[Message]) -> list[int]:
    """`event_time_micros` of each message, for the per-batch hot paths: one comprehension instead of a
    call per row, which saves a Python call per message."""
    return [
        ts.seconds * 1_000_000 + ts.nanos // 1_000 for ts in map(operator.attrgetter(spec.event_time.name), messages)
    ]


@functools.cache
def field_reader(field: FieldSpec) -> Callable[[Message], Any]:
    """How to read `field` as a plain Python value (lists for repeated fields, None for an unset optional),
    decided once per field: the hot paths call it per row and per column without re-deciding."""
    name = field.name
    if field.repeated:
        return lambda message: list(getattr(message, name))
    if field.kind == "timestamp":
        return lambda message: getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None
    if field.has_presence:
        return lambda message: getattr(message, name) if message.HasField(name) else None
    return operator.attrgetter(name)


def utc_from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class DeadLetter:
    """A rejected event: its original bytes and attributes, why it was rejected, and where it came from."""

    data: bytes
    attributes: dict[str, str]
    reason: str  # a short machine-readable code, e.g. "missing_key", "unknown_entity"
    detail: str  # a human-readable explanation naming the field or value
    message_id: str
    publish_time: datetime | None
    ingest_time: datetime
