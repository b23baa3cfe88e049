"""The ingest job's building blocks, as small named PTransforms:

    ReadPubSubEvents -> IngestEvents (decode, validate; valid events to the offline history and the online
                                      compare-and-set, rejected ones to the dead-letter table and topic)

IngestEvents is one step on purpose. Beam's local runner pays a fixed cost per step and per bundle of ≤ 10
messages, larger than decoding and both writes together, and schedules every downstream step for every
bundle even when its input is empty: a separate dead-letter step would be paid for on every bundle, though
almost none carry a dead letter.
On Dataflow the steps would be fused anyway. `WriteDeadLetters` remains for the rejects of other steps (the
backfill's file readers). The rules are `ingest.events.decode_event`, the writes `StoreWriter` and
`DeadLetterWriter`.

DoFns carry the settings as JSON and take their store clients from `ingest.resources` in `setup()` (clients
do not pickle, and are shared per process). Each write DoFn buffers per bundle and flushes every
`FLUSH_EVERY` elements and at the end of the bundle: one store round trip per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection

from fstore.ingest.events import Event, decode_event
from fstore.ingest.local_read import IN_FLIGHT, PulledMessages
from fstore.ingest.pubsub import deadletter_topic_path
from fstore.ingest.resources import IngestDoFn, Resources
from fstore.ingest.retry import until_stored
from fstore.settings import Settings
from fstore.store.events import DeadLetter, event_times_micros
from fstore.store.offline.schema import messages_to_table

log = logging.getLogger("fstore.ingest")
DEAD_LETTERS = "dead_letters"
FLUSH_EVERY = 1_000  # streaming bundles are ≤ 10 messages locally; this bounds Dataflow's larger ones
BACKFILL_FLUSH_EVERY = 20_000  # batch: fewer, larger offline segments (a flush writes one per event date)
NAMESPACE = "fstore"


class Progress:
    """A log line every `every` seconds of what this process wrote and dead-lettered: Beam's counters reach
    the user at the end of a batch job or in Dataflow's UI, but a local streaming job would say nothing."""

    def __init__(self, every: float = 30.0, clock: Any = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.lock = threading.Lock()
        self.last = clock()
        self.written = self.dead = self.written_total = self.dead_total = 0

    def add(self, written: int = 0, dead: int = 0) -> None:
        with self.lock:
            self.written, self.dead = self.written + written, self.dead + dead
            now = self.clock()
            if now - self.last < self.every:
                return
            took, self.last = now - self.last, now
            self.written_total, self.dead_total = self.written_total + self.written, self.dead_total + self.dead
            log.info(
                "wrote %s events in the last %.0f s (%s/s), %s dead letters; %s events and %s dead letters in all",
                f"{self.written:,}",
                took,
                f"{self.written / took:,.0f}",
                f"{self.dead:,}",
                f"{self.written_total:,}",
                f"{self.dead_total:,}",
            )
            self.written = self.dead = 0


PROGRESS = Progress()


class StoreWriter:
    """Buffers valid events per entity version; each flush appends a batch offline, then compare-and-sets it
    online. Offline first: whatever a model can read online is already in the training history. A plain
    object, not a DoFn: Beam's local runner inspects every DoFn method's signature on every bundle."""

    def __init__(self, res: Resources, flush_every: int = FLUSH_EVERY) -> None:
        self.res = res
        self.flush_every = flush_every
        self.buffer: dict[tuple[str, int], list[Event]] = defaultdict(list)
        self.buffered = 0
        self.offline_written = Metrics.counter(NAMESPACE, "offline_written")
        self.online_written = Metrics.counter(NAMESPACE, "online_written")
        self.online_stale = Metrics.counter(NAMESPACE, "online_stale")
        self.online_expired = Metrics.counter(NAMESPACE, "online_expired")
        self.online_failed = Metrics.counter(NAMESPACE, "online_failed")
        self.tiles_applied = Metrics.counter(NAMESPACE, "aggregation_events_applied")
        self.tiles_too_late = Metrics.counter(NAMESPACE, "aggregation_too_late")
        self.lag = Metrics.distribution(NAMESPACE, "freshness_lag_ms")

    def add(self, event: Event) -> None:
        self.buffer[event.key].append(event)
        self.buffered += 1
        if self.buffered >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for (entity, version), events in self.buffer.items():
            spec = self.res.registry.get(entity, version)
            messages = [e.message for e in events]
            ingest, ids = [e.ingest_micros for e in events], [e.message_id for e in events]
            table = messages_to_table(spec, messages, ingest, ids)
            self.store_offline(spec, table)
            self.store_online(spec, messages, [e.publish_micros for e in events])
            for family in self.res.registry.families_of(spec):
                self.store_tiles(family, table)
            self._record_lag(spec, messages)
        PROGRESS.add(written=self.buffered)
        self.buffer = defaultdict(list)
        self.buffered = 0

    def store_offline(self, spec: Any, table: Any) -> None:
        stored = until_stored(lambda: self.res.offline.write(spec, table), f"offline write of {spec.ref}")
        self.offline_written.inc(stored)

    def store_online(self, spec: Any, messages: list[Any], publish_micros: list[int]) -> None:
        result = until_stored(
            lambda: self.res.online.write(spec, messages, publish_micros), f"online write of {spec.ref}"
        )
        self.online_written.inc(result.written)
        self.online_stale.inc(result.stale)
        self.online_expired.inc(result.expired)
        if result.failed:  # stored offline already; the job goes on, loudly
            self.online_failed.inc(result.failed)
            log.warning("online write of %s: Redis refused %d row(s) for good (%s); they are in the offline "
                        "history, and `fstore materialize` rewrites them once the key is fixed", spec.ref,
                        result.failed, result.failure)  # fmt: skip

    def store_tiles(self, family: Any, table: Any) -> None:
        """Aggregation families after the entity's own rows, from the batch as stored offline (offline first,
        as everywhere; its columns are cheaper to read than the messages)."""
        applied, late = until_stored(lambda: self.res.tiles.apply_table(family, table), f"tiles of {family.name}")
        self.tiles_applied.inc(applied)
        self.tiles_too_late.inc(late)

    def _record_lag(self, spec: Any, messages: list[Any]) -> None:
        now_micros = time.time_ns() // 1_000
        for event_micros in event_times_micros(spec, messages):
            self.lag.update((now_micros - event_micros) // 1_000)


class DeadLetterWriter:
    """Buffers dead letters; each flush appends them to the offline dead-letter table and, when publishing (the
    streaming job), to the dead-letter topic. Every one is counted per reason and logged. With `store` off (a
    replay of dead letters, which are in the table already) they are counted and logged, and stored nowhere."""

    def __init__(self, res: Resources, *, publish: bool, store: bool = True, flush_every: int = FLUSH_EVERY) -> None:
        self.res = res
        self.publish = publish
        self.store = store
        self.flush_every = flush_every
        self.letters: list[DeadLetter] = []

    def add(self, letter: DeadLetter) -> None:
        Metrics.counter(NAMESPACE, f"dead_letters_{letter.reason}").inc()
        log.info("dead letter %s (%s): %s", letter.message_id, letter.reason, letter.detail)
        self.letters.append(letter)
        if len(self.letters) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.letters:
            return
        letters, self.letters = self.letters, []
        if not self.store:
            return
        until_stored(lambda: self.res.offline.write_dead_letters(letters), "dead-letter table write")
        PROGRESS.add(dead=len(letters))
        if self.publish:
            publisher, topic = self.res.publisher, deadletter_topic_path(self.res.settings)
            futures = [publisher.publish(topic, letter.data, **_dead_letter_attributes(letter)) for letter in letters]
            until_stored(lambda: [f.result(timeout=30) for f in futures], "dead-letter topic publish")


# Reasons an event may have only because this job's schemas are older than its producer's.
SCHEMA_CHANGE_REASONS = frozenset({"unknown_fingerprint", "unknown_version", "unknown_entity"})


class _IngestEventsFn(IngestDoFn):
    def __init__(
        self, settings: Settings, flush_every: int, publish_dead_letters: bool, store_dead_letters: bool = True
    ) -> None:
        super().__init__(settings)
        self.flush_every = flush_every
        self.publish_dead_letters = publish_dead_letters
        self.store_dead_letters = store_dead_letters

    def setup(self) -> None:
        super().setup()
        self.read = Metrics.counter(NAMESPACE, "events_read")
        self.valid = Metrics.counter(NAMESPACE, "events_valid")

    def start_bundle(self) -> None:
        self.writer = StoreWriter(self.res, self.flush_every)
        self.dead_letters = DeadLetterWriter(
            self.res, publish=self.publish_dead_letters, store=self.store_dead_letters, flush_every=self.flush_every
        )
        self.to_ack: list[Any] = []

    def process(self, element: Any) -> Iterator[Any]:
        for message in element if isinstance(element, PulledMessages) else (element,):
            self.read.inc()
            self.to_ack.append(message)
            result = self._decode(message)
            if isinstance(result, DeadLetter) and result.reason in SCHEMA_CHANGE_REASONS:
                if self.res.reload_registry():  # the schemas changed while the job ran: it may be valid now
                    result = self._decode(message)
                if isinstance(result, DeadLetter) and result.reason in SCHEMA_CHANGE_REASONS:
                    result = self.res.explain_schema_refusal(result)
            if isinstance(result, DeadLetter):
                self.dead_letters.add(result)
                yield result
            else:
                self.valid.inc()
                self.writer.add(result)

    def _decode(self, message: Any) -> Event | DeadLetter:
        return decode_event(
            self.res.registry,
            message.data,
            dict(message.attributes or {}),
            message.message_id or "",
            message.publish_time,
            max_bytes=self.res.settings.ingest.max_event_bytes,
            parsed=getattr(message, "parsed", None),
        )

    def finish_bundle(self) -> None:
        self.writer.flush()
        self.dead_letters.flush()
        # Every message of the bundle is stored (as an event, or as a dead letter): only now is it acked.
        IN_FLIGHT.ack(self.to_ack)


class IngestEvents(beam.PTransform[PCollection[Any], PCollection[Any]]):
    """Pub/Sub messages (or records shaped like them) -> decoded and validated; valid events written to both
    stores, rejected ones to the dead-letter table (and topic, with `publish_dead_letters`). The output is the
    dead letters, already written: for counting and tests, not for writing again. `store_dead_letters=False` is
    for replaying dead letters: one still rejected is counted (`dead_letters_<reason>`) but not stored again."""

    def __init__(
        self,
        settings: Settings,
        *,
        flush_every: int = FLUSH_EVERY,
        publish_dead_letters: bool = False,
        store_dead_letters: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.flush_every = flush_every
        self.publish_dead_letters = publish_dead_letters
        self.store_dead_letters = store_dead_letters

    def expand(self, messages: PCollection[Any]) -> PCollection[Any]:
        fn = _IngestEventsFn(self.settings, self.flush_every, self.publish_dead_letters, self.store_dead_letters)
        return messages | beam.ParDo(fn)


class _WriteDeadLettersFn(IngestDoFn):
    def __init__(self, settings: Settings, publish: bool) -> None:
        super().__init__(settings)
        self.publish = publish

    def start_bundle(self) -> None:
        self.writer = DeadLetterWriter(self.res, publish=self.publish)

    def process(self, letter: DeadLetter) -> Iterator[Any]:
        self.writer.add(letter)
        return iter(())

    def finish_bundle(self) -> None:
        self.writer.flush()


def _dead_letter_attributes(letter: DeadLetter) -> dict[str, str]:
    return {
        **letter.attributes,
        "fstore_reason": letter.reason,
        "fstore_detail": letter.detail[:1000],
        "fstore_message_id": letter.message_id,
    }


class WriteDeadLetters(beam.PTransform[PCollection[Any], PCollection[Any]]):
    """Rejects of steps other than IngestEvents, with their original bytes, attributes and reason: to the offline
    store's dead-letter table and, with `publish`, to the dead-letter Pub/Sub topic."""

    def __init__(self, settings: Settings, *, publish: bool) -> None:
        super().__init__()
        self.settings = settings
        self.publish = publish

    def expand(self, letters: PCollection[Any]) -> PCollection[Any]:
        return letters | beam.ParDo(_WriteDeadLettersFn(self.settings, self.publish))
