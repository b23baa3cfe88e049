"""Random, fully populated `user` v1 events: the data every benchmark loads."""

from __future__ import annotations

import random
from datetime import datetime

from google.protobuf.message import Message

from fstore.schema.registry import EntitySpec

COUNTRIES = ["JP", "FR", "DE", "US", "BR"]
CATEGORIES = ["books", "games", "garden", "music", "toys", "food"]


def random_user(spec: EntitySpec, rng: random.Random, user_id: int, event_time: datetime) -> Message:
    message = spec.message_class(
        user_id=user_id,
        age=rng.randint(18, 90),
        country=rng.choice(COUNTRIES),
        is_premium=rng.random() < 0.2,
        lifetime_orders=rng.randint(0, 500),
        avg_order_value=round(rng.uniform(5, 300), 2),
        favorite_categories=rng.sample(CATEGORIES, 2),
        embedding=[rng.uniform(-1, 1) for _ in range(16)],
    )
    message.event_time.FromDatetime(event_time)  # type: ignore[attr-defined]
    return message
