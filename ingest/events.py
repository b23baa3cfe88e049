"""What flows through the ingest pipeline: a validated `Event`, or a `DeadLetter` with its reason.

`decode_event` is the whole decode + validate step as a plain function, so the same rules apply to the
streaming job, the backfill and the tests, and each rule is tested without Beam.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message

from fstore.errors import FstoreError
from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
from fstore.schema.registry import EntitySpec, Registry, RegistrySource
from fstore.store.events import MAX_FUTURE_SECONDS, DeadLetter, event_time_micros, utc_from_micros

# Event times outside [MIN_EVENT_TIME, now + max_future] are not "sane": a zero timestamp is an unset
# field in disguise, and a far-future one would pin the online row until that date.
MIN_EVENT_TIME_MICROS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
# ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
VERSION_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
MAX_DETAIL_CHARS = 500  # a rejection's text quotes input: bounded, whatever the input


@dataclass(frozen=True)
class Event:
    """A decoded, valid entity event. Pickles as bytes (Beam may encode elements between stages)."""

    entity: str
    version: int
    message: Message
    message_id: str
    publish_micros: int
    ingest_micros: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.entity, self.version)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (self.entity, self.version, self.message.SerializeToString(), self.message_id, self.publish_micros,
             self.ingest_micros),
        )  # fmt: skip


_job_registries: dict[str, Registry] = {}
_job_registry_lock = threading.Lock()
_current_job_registry: Registry | None = None


def job_registry(source: RegistrySource | None = None) -> Registry:
    """The registry of the job this process runs. Its steps carry the launcher's `RegistrySource` and call this
    in `setup` with it (built once per process); without one, the last one built here, else the registry of
    the settings' descriptor set. Elements that cross a process boundary are rebuilt with it."""
    global _current_job_registry
    if source is None:
        return _current_job_registry or Registry.default()
    with _job_registry_lock:
        if source.digest not in _job_registries:
            _job_registries[source.digest] = Registry.from_source(source)
        _current_job_registry = _job_registries[source.digest]
        return _current_job_registry


def launcher_registry_source(descriptor_set: Path | None = None) -> RegistrySource:
    """The source of the registry at `descriptor_set` (default: the settings'), for a step built on the
    launching machine to carry."""
    source = (Registry.load(descriptor_set) if descriptor_set is not None else Registry.default()).source
    assert source is not None, "a registry read from a descriptor set knows its source"
    return source


def _rebuild(entity: str, version: int, data: bytes, message_id: str, publish: int, ingest: int) -> Event:
    spec = job_registry().get(entity, version)
    return Event(entity, version, spec.message_class.FromString(data), message_id, publish, ingest)


class Rejected(Exception):
    """An event that fails a rule; `reason` is a short code, the message says what exactly."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_event(
    registry: Registry,
    data: bytes | None,
    attributes: dict[str, str],
    message_id: str,
    publish_time: datetime | None,
    *,
    ingest_micros: int | None = None,
    max_future_seconds: int = MAX_FUTURE_SECONDS,
    max_bytes: int | None = None,
    parsed: Message | None = None,
) -> Event | DeadLetter:
    """Route by the attributes, decode with the descriptor set (unless a source already `parsed` the message,
    as the JSONL backfill does), validate key and event time.

    Never raises: whatever the bytes and attributes, the answer is an Event or a DeadLetter with its reason.
    A rule that fails on input nobody foresaw still answers (`invalid_event`, naming the error), so one odd
    event can neither stop the job nor take its neighbours down with it."""
    ingest = ingest_micros if ingest_micros is not None else time.time_ns() // 1_000
    payload = bytes(data) if data else b""
    try:
        if max_bytes is not None and len(payload) > max_bytes:
            limit = f"{len(payload):,} bytes, above the limit of {max_bytes:,} (ingest.max_event_bytes)"
            raise Rejected("too_large", limit)
        spec = _route(registry, attributes)
        if parsed is not None and parsed.DESCRIPTOR.full_name == spec.full_name:
            message = parsed
        else:
            message = _decode(spec, payload)
        _validate(spec, message, ingest, max_future_seconds)
        publish = int(publish_time.timestamp() * 1_000_000) if publish_time is not None else ingest
        return Event(spec.name, spec.version, message, message_id, publish, ingest)
    except Rejected as exc:
        reason, detail = exc.reason, exc.detail
    except Exception as exc:
        reason, detail = "invalid_event", f"checking the event failed: {type(exc).__name__}: {exc}"
    return DeadLetter(
        data=payload,
        attributes={str(k): str(v) for k, v in (attributes or {}).items()},
        reason=reason,
        detail=detail[:MAX_DETAIL_CHARS],
        message_id=message_id,
        publish_time=publish_time,
        ingest_time=utc_from_micros(ingest),
    )


def _route(registry: Registry, attributes: dict[str, str]) -> EntitySpec:
    entity, version = attributes.get(ATTR_ENTITY), attributes.get(ATTR_VERSION)
    if not entity or not version:
        missing = [a for a in (ATTR_ENTITY, ATTR_VERSION) if not attributes.get(a)]
        raise Rejected("missing_attributes", f"missing routing attribute(s): {', '.join(missing)}")
    if not VERSION_NUMBER.fullmatch(version):
        raise Rejected("unknown_version", f"{ATTR_VERSION}={version[:40]!r} is not a version number (1, 2, ...)")
    try:
        spec = registry.get(entity, int(version))
    except FstoreError as exc:
        reason = "unknown_entity" if entity not in registry.entities() else "unknown_version"
        raise Rejected(reason, str(exc)) from None
    fingerprint = attributes.get(ATTR_FINGERPRINT)
    if fingerprint is None:
        raise Rejected("missing_attributes", f"missing routing attribute: {ATTR_FINGERPRINT}")
    if not spec.knows_fingerprint(fingerprint):
        raise Rejected(
            "unknown_fingerprint",
            f"{spec.ref}: schema fingerprint {fingerprint[:64]!r} is not one this version ever had "
            f"(current {spec.fingerprint})",
        )
    return spec


def _decode(spec: EntitySpec, data: bytes) -> Message:
    try:
        return spec.message_class.FromString(data)
    except DecodeError as exc:
        raise Rejected("undecodable", f"{spec.ref}: bytes are not a {spec.full_name} message: {exc}") from None


def _validate(spec: EntitySpec, message: Message, ingest_micros: int, max_future_seconds: int) -> None:
    key = getattr(message, spec.key.name)
    if key in (0, ""):  # proto3 scalars have no presence: the default value is "not set"
        raise Rejected("missing_key", f"{spec.ref}: key field {spec.key.name!r} is not set")
    if not message.HasField(spec.event_time.name):
        raise Rejected("missing_event_time", f"{spec.ref}: event time field {spec.event_time.name!r} is not set")
    event = event_time_micros(spec, message)
    if event < MIN_EVENT_TIME_MICROS or event > ingest_micros + max_future_seconds * 1_000_000:
        moment = _moment(event)
        raise Rejected(
            "event_time_out_of_range",
            f"{spec.ref}: {spec.event_time.name}={moment} is before 2000-01-01 or more than "
            f"{max_future_seconds} s in the future",
        )


def _moment(micros: int) -> str:
    """An event time for a rejection's text; one outside datetime's years (a producer that put milliseconds
    in the seconds field) is shown as its number."""
    try:
        return utc_from_micros(micros).isoformat()
    except (OverflowError, ValueError):
        return f"{micros:,} µs after the epoch (outside years 1-9999)"
