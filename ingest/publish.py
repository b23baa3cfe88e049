"""`fstore publish`: entity events from a JSONL file, published with the routing attributes of their version.

`EventPublisher` does from the registry what the generated publishers do from generated classes (same
attributes, same batching), so `fstore publish` needs no generated code on the path: the feature repo's
descriptor set is enough.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from fstore.errors import FstoreError
from fstore.ingest.jsonmap import JsonEventParser
from fstore.schema.attributes import ATTR_EVENT_TIME, routing_attributes
from fstore.schema.registry import EntitySpec


class EventFileError(FstoreError):
    """A line of an events file is not a valid event; the message names the line."""


class EventPublisher:
    """Publishes messages of one entity version to a topic (`projects/<p>/topics/<t>`)."""

    def __init__(self, spec: EntitySpec, topic: str, client: Any = None) -> None:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        self.spec = spec
        self.topic = topic
        self._routing = routing_attributes(spec)
        self._client = client or pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.005)
        )

    def attributes(self, message: Message) -> dict[str, str]:
        event_time = self.spec.event_time.name
        if not message.HasField(event_time):
            raise ValueError(f"{self.spec.ref}: {event_time} is not set")
        return self._routing | {ATTR_EVENT_TIME: getattr(message, event_time).ToJsonString()}

    def publish(self, message: Message, *, overrides: dict[str, str] | None = None) -> Future[str]:
        """Publish one event; the future resolves to its Pub/Sub message id. `overrides` replace attributes
        (a test's or the demo's way to publish an event the ingest job must reject)."""
        attributes = self.attributes(message) | (overrides or {})
        future: Future[str] = self._client.publish(self.topic, message.SerializeToString(), **attributes)
        return future

    def publish_all(self, messages: Iterable[Message]) -> list[str]:
        """Publish many events (batched by the client) and wait for every message id."""
        futures = [self.publish(m) for m in messages]
        return [f.result() for f in futures]


def read_events(path: Path, spec: EntitySpec, message_class: type[Any]) -> list[Any]:
    """Every event of the file, or an error naming the first bad line: nothing is published from a file that
    is not entirely valid, so a fix-and-rerun never publishes half of it twice."""
    if not path.is_file():
        raise EventFileError(f"{path}: no such file")
    parser = JsonEventParser(spec, message_class)
    event_time_field = spec.event_time.name
    messages = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                message = parser.parse(line)
            except json_format.ParseError as exc:
                raise EventFileError(f"{path}:{number}: {exc}") from None
            if not message.HasField(event_time_field):
                raise EventFileError(f"{path}:{number}: {event_time_field} is not set")
            messages.append(message)
    return messages


def publish_file(path: Path, spec: EntitySpec, topic: str) -> list[str]:
    messages = read_events(path, spec, spec.message_class)
    return EventPublisher(spec, topic).publish_all(messages)
