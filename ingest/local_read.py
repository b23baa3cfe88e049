"""Ack after write on Beam's local runner.

Beam's local runner (the classic direct runner) reads Pub/Sub by pulling 10 messages and acking them at once,
before anything downstream runs: a killed job loses what it had pulled, and pulls of 10 cap its throughput.
On the local runner fstore swaps that read for one that pulls up to `PULL_MAX_MESSAGES` without acking and
hands each message on with its ack id (`AckablePubsubMessage`). The ingest step acks a bundle's messages once
their writes are done (the offline batch written, the online compare-and-set executed, the dead letters
stored), and their ack deadlines are extended while that takes (`InFlight`), so a stalled store does not make
Pub/Sub deliver them again meanwhile. A message pulled and never acked (the job was killed) is delivered again
once its deadline passes: delivery is at least once, the effect exactly once (offline rows are unique by
message id, online writes are compare-and-set).

On Dataflow, Beam's own read is used: Dataflow acks a message once its first fused stage is durably done.
The swap uses the local runner's evaluator-override hook (`TransformEvaluatorRegistry`), which apache-beam
2.77 (the pinned range) has; a test builds and runs the streaming job through it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.runners.direct import direct_runner, transform_evaluator
from apache_beam.utils.timestamp import Timestamp

from fstore.store.events import utc_from_micros

log = logging.getLogger("fstore.ingest")

PULL_MAX_MESSAGES = 1_000
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


class InFlight:
    """This process's pulled, unacked messages. A thread extends their ack deadlines every third of the
    deadline until they are acked; acking removes them."""

    def __init__(self) -> None:
        self.deadline_seconds = 60
        self._lock = threading.Lock()
        self._ack_ids: dict[str, set[str]] = defaultdict(set)
        self._client: Any = None
        self._extender: threading.Thread | None = None
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
        """Ack the messages that came from the ack-after-write read (others have no ack id); returns how many.
        A failed ack is logged, not raised: the message is then delivered again and stored once."""
        by_subscription: dict[str, list[str]] = defaultdict(list)
        for message in messages:
            ack_id = getattr(message, "ack_id", None)
            if ack_id:
                by_subscription[message.subscription].append(ack_id)
        acked = 0
        for subscription, ack_ids in by_subscription.items():
            with self._lock:
                self._ack_ids[subscription].difference_update(ack_ids)
            for start in range(0, len(ack_ids), ACK_BATCH):
                chunk = ack_ids[start : start + ACK_BATCH]
                try:
                    self.client.acknowledge(subscription=subscription, ack_ids=chunk, timeout=30)
                    acked += len(chunk)
                except Exception as exc:  # redelivered later, and deduplicated then
                    log.warning("acking %d messages on %s failed (%s); they will be delivered again", len(chunk),
                                subscription, exc)  # fmt: skip
        return acked

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


class _AckAfterWriteReadEvaluator(transform_evaluator._PubSubReadEvaluator):
    """The local runner's Pub/Sub read, pulling up to PULL_MAX_MESSAGES and leaving the acks to the ingest step.
    fstore reads with no timestamp attribute: element timestamps are publish times, as in Beam's read."""

    def _read_from_pubsub(self, timestamp_attribute: str | None) -> list[tuple[Timestamp, PubsubMessage]]:
        try:
            response = IN_FLIGHT.client.pull(
                subscription=self._sub_name, max_messages=PULL_MAX_MESSAGES, timeout=PULL_TIMEOUT_SECONDS
            )
        except Exception as exc:  # Pub/Sub unreachable, or a pull refused: nothing was taken, pull again
            log.warning("pull from %s failed (%s); pulling again", self._sub_name, exc)
            time.sleep(1.0)
            return []
        # The raw protobuf, not proto-plus wrappers: field access through the wrappers was most of the read's
        # cost (a py-spy profile of the job draining a backlog).
        received = type(response).pb(response).received_messages
        IN_FLIGHT.pulled(self._sub_name, [r.ack_id for r in received])
        out: list[tuple[Timestamp, PubsubMessage]] = []
        for r in received:
            m = r.message
            micros = m.publish_time.seconds * 1_000_000 + m.publish_time.nanos // 1_000
            message = AckablePubsubMessage(
                m.data, dict(m.attributes), m.message_id, utc_from_micros(micros), r.ack_id, self._sub_name
            )
            out.append((Timestamp(micros=micros), message))
        return out


def use_ack_after_write_read(ack_deadline_seconds: int) -> None:
    """Make this process's local runner read Pub/Sub with `_AckAfterWriteReadEvaluator`."""
    IN_FLIGHT.deadline_seconds = ack_deadline_seconds
    overrides = transform_evaluator.TransformEvaluatorRegistry._test_evaluators_overrides
    overrides[direct_runner._DirectReadFromPubSub] = _AckAfterWriteReadEvaluator
