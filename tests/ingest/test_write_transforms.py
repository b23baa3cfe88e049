"""IngestEvents on its own, in a batch TestPipeline, against a real Redis and the DuckDB offline store; and the
retry policy."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from fstore.errors import StoreUnavailableError
from fstore.ingest.retry import until_stored
from fstore.ingest.transforms import IngestEvents, Progress
from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
from fstore.settings import load_settings
from fstore.store import FeatureStore


def test_ingest_events_stores_valid_events_and_writes_dead_letters(redis_url: str) -> None:
    fs = FeatureStore.from_config()
    spec = fs.spec("user")
    attrs = {ATTR_ENTITY: "user", ATTR_VERSION: "1", ATTR_FINGERPRINT: spec.fingerprint}
    now = datetime.now(UTC).replace(microsecond=0)
    messages = []
    for n, (user_id, minutes, age) in enumerate([(1, 0, 40), (1, 5, 35), (2, 1, 22), (1, 1, 39), (0, 1, 9)]):
        event = spec.message_class(user_id=user_id, age=age)
        event.event_time.FromDatetime(now - timedelta(minutes=minutes))
        messages.append(PubsubMessage(event.SerializeToString(), attrs, message_id=f"m{n}", publish_time=now))
    messages.append(PubsubMessage(b"junk", attrs, message_id="bad", publish_time=now))
    with BeamTestPipeline(runner="FnApiRunner") as p:
        rejected = p | beam.Create(messages) | IngestEvents(load_settings())
        assert_that(
            rejected | beam.Map(lambda d: (d.message_id, d.reason)),
            equal_to([("m4", "missing_key"), ("bad", "undecodable")]),
        )
    rows = fs.get_online("user", [1, 2], features=["age"])
    assert [r["age"] if r else None for r in rows] == [40, 22]  # the newest by event time, whatever the order
    assert sorted(fs.offline.history(spec).column("message_id").to_pylist()) == ["m0", "m1", "m2", "m3"]
    letters = fs.offline.dead_letters()
    reasons = dict(zip(letters.column("message_id").to_pylist(), letters.column("reason").to_pylist(), strict=True))
    assert reasons == {"bad": "undecodable", "m4": "missing_key"}
    fs.close()


def test_until_stored_retries_until_the_store_answers() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise StoreUnavailableError("Redis at redis://x is unavailable")
        return "ok"

    assert until_stored(flaky, "test write", sleep=sleeps.append) == "ok"
    assert len(calls) == 4 and sleeps == [0.1, 0.2, 0.4]


def test_until_stored_does_not_swallow_bugs() -> None:
    def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        until_stored(broken, "test write", sleep=lambda _: None)


def test_progress_logs_what_was_written_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = Progress(every=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="fstore.ingest"):
        progress.add(written=10)
        progress.add(dead=1)
        now[0] = 29.0
        progress.add(written=5)
        assert not caplog.records  # not yet: one line per interval
        now[0] = 30.0
        progress.add(written=15)
        now[0] = 90.0
        progress.add(written=60)
    assert [r.getMessage() for r in caplog.records] == [
        "wrote 30 events in the last 30 s (1/s), 1 dead letters; 30 events and 1 dead letters in all",
        "wrote 60 events in the last 60 s (1/s), 0 dead letters; 90 events and 1 dead letters in all",
    ]


def test_a_schema_refusal_says_which_side_is_behind(tmp_path: Path) -> None:
    """Where the job can read its descriptor set, it is current, so the producer is ahead; where it cannot
    (a Dataflow worker), the job may be the stale one."""
    from fstore.ingest.resources import Resources
    from fstore.schema.registry import Registry
    from fstore.settings import load_settings
    from fstore.store.events import DeadLetter

    letter = DeadLetter(b"", {}, "unknown_fingerprint", "user/v1: schema fingerprint 'ab' is not one…", "m1", None,
                        datetime.now(UTC))  # fmt: skip
    here = Resources(load_settings(), Registry.default())
    assert "this job has just re-read" in here.explain_schema_refusal(letter).detail
    worker = Resources(load_settings(descriptor_set=str(tmp_path / "absent.binpb")), Registry.default())
    told = worker.explain_schema_refusal(letter).detail
    assert told.startswith("user/v1: schema fingerprint") and "it may be the stale side" in told
