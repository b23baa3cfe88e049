"""Decode + validate rules, one per reason, without Beam."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest

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
        ("unknown_entity", "unknown_entity", "'order'"),
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
        attributes[ATTR_ENTITY] = "order"
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
