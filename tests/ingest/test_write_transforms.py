"""The write transforms on their own, in a batch TestPipeline, against a real Redis; and the retry policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from ingest.events import Event
from ingest.retry import until_stored
from ingest.transforms import WriteToStores
from store import FeatureStore
from store.errors import StoreUnavailableError
from store.settings import load_settings


def test_write_to_stores_keeps_every_event_offline_and_the_newest_online(redis_url: str) -> None:
    fs = FeatureStore.from_config()
    spec = fs.spec("user")
    now = datetime.now(UTC).replace(microsecond=0)
    events = []
    for n, (user_id, minutes, age) in enumerate([(1, 0, 40), (1, 5, 35), (2, 1, 22), (1, 1, 39)]):
        message = spec.message_class(user_id=user_id, age=age)
        message.event_time.FromDatetime(now - timedelta(minutes=minutes))
        events.append(Event("user", 1, message, f"m{n}", 1_000 + n, 2_000 + n))
    with BeamTestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create(events) | WriteToStores(load_settings())
    rows = fs.get_online("user", [1, 2], features=["age"])
    assert [r["age"] if r else None for r in rows] == [40, 22]
    assert sorted(fs.offline.history(spec).column("message_id").to_pylist()) == ["m0", "m1", "m2", "m3"]
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
