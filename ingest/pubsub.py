"""Pub/Sub plumbing for the ingest job and `fstore publish`: topic and subscription names, and making sure they
exist. Against the emulator (PUBSUB_EMULATOR_HOST set) missing ones are created; against real Pub/Sub they
never are: infrastructure belongs to its owners, so we say exactly what is missing instead."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fstore.errors import FstoreError
from fstore.schema.registry import Registry
from fstore.settings import Settings


class PubSubSetupError(FstoreError):
    """Topics or subscriptions the job needs do not exist (on real Pub/Sub we never create them)."""


@dataclass(frozen=True)
class Route:
    topic: str  # full path, projects/<p>/topics/<t>
    subscription: str  # full path, projects/<p>/subscriptions/<s>


def routes(settings: Settings, registry: Registry) -> list[Route]:
    """One route for a shared topic, or one per entity when the topic name contains `{entity}`."""
    project = settings.project
    entities = registry.entities() if settings.pubsub.per_entity else [""]
    return [
        Route(
            f"projects/{project}/topics/{settings.pubsub.topic_for(e)}",
            f"projects/{project}/subscriptions/{settings.pubsub.subscription_for(e)}",
        )
        for e in entities
    ]


def topic_path(settings: Settings, entity: str) -> str:
    return f"projects/{settings.project}/topics/{settings.pubsub.topic_for(entity)}"


def deadletter_topic_path(settings: Settings) -> str:
    return f"projects/{settings.project}/topics/{settings.pubsub.deadletter_topic}"


def ensure_topics(settings: Settings, topics: list[str]) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher = pubsub_v1.PublisherClient()
    missing = [
        topic
        for topic in topics
        if not _exists_or_created(
            settings,
            partial(publisher.get_topic, topic=topic, timeout=10),
            partial(publisher.create_topic, name=topic, timeout=10),
        )
    ]
    if missing:
        raise PubSubSetupError(
            "missing Pub/Sub topic(s): " + ", ".join(missing) + " (create them, e.g. `gcloud pubsub topics create`)"
        )


def ensure_subscriptions(settings: Settings, routes_: list[Route]) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    ensure_topics(settings, [r.topic for r in routes_] + [deadletter_topic_path(settings)])
    subscriber = pubsub_v1.SubscriberClient()
    missing = [
        f"{route.subscription} (on {route.topic})"
        for route in routes_
        if not _exists_or_created(
            settings,
            partial(subscriber.get_subscription, subscription=route.subscription, timeout=10),
            partial(
                subscriber.create_subscription,
                name=route.subscription,
                topic=route.topic,
                ack_deadline_seconds=settings.pubsub.ack_deadline_seconds,
                timeout=10,
            ),
        )
    ]
    subscriber.close()
    if missing:
        raise PubSubSetupError(
            "missing Pub/Sub subscription(s): " + ", ".join(missing) + " (create them, e.g. "
            "`gcloud pubsub subscriptions create NAME --topic TOPIC`)"
        )


def _exists_or_created(settings: Settings, get: Callable[[], object], create: Callable[[], object]) -> bool:
    """True when the resource exists, or was just created on the emulator; False when missing on real Pub/Sub."""
    from google.api_core.exceptions import AlreadyExists, NotFound

    try:
        get()
    except NotFound:
        if not settings.pubsub_emulator_host:
            return False
        with contextlib.suppress(AlreadyExists):  # another process created it meanwhile
            create()
    return True
