"""The event contract between producers, the ingest job and the stores.

Producers (the generated publishers) set these Pub/Sub attributes; the ingest job routes on them.
`to_row` turns a decoded entity message into plain Python values, the one conversion every store
and the API share.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message

from store.registry import EntitySpec, FieldSpec

ATTR_ENTITY = "fstore_entity"
ATTR_VERSION = "fstore_version"
ATTR_EVENT_TIME = "fstore_event_time"
ATTR_FINGERPRINT = "fstore_fingerprint"
ROUTING_ATTRIBUTES = (ATTR_ENTITY, ATTR_VERSION, ATTR_EVENT_TIME, ATTR_FINGERPRINT)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time_micros(spec: EntitySpec, message: Message) -> int:
    """Event time in microseconds since the epoch (0 when unset)."""
    ts = getattr(message, spec.event_time.name)
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1_000


def field_value(message: Message, field: FieldSpec) -> Any:
    """A field as a plain Python value: lists for repeated fields, None for an unset optional."""
    if field.repeated:
        return list(getattr(message, field.name))
    if field.kind == "timestamp":
        if not message.HasField(field.name):
            return None
        return getattr(message, field.name).ToDatetime(tzinfo=UTC)
    if field.has_presence and not message.HasField(field.name):
        return None
    return getattr(message, field.name)


def to_row(spec: EntitySpec, message: Message, features: tuple[FieldSpec, ...] | None = None) -> dict[str, Any]:
    """Key, event time (aware UTC datetime) and the requested features (all when None)."""
    row: dict[str, Any] = {spec.key.name: getattr(message, spec.key.name)}
    row[spec.event_time.name] = field_value(message, spec.event_time)
    for field in spec.features if features is None else features:
        row[field.name] = field_value(message, field)
    return row


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
