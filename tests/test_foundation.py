"""The foundation: registry from the descriptor set, settings, the generated Python client."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format

from fstore.errors import SettingsError, UnknownEntityError, UnknownFeatureError, UnknownVersionError
from fstore.schema.registry import Registry
from fstore.settings import get_settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_registry_reads_entities_from_options(registry: Registry) -> None:
    user = registry.get("user")
    assert (user.name, user.version, user.key.name, user.key.kind) == ("user", 1, "user_id", "int64")
    assert user.event_time.name == "event_time" and user.event_time.kind == "timestamp"
    assert user.ttl_seconds == 30 * 24 * 3600
    assert user.feature_names == [
        "age", "country", "is_premium", "lifetime_orders", "avg_order_value", "favorite_categories", "embedding",
    ]  # fmt: skip
    assert user.feature("embedding").type_name == "repeated float"
    assert user.feature("age").pii and user.feature("age").description == "Age in whole years."
    item = registry.get("item", 1)
    assert (item.key.kind, item.ttl_seconds) == ("string", 0)


def test_registry_names_what_is_unknown(registry: Registry) -> None:
    with pytest.raises(UnknownEntityError, match="'shop'"):
        registry.get("shop")
    with pytest.raises(UnknownVersionError, match="version 9 of entity 'user'"):
        registry.get("user", 9)
    with pytest.raises(UnknownFeatureError, match="'height'"):
        registry.get("user").feature("height")


def test_settings_file_and_env_overrides(tmp_path, monkeypatch) -> None:
    (tmp_path / "fstore.yaml").write_text("project: from-file-1\napi:\n  max_ids: 10\n")
    settings = load_settings()
    assert settings.project == "from-file-1" and settings.api.max_ids == 10
    monkeypatch.setenv("FSTORE_PROJECT", "from-env-1")
    monkeypatch.setenv("FSTORE_API__MAX_IDS", "20")
    monkeypatch.setenv("FSTORE_REDIS_URL", "rediss://user:pw@example.com:6380/0")
    settings = load_settings()
    assert (settings.project, settings.api.max_ids) == ("from-env-1", 20)
    assert settings.redis_url == "rediss://user:pw@example.com:6380/0"
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("FSTORE_PROJECT", "Demo!", "project"), ("FSTORE_OFFLINE", "sqlite:///x", "offline"),
     ("FSTORE_REDIS_URL", "http://x", "redis_url"), ("FSTORE_API__MAX_IDS", "0", "api.max_ids")],
)  # fmt: skip
def test_invalid_settings_name_the_key(monkeypatch, key: str, value: str, named: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings()


def test_generated_user_round_trips_bytes_and_json() -> None:
    from demo_features.entities.user.v1 import User

    user = User(user_id=42, age=31, country="JP", favorite_categories=["books"], embedding=[0.5] * 16)
    user.event_time.FromSeconds(1_700_000_000)
    assert User.FromString(user.SerializeToString()) == user
    text = json_format.MessageToJson(user)
    assert json.loads(text)["userId"] == "42"
    assert json_format.Parse(text, User()) == user
    assert not User(user_id=1).HasField("age")  # optional features keep presence: unset is null, not 0


def test_publisher_sets_routing_attributes(pubsub_env: str) -> None:
    from google.cloud import pubsub_v1

    from demo_features.entities.user.v1 import FINGERPRINT, User, UserV1Publisher

    project, topic, sub = "fstore-local", f"t-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    publisher_client = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher_client.topic_path(project, topic)
    publisher_client.create_topic(name=topic_path)
    sub_path = subscriber.subscription_path(project, sub)
    subscriber.create_subscription(name=sub_path, topic=topic_path)

    user = User(user_id=7, country="FR")
    user.event_time.FromSeconds(1_700_000_000)
    message_id = UserV1Publisher(topic, project=project).publish(user).result(timeout=30)

    deadline = time.monotonic() + 30
    received = []
    while not received and time.monotonic() < deadline:
        received = list(subscriber.pull(subscription=sub_path, max_messages=10, timeout=10).received_messages)
    assert len(received) == 1
    msg = received[0].message
    assert msg.message_id == message_id
    assert dict(msg.attributes) == {
        "fstore_entity": "user",
        "fstore_version": "1",
        "fstore_event_time": "2023-11-14T22:13:20Z",
        "fstore_fingerprint": FINGERPRINT,
    }
    assert User.FromString(msg.data) == user
    with pytest.raises(ValueError, match="event_time is not set"):
        UserV1Publisher(topic, project=project).publish(User(user_id=8))


def test_earlier_fingerprints_stay_known(registry: Registry) -> None:
    from tests.conftest import ROOT

    data = (ROOT / "clients/registry/descriptor_set.binpb").read_bytes()
    with_history = Registry.from_descriptor_set(data, {"user/v1": ["00000000deadbeef"]})
    user = with_history.get("user")
    assert user.knows_fingerprint(user.fingerprint) and user.knows_fingerprint("00000000deadbeef")
    assert not registry.get("user").knows_fingerprint("00000000deadbeef")
    assert not with_history.get("item").knows_fingerprint("00000000deadbeef")


def test_example_settings_file_is_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """fstore.example.yaml documents every setting with its default: it must load, and change nothing."""
    for name in [n for n in os.environ if n.startswith("FSTORE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FSTORE_CONFIG", str(ROOT / "fstore.example.yaml"))
    example = load_settings()
    (tmp_path / "empty.yaml").write_text("{}\n")
    monkeypatch.setenv("FSTORE_CONFIG", str(tmp_path / "empty.yaml"))
    assert example.model_dump() == load_settings().model_dump()
