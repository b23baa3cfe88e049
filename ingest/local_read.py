"""Ack after write on Beam's local runner.

Beam's local runner (the classic direct runner) reads Pub/Sub by pulling 10 messages and acking them at once,
before anything downstream runs: a killed job loses what it had pulled, and pulls of 10 cap its throughput.
On the local runner fstore swaps that read for one that never acks. A `Puller` per subscription pulls ahead in
two threads; each bundle takes what they fetched (up to `PULL_MAX_MESSAGES`) as one element, `PulledMessages`,
whose messages carry their ack ids (`AckablePubsubMessage`). The ingest step acks a bundle's messages once
their writes are done (the offline batch written and fsynced, the online compare-and-set executed, the dead
letters stored), and their ack deadlines are extended meanwhile (`InFlight`), so a stalled store does not make
Pub/Sub deliver them again. A message pulled and never acked (the job was killed) is delivered again once its
deadline passes: delivery is at least once, the effect exactly once (offline rows are unique by message id,
online writes are compare-and-set).

On Dataflow, Beam's own read is used, one message per element: Dataflow acks a message once its first fused
stage is durably done. The swap uses the local runner's evaluator-override hook (`TransformEvaluatorRegistry`),
which apache-beam 2.77 (the pinned range) has; a test builds and runs the streaming job through it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.runners.direct import direct_runner, transform_evaluator
from apache_beam.utils.timestamp import Timestamp
from google.api_core.exceptions import DeadlineExceeded

from fstore.store.events import utc_from_micros

log = logging.getLogger("fstore.ingest")

PULL_MAX_MESSAGES = 1_000
PULL_MAX_BYTES = 64 << 20
BACKLOG_PULL = 100  # the most the emulator answers one pull with
PREFETCH_MESSAGES = 2_000
PULL_THREADS = 2  # pulls in flight at once, so the emulator's round trips overlap
BACKLOG_WAIT_SECONDS = 0.02
PULL_TIMEOUT_SECONDS = 30.0
ACK_BATCH = 1_000


class AckablePubsubMessage(PubsubMessage):
    """A pulled message not acked yet: `ack_id` on `subscription` acks it."""

    def __init__(
        self, data: bytes, attributes: dict[str, str], message_id: str, publish_time: datetime, ack_id: str,
        subscription: str,
    ) -> None:  # fmt: skip
        super().__init__(data, attributes, message_id, publish_time)  # type: ignore[no-untyped-call]
        self.ack_id = ack_id
        self.subscription = subscription


class PulledMessages(list[AckablePubsubMessage]):
    """The messages of one local pull, as one element: the ingest step takes either this or one message."""


class InFlight:
    """This process's pulled, unacked messages. A thread extends their ack deadlines every third of the
    deadline until they are acked; acking removes them, and another thread sends the acks."""

    def __init__(self) -> None:
        self.deadline_seconds = 60
        self._lock = threading.Lock()
        self._ack_ids: dict[str, set[str]] = defaultdict(set)
        self._client: Any = None
        self._extender: threading.Thread | None = None
        self._acker: threading.Thread | None = None
        self._to_ack: queue.Queue[tuple[str, list[str]]] = queue.Queue()
        self._stop = threading.Event()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = subscriber_client()
        return self._client

    def pulled(self, subscription: str, ack_ids: Iterable[str]) -> None:
        with self._lock:
            self._ack_ids[subscription].update(ack_ids)
            if self._extender is None:
                self._extender = threading.Thread(target=self._extend, name="fstore-ack-deadlines", daemon=True)
                self._extender.start()

    def ack(self, messages: Iterable[Any]) -> int:
        """Queue acks for the messages that came from the ack-after-write read (others have no ack id); returns
        how many. Their writes are done, so they need no more deadline extensions. The acks are sent by a
        thread, so the next bundle does not wait for the round trip; an ack that fails or never leaves (the
        job was killed) is logged, and the message is then delivered again and stored once."""
        by_subscription: dict[str, list[str]] = defaultdict(list)
        for message in messages:
            ack_id = getattr(message, "ack_id", None)
            if ack_id:
                by_subscription[message.subscription].append(ack_id)
        queued = 0
        for subscription, ack_ids in by_subscription.items():
            with self._lock:
                self._ack_ids[subscription].difference_update(ack_ids)
                if self._acker is None:
                    self._acker = threading.Thread(target=self._send_acks, name="fstore-acks", daemon=True)
                    self._acker.start()
            self._to_ack.put((subscription, ack_ids))
            queued += len(ack_ids)
        return queued

    def wait_acked(self) -> None:
        """Block until every queued ack was sent (or failed)."""
        self._to_ack.join()

    def _send_acks(self) -> None:
        while True:
            subscription, ack_ids = self._to_ack.get()
            try:
                for start in range(0, len(ack_ids), ACK_BATCH):
                    chunk = ack_ids[start : start + ACK_BATCH]
                    try:
                        self.client.acknowledge(subscription=subscription, ack_ids=chunk, timeout=30)
                    except Exception as exc:  # redelivered later, and deduplicated then
                        log.warning("acking %d messages on %s failed (%s); they will be delivered again",
                                    len(chunk), subscription, exc)  # fmt: skip
            finally:
                self._to_ack.task_done()

    def _extend(self) -> None:
        while not self._stop.wait(max(1.0, self.deadline_seconds / 3)):
            with self._lock:
                pending = {s: list(ids) for s, ids in self._ack_ids.items() if ids}
            for subscription, ack_ids in pending.items():
                for start in range(0, len(ack_ids), ACK_BATCH):
                    try:
                        self.client.modify_ack_deadline(
                            subscription=subscription,
                            ack_ids=ack_ids[start : start + ACK_BATCH],
                            ack_deadline_seconds=self.deadline_seconds,
                            timeout=30,
                        )
                    except Exception as exc:  # the messages may be delivered again: stored once all the same
                        log.warning("extending ack deadlines on %s failed: %s", subscription, exc)


IN_FLIGHT = InFlight()


def subscriber_client() -> Any:
    """A subscriber that takes responses of any size. Against the emulator the client library opens a plain
    channel with gRPC's 4 MB receive limit, so one large message made every pull fail; real Pub/Sub's
    channel has no limit already."""
    import os

    import grpc
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub_v1.SubscriberClient()
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    channel = grpc.insecure_channel(host, options=options)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


class Puller:
    """Pulls one subscription ahead of the pipeline, in a thread: while a bundle is written, the next one is
    being fetched. At most PREFETCH_MESSAGES wait unprocessed; they are in flight like any pulled message
    (deadlines extended, redelivered if the job dies), so pulling ahead risks nothing."""

    def __init__(self, subscription: str) -> None:
        self.subscription = subscription
        self._ready: queue.Queue[list[Any]] = queue.Queue(maxsize=PREFETCH_MESSAGES // BACKLOG_PULL)
        for n in range(PULL_THREADS):
            threading.Thread(target=self._run, name=f"fstore-pull-{n}-{subscription}", daemon=True).start()

    def take(self) -> list[Any]:
        """One bundle's received messages: waits up to PULL_TIMEOUT_SECONDS for the first pull, then takes what
        is already pulled, up to PULL_MAX_MESSAGES or PULL_MAX_BYTES."""
        try:
            received = self._ready.get(timeout=PULL_TIMEOUT_SECONDS)
        except queue.Empty:
            return []
        size = sum(r.message.ByteSize() for r in received)
        batch = received
        while len(received) < PULL_MAX_MESSAGES and size < PULL_MAX_BYTES:
            try:  # a full pull means a backlog: worth a moment's wait for more, since Beam's cost is per bundle
                batch = (
                    self._ready.get(timeout=BACKLOG_WAIT_SECONDS)
                    if len(batch) >= BACKLOG_PULL
                    else self._ready.get_nowait()
                )
            except queue.Empty:
                break
            received.extend(batch)
            size += sum(r.message.ByteSize() for r in batch)
        return received

    def _run(self) -> None:
        while True:
            received = self._pull()
            if received:
                self._ready.put(received)

    def _pull(self) -> list[Any]:
        try:
            response = IN_FLIGHT.client.pull(
                subscription=self.subscription, max_messages=BACKLOG_PULL, timeout=PULL_TIMEOUT_SECONDS
            )
        except DeadlineExceeded:  # nothing came in time: pull again
            return []
        except Exception as exc:  # Pub/Sub unreachable, or a pull refused: pull again, after a pause
            log.warning("pull from %s failed (%s); pulling again", self.subscription, exc)
            time.sleep(1.0)
            return []
        # The raw protobuf, not proto-plus wrappers: field access through the wrappers was most of the read's
        # cost (a py-spy profile of the job draining a backlog).
        received = list(type(response).pb(response).received_messages)
        IN_FLIGHT.pulled(self.subscription, [r.ack_id for r in received])
        return received


_PULLERS: dict[str, Puller] = {}
_PULLERS_LOCK = threading.Lock()


def puller(subscription: str) -> Puller:
    with _PULLERS_LOCK:
        if subscription not in _PULLERS:
            _PULLERS[subscription] = Puller(subscription)
        return _PULLERS[subscription]


class _AckAfterWriteReadEvaluator(transform_evaluator._PubSubReadEvaluator):
    """The local runner's Pub/Sub read: one bundle of what the subscription's `Puller` has fetched, acks left
    to the ingest step. fstore reads with no timestamp attribute: element timestamps are publish times, as in
    Beam's read."""

    _subscriptions: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def __init__(self, evaluation_context: Any, applied_ptransform: Any, input_bundle: Any, side_inputs: Any) -> None:
        # Beam's __init__ parses the pipeline options again for every bundle (a tenth of the job's time):
        # the subscription it finds is kept per transform.
        known = self._subscriptions.get(applied_ptransform)
        if known is None:
            super().__init__(evaluation_context, applied_ptransform, input_bundle, side_inputs)  # type: ignore[no-untyped-call]
            self._subscriptions[applied_ptransform] = self._sub_name
            return
        transform_evaluator._TransformEvaluator.__init__(
            self, evaluation_context, applied_ptransform, input_bundle, side_inputs
        )
        self.source = applied_ptransform.transform._source
        self._sub_name = known

    def _read_from_pubsub(self, timestamp_attribute: str | None) -> list[tuple[Timestamp, Any]]:
        messages = PulledMessages()
        for r in puller(self._sub_name).take():
            m = r.message
            micros = m.publish_time.seconds * 1_000_000 + m.publish_time.nanos // 1_000
            attributes = {k: m.attributes[k] for k in m.attributes}
            messages.append(
                AckablePubsubMessage(
                    m.data, attributes, m.message_id, utc_from_micros(micros), r.ack_id, self._sub_name
                )
            )
        if not messages:
            return []
        # One element for the whole pull: Beam's cost per element (windowing, output, the DoFn call) was a
        # third of the job's when every message was one. Its timestamp is the earliest publish time.
        return [(Timestamp.from_utc_datetime(min(m.publish_time for m in messages)), messages)]


def use_ack_after_write_read(ack_deadline_seconds: int) -> None:
    """Make this process's local runner read Pub/Sub with `_AckAfterWriteReadEvaluator`."""
    IN_FLIGHT.deadline_seconds = ack_deadline_seconds
    overrides = transform_evaluator.TransformEvaluatorRegistry._test_evaluators_overrides
    overrides[direct_runner._DirectReadFromPubSub] = _AckAfterWriteReadEvaluator
