"""Decode + validate rules, one per reason, without Beam."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstore.ingest.events import Event, decode_event
from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
from fstore.schema.registry import EntitySpec, Registry
from fstore.store.events import DeadLetter

NOW = datetime.now(UTC)


def user_bytes(spec: EntitySpec, user_id: int = 1, when: datetime | None = NOW, **features: object) -> bytes:
    message = spec.message_class(user_id=user_id, **features)
    if when is not None:
        message.event_time.FromDatetime(when)
    return message.SerializeToString()


def attrs(spec: EntitySpec, **overrides: str) -> dict[str, str]:
    base = {ATTR_ENTITY: spec.name, ATTR_VERSION: str(spec.version), ATTR_FINGERPRINT: spec.fingerprint}
    return {k: v for k, v in {**base, **overrides}.items() if v != ""}


@pytest.fixture
def user(registry: Registry) -> EntitySpec:
    return registry.get("user")


def test_valid_event_decodes(registry: Registry, user: EntitySpec) -> None:
    ingest = int(NOW.timestamp() * 1_000_000) + 5
    result = decode_event(registry, user_bytes(user, 42, age=30), attrs(user), "m1", NOW, ingest_micros=ingest)
    assert isinstance(result, Event)
    assert (result.entity, result.version, result.message_id, result.ingest_micros) == ("user", 1, "m1", ingest)
    assert result.message.user_id == 42 and result.message.age == 30
    assert result.publish_micros == int(NOW.timestamp() * 1_000_000)
    again = pickle.loads(pickle.dumps(result))  # Beam may encode elements between stages
    assert again.message.SerializeToString() == result.message.SerializeToString() and again.message_id == "m1"


@pytest.mark.parametrize(
    ("case", "reason", "names"),
    [
        ("garbage", "undecodable", "fstore.entities.user.v1.User"),
        ("unknown_entity", "unknown_entity", "'shipment'"),
        ("unknown_version", "unknown_version", "version 9"),
        ("no_attributes", "missing_attributes", "fstore_entity"),
        ("missing_key", "missing_key", "user_id"),
        ("missing_event_time", "missing_event_time", "event_time"),
        ("far_future", "event_time_out_of_range", "event_time="),
        ("epoch", "event_time_out_of_range", "1970"),
        ("wrong_fingerprint", "unknown_fingerprint", "deadbeef"),
    ],
)
def test_invalid_events_become_dead_letters(
    registry: Registry, user: EntitySpec, case: str, reason: str, names: str
) -> None:
    data, attributes = user_bytes(user), attrs(user)
    if case == "garbage":
        data = b"\xff\xfe not a protobuf"
    elif case == "unknown_entity":
        attributes[ATTR_ENTITY] = "shipment"
    elif case == "unknown_version":
        attributes[ATTR_VERSION] = "9"
    elif case == "no_attributes":
        attributes = {}
    elif case == "missing_key":
        data = user_bytes(user, user_id=0)
    elif case == "missing_event_time":
        data = user_bytes(user, when=None)
    elif case == "far_future":
        data = user_bytes(user, when=NOW + timedelta(days=2))
    elif case == "epoch":
        data = user_bytes(user, when=datetime(1970, 1, 2, tzinfo=UTC))
    elif case == "wrong_fingerprint":
        attributes[ATTR_FINGERPRINT] = "deadbeef"
    result = decode_event(registry, data, attributes, "m-bad", NOW)
    assert isinstance(result, DeadLetter)
    assert result.reason == reason
    assert names in result.detail
    assert result.data == data and result.attributes == attributes and result.message_id == "m-bad"


@pytest.mark.parametrize(
    ("case", "reason", "names"),
    [
        ("superscript_version", "unknown_version", "'²'"),
        ("arabic_version", "unknown_version", "'٤'"),
        ("zero_version", "unknown_version", "'0'"),
        ("milliseconds_as_seconds", "event_time_out_of_range", "outside years 1-9999"),
        ("no_data", "missing_key", "user_id"),  # an attribute-only message: no bytes, so no key
        ("too_large", "too_large", "above the limit of 100"),
    ],
)
def test_poison_events_become_dead_letters(
    registry: Registry, user: EntitySpec, case: str, reason: str, names: str
) -> None:
    """Inputs that once crashed the job (a version int() refuses; event_time.seconds holding milliseconds,
    which broke the rejection's own text) or jammed it (a huge message)."""
    data: bytes | None = user_bytes(user)
    attributes = attrs(user)
    max_bytes = None
    if case == "superscript_version":
        attributes[ATTR_VERSION] = "²"
    elif case == "arabic_version":
        attributes[ATTR_VERSION] = "٤"
    elif case == "zero_version":
        attributes[ATTR_VERSION] = "0"
    elif case == "milliseconds_as_seconds":
        message = user.message_class(user_id=1)
        message.event_time.seconds = int(NOW.timestamp() * 1000)
        data = message.SerializeToString()
    elif case == "no_data":
        data = None
    elif case == "too_large":
        data, max_bytes = user_bytes(user, country="x" * 200), 100
    result = decode_event(registry, data, attributes, "m-poison", NOW, max_bytes=max_bytes)
    assert isinstance(result, DeadLetter), result
    assert (result.reason, result.message_id) == (reason, "m-poison")
    assert names in result.detail
    assert result.data == (data or b"")  # the original bytes are kept, for a replay after a fix


ROUTING_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["user", "item", "1", "2", "²", "", "1" * 30]))


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(st.none(), st.binary(max_size=200)),
    attributes=st.dictionaries(
        st.sampled_from([ATTR_ENTITY, ATTR_VERSION, ATTR_FINGERPRINT, "other"]) | st.text(max_size=8),
        ROUTING_VALUES,
        max_size=5,
    ),
)
def test_decoding_never_raises_on_any_bytes_and_attributes(registry: Registry, data: Any, attributes: Any) -> None:
    result = decode_event(registry, data, attributes, "m", None)
    assert isinstance(result, (Event, DeadLetter))
    if isinstance(result, DeadLetter):
        assert result.reason and len(result.detail) <= 500


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.integers(-(2**63), 2**63 - 1),
    nanos=st.integers(-(2**31), 2**31 - 1),
    user_id=st.integers(-(2**63), 2**63 - 1),
    version=ROUTING_VALUES,
)
def test_decoding_never_raises_on_any_event_time_or_key(
    registry: Registry, seconds: int, nanos: int, user_id: int, version: str
) -> None:
    spec = registry.get("user")
    message = spec.message_class(user_id=user_id)
    message.event_time.seconds, message.event_time.nanos = seconds, nanos
    attributes = attrs(spec) | {ATTR_VERSION: version}
    result = decode_event(registry, message.SerializeToString(), attributes, "m", NOW)
    assert isinstance(result, (Event, DeadLetter))
