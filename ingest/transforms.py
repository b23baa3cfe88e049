"""The ingest job's building blocks, as small named PTransforms:

    ReadPubSubEvents -> DecodeAndValidate -> WriteOffline + WriteOnline
                                          \-> WriteDeadLetters

Store clients are created in `DoFn.setup()` (they do not pickle), and each write DoFn buffers per bundle
and flushes every `FLUSH_EVERY` elements and at the end of the bundle: one store round trip per batch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from ingest.events import Event, decode_event, default_registry
from ingest.retry import until_stored
from store.events import DeadLetter
from store.registry import Registry
from store.settings import Settings

log = logging.getLogger("fstore.ingest")
DEAD_LETTERS = "dead_letters"
FLUSH_EVERY = 1_000
NAMESPACE = "fstore"


def _registry(settings: Settings) -> Registry:
    if settings.descriptor_set:
        return Registry.from_descriptor_set(settings.descriptor_set)
    return default_registry()


class _DecodeFn(beam.DoFn):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.read = Metrics.counter(NAMESPACE, "events_read")
        self.valid = Metrics.counter(NAMESPACE, "events_valid")

    def setup(self) -> None:
        self.registry = _registry(self.settings)

    def process(self, message: Any) -> Iterator[Any]:
        self.read.inc()
        result = decode_event(
            self.registry, message.data, dict(message.attributes or {}), message.message_id or "", message.publish_time
        )
        if isinstance(result, DeadLetter):
            yield pvalue.TaggedOutput(DEAD_LETTERS, result)
        else:
            self.valid.inc()
            yield result


class DecodeAndValidate(beam.PTransform):
    """PubsubMessage -> Event (main output) | DeadLetter (output `dead_letters`)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, messages: beam.PCollection) -> pvalue.DoOutputsTuple:
        return messages | beam.ParDo(_DecodeFn(self.settings)).with_outputs(DEAD_LETTERS, main="events")


class _BufferedWriteFn(beam.DoFn):
    """Buffers events per entity version; `flush` writes one batch per entity version."""

    registry: Registry

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buffer: dict[tuple[str, int], list[Event]] = defaultdict(list)
        self.buffered = 0

    def start_bundle(self) -> None:
        self.buffer = defaultdict(list)
        self.buffered = 0

    def process(self, event: Event) -> Iterator[Any]:
        self.buffer[event.key].append(event)
        self.buffered += 1
        if self.buffered >= FLUSH_EVERY:
            self._flush()
        return iter(())

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        for (entity, version), events in self.buffer.items():
            self.write(self.registry.get(entity, version), events)
        self.buffer = defaultdict(list)
        self.buffered = 0

    def write(self, spec: Any, events: list[Event]) -> None:
        raise NotImplementedError


class _WriteOnlineFn(_BufferedWriteFn):
    def setup(self) -> None:
        from store.online import open_online_store

        self.registry = _registry(self.settings)
        self.store = open_online_store(self.settings, self.registry)
        self.written = Metrics.counter(NAMESPACE, "online_written")
        self.stale = Metrics.counter(NAMESPACE, "online_stale")
        self.expired = Metrics.counter(NAMESPACE, "online_expired")
        self.lag = Metrics.distribution(NAMESPACE, "freshness_lag_ms")

    def write(self, spec: Any, events: list[Event]) -> None:
        messages = [e.message for e in events]
        publish = [e.publish_micros for e in events]
        result = until_stored(lambda: self.store.write(spec, messages, publish), f"online write of {spec.ref}")
        self.written.inc(result.written)
        self.stale.inc(result.stale)
        self.expired.inc(result.expired)
        now_micros = time.time_ns() // 1_000
        field = spec.event_time.name
        for message in messages:
            ts = getattr(message, field)
            self.lag.update((now_micros - (ts.seconds * 1_000_000 + ts.nanos // 1_000)) // 1_000)

    def teardown(self) -> None:
        self.store.close()


class _WriteOfflineFn(_BufferedWriteFn):
    def setup(self) -> None:
        from store.offline import open_offline_store

        self.registry = _registry(self.settings)
        self.store = open_offline_store(self.settings, self.registry)
        self.written = Metrics.counter(NAMESPACE, "offline_written")

    def write(self, spec: Any, events: list[Event]) -> None:
        from store.offline.schema import messages_to_table

        table = messages_to_table(
            spec, [e.message for e in events], [e.ingest_micros for e in events], [e.message_id for e in events]
        )
        stored = until_stored(lambda: self.store.write(spec, table), f"offline write of {spec.ref}")
        self.written.inc(stored)

    def teardown(self) -> None:
        self.store.close()


class WriteOnline(beam.PTransform):
    """Compare-and-set each event into the online store (latest by event time), batched per bundle."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return events | beam.ParDo(_WriteOnlineFn(self.settings))


class WriteOffline(beam.PTransform):
    """Append each event to the offline store's history (deduplicated by message id), batched per bundle."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return events | beam.ParDo(_WriteOfflineFn(self.settings))


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, settings: Settings, publish: bool) -> None:
        self.settings = settings
        self.publish = publish
        self.letters: list[DeadLetter] = []

    def setup(self) -> None:
        from store.offline import open_offline_store

        self.store = open_offline_store(self.settings, _registry(self.settings))
        self.publisher = None
        if self.publish:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]

            self.publisher = pubsub_v1.PublisherClient()
            self.topic = self.publisher.topic_path(self.settings.project, self.settings.pubsub.deadletter_topic)

    def start_bundle(self) -> None:
        self.letters = []

    def process(self, letter: DeadLetter) -> Iterator[Any]:
        Metrics.counter(NAMESPACE, f"dead_letters_{letter.reason}").inc()
        log.info("dead letter %s (%s): %s", letter.message_id, letter.reason, letter.detail)
        self.letters.append(letter)
        if len(self.letters) >= FLUSH_EVERY:
            self._flush()
        return iter(())

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self.letters:
            return
        letters, self.letters = self.letters, []
        until_stored(lambda: self.store.write_dead_letters(letters), "dead-letter table write")
        if self.publisher is not None:
            futures = [
                self.publisher.publish(self.topic, letter.data, **_dead_letter_attributes(letter)) for letter in letters
            ]
            until_stored(lambda: [f.result(timeout=30) for f in futures], "dead-letter topic publish")

    def teardown(self) -> None:
        self.store.close()


def _dead_letter_attributes(letter: DeadLetter) -> dict[str, str]:
    return {
        **letter.attributes,
        "fstore_reason": letter.reason,
        "fstore_detail": letter.detail[:1000],
        "fstore_message_id": letter.message_id,
    }


class WriteDeadLetters(beam.PTransform):
    """Every rejected event, with its original bytes, attributes and reason: to the offline store's dead-letter
    table and (streaming) to the dead-letter Pub/Sub topic."""

    def __init__(self, settings: Settings, *, publish: bool) -> None:
        super().__init__()
        self.settings = settings
        self.publish = publish

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | beam.ParDo(_WriteDeadLettersFn(self.settings, self.publish))
