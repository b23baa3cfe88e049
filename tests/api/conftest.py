"""Fixtures for the read API: the real app (its lifespan run by TestClient) over a real Redis, seeded through
the store's own write path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf.message import Message

from fstore.api.app import create_app
from fstore.api.auth import hash_token
from fstore.settings import Settings, load_settings
from fstore.store import FeatureStore

NOW = datetime.now(UTC).replace(microsecond=0)
FRESH = NOW - timedelta(hours=1)
# Bearer headers by what they may read; settings hold only the tokens' sha256 hashes (AUTH_SETTINGS).
TOKENS = {"user": "user-reader-token", "item": "item-reader-token", "admin": "admin-token"}


def user(fs: FeatureStore, user_id: int, event_time: datetime = FRESH, **values: Any) -> Message:
    message = fs.registry.get("user").message_class(user_id=user_id, **values)
    message.event_time.FromDatetime(event_time)  # type: ignore[attr-defined]
    return message


def item(fs: FeatureStore, item_id: str, event_time: datetime = FRESH, **values: Any) -> Message:
    message = fs.registry.get("item").message_class(item_id=item_id, **values)
    message.event_time.FromDatetime(event_time)  # type: ignore[attr-defined]
    return message


@pytest.fixture
def seeded(redis_url: str) -> None:
    """Users 1-3 and items sku-1/sku-2 in a clean Redis; user 4 only ever had an event past its TTL."""
    with FeatureStore(load_settings()) as fs:
        fs.write_online(
            "user",
            [
                user(fs, 1, age=31, country="FR", is_premium=True, lifetime_orders=12, avg_order_value=42.5,
                     favorite_categories=["books", "music"], embedding=[0.5] * 16),
                user(fs, 2, age=45, country="JP", lifetime_orders=3),
                user(fs, 3, country="BR"),
                user(fs, 4, event_time=NOW - timedelta(days=31), age=99),
            ],
        )  # fmt: skip
        fs.write_online("item", [item(fs, "sku-1", price=9.99, tags=["new"]), item(fs, "sku-2", stock=7)])


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(redis_url: str) -> Iterator[MakeClient]:
    """`make_client(api={...})`: a TestClient over a fresh app with those settings overrides; closed after."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings: Settings = load_settings(**overrides)
        client = TestClient(create_app(settings))
        client.__enter__()  # runs the lifespan: the app's FeatureStore is opened here
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient, seeded: None) -> TestClient:
    return make_client()


AUTH_SETTINGS = {
    "auth": True,
    "keys": [
        {"name": "user-reader", "sha256": hash_token(TOKENS["user"]), "entities": ["user"]},
        {"name": "item-reader", "sha256": hash_token(TOKENS["item"]), "entities": ["item"]},
        {"name": "admin", "sha256": hash_token(TOKENS["admin"]), "entities": ["*"]},
    ],
}


@pytest.fixture
def auth_settings() -> dict[str, Any]:
    """`api` settings with auth on and three keys (see TOKENS)."""
    return AUTH_SETTINGS


@pytest.fixture
def auth_client(make_client: MakeClient, seeded: None) -> TestClient:
    return make_client(api=AUTH_SETTINGS)


@pytest.fixture
def as_key() -> Callable[[str], dict[str, str]]:
    """`as_key("user")`: the Authorization header of the key that may read `user` only ("admin": all)."""
    return lambda who: {"Authorization": f"Bearer {TOKENS[who]}"}
