"""The streaming job end to end: real Pub/Sub emulator, real Redis, the DuckDB offline store, Beam's local runner.

The job runs as a subprocess (`fstore ingest stream`), as a user runs it; Beam's local streaming runner
cannot be stopped cleanly in-process (its cancel waits for a blocked 30 s pull), so tests kill it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
from fstore.schema.registry import EntitySpec
from fstore.settings import get_settings, load_settings
from fstore.store import FeatureStore
from fstore.testing import RedisClusterServers, RedisServer

pytestmark = pytest.mark.emulator
PROJECT = "fstore-local"


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch, pubsub_env: str) -> dict[str, str]:
    """Fresh topic/subscription names per test on the shared emulator."""
    suffix = uuid.uuid4().hex[:8]
    values = {"topic": f"events-{suffix}", "subscription": f"ingest-{suffix}", "deadletter_topic": f"dlq-{suffix}"}
    for key, value in values.items():
        monkeypatch.setenv(f"FSTORE_PUBSUB__{key.upper()}", value)
    get_settings.cache_clear()
    return values


@pytest.fixture
def stream_job(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"ingest-{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "fstore.cli", "ingest", "stream"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for log in sorted(tmp_path.glob("ingest-*.log")):
        sys.stdout.write(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-3000:]}\n")


def user_event(spec: EntitySpec, user_id: int, when: datetime, **features: Any) -> bytes:
    message = spec.message_class(user_id=user_id, **features)
    message.event_time.FromDatetime(when)
    return message.SerializeToString()


def routing(spec: EntitySpec) -> dict[str, str]:
    return {ATTR_ENTITY: spec.name, ATTR_VERSION: str(spec.version), ATTR_FINGERPRINT: spec.fingerprint}


def test_stream_end_to_end(redis_url: str, names: dict[str, str], stream_job: Any) -> None:
    fs = FeatureStore.from_config()
    spec = fs.spec("user")
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, names["topic"])
    dlq_topic = publisher.topic_path(PROJECT, names["deadletter_topic"])
    for t in (topic, dlq_topic):
        publisher.create_topic(name=t)
    dlq_sub = subscriber.subscription_path(PROJECT, f"dlq-watch-{names['topic']}")
    subscriber.create_subscription(name=dlq_sub, topic=dlq_topic)
    job = stream_job()
    job_sub = subscriber.subscription_path(PROJECT, names["subscription"])
    wait_for(lambda: _exists(subscriber, job_sub), 60, "the job's subscription")

    now = datetime.now(UTC).replace(microsecond=0)
    valid: list[tuple[bytes, dict[str, str]]] = []
    latest: dict[int, int] = {}
    for user_id in range(1, 21):
        # newest first, then older ones: the online store must keep the newest
        for k, age in ((0, 40), (3, 30), (2, 20), (1, 10)):
            valid.append((user_event(spec, user_id, now - timedelta(minutes=k), age=age + user_id), routing(spec)))
        latest[user_id] = 40 + user_id
    duplicates = valid[:5]  # the same events again (a producer retry): new message ids, same effect online
    bad_attrs = routing(spec)
    invalid = [
        (b"\x00\xff garbage", routing(spec)),
        (user_event(spec, 1, now), {**bad_attrs, ATTR_ENTITY: "shipment"}),
        (user_event(spec, 1, now), {**bad_attrs, ATTR_VERSION: "7"}),
        (user_event(spec, 0, now, age=1), routing(spec)),
        (spec.message_class(user_id=5, age=1).SerializeToString(), routing(spec)),
        (user_event(spec, 1, now), {**bad_attrs, ATTR_FINGERPRINT: "0000000000000000"}),
    ]
    futures = [publisher.publish(topic, data, **attrs) for data, attrs in [*valid, *duplicates, *invalid]]
    message_ids = [f.result() for f in futures]
    published = len(message_ids)

    def online_done() -> bool:
        rows = fs.get_online("user", list(latest), features=["age"])
        return all(r is not None and r["age"] == latest[i] for i, r in zip(latest, rows, strict=True))

    wait_for(online_done, 120, "the newest event of every user online")
    offline = fs.offline
    expected_offline = len(valid) + len(duplicates)
    wait_for(lambda: offline.history(spec).num_rows == expected_offline, 60, f"{expected_offline} offline rows")
    wait_for(lambda: offline.dead_letters().num_rows == len(invalid), 60, f"{len(invalid)} dead letters")

    history = offline.history(spec)
    assert sorted(history.column("message_id").to_pylist()) == sorted(message_ids[:expected_offline])
    letters = offline.dead_letters().to_pylist()
    assert sorted(d["reason"] for d in letters) == sorted(
        [
            "undecodable",
            "unknown_entity",
            "unknown_version",
            "missing_key",
            "missing_event_time",
            "unknown_fingerprint",
        ]
    )
    assert {d["message_id"] for d in letters} == set(message_ids[expected_offline:])
    garbage = next(d for d in letters if d["reason"] == "undecodable")
    assert garbage["data"] == b"\x00\xff garbage"
    # the job re-read its schemas before refusing these, and says which side is behind
    fingerprint = next(d for d in letters if d["reason"] == "unknown_fingerprint")["detail"]
    assert "this job has just re-read" in fingerprint and "the producer's schemas are not (yet)" in fingerprint
    assert "fstore dead-letters replay --reason unknown_fingerprint" in fingerprint
    # counts in = counts stored + counts dead-lettered
    assert published == history.num_rows + len(letters)

    pulled = subscriber.pull(subscription=dlq_sub, max_messages=50, timeout=10)
    reasons = sorted(m.message.attributes["fstore_reason"] for m in pulled.received_messages)
    assert len(reasons) == len(invalid) and "unknown_fingerprint" in reasons

    os.killpg(job.pid, signal.SIGINT)  # Ctrl-C: the job stops, and its offline journal becomes a segment
    job.wait(timeout=60)
    assert not list(offline.root.rglob("*.arrows"))
    assert offline.history(spec).num_rows == expected_offline
    fs.close()


def test_redis_outage_loses_nothing(names: dict[str, str], stream_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisServer() as redis_server:
        monkeypatch.setenv("FSTORE_REDIS_URL", redis_server.url)
        get_settings.cache_clear()
        fs = FeatureStore.from_config()
        spec = fs.spec("user")
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(PROJECT, names["topic"])
        stream_job()
        now = datetime.now(UTC).replace(microsecond=0)

        def publish(ids: range, age: int) -> None:
            futures = [publisher.publish(topic, user_event(spec, i, now, age=age), **routing(spec)) for i in ids]
            for f in futures:
                f.result()

        def ages(ids: range) -> list[int | None]:
            return [r["age"] if r else None for r in fs.get_online("user", list(ids), features=["age"])]

        # The job creates the subscription at start; wait until it exists before publishing.
        subscriber = pubsub_v1.SubscriberClient()
        sub = subscriber.subscription_path(PROJECT, names["subscription"])
        wait_for(lambda: _exists(subscriber, sub), 60, "the job's subscription")
        publish(range(1, 51), 1)
        wait_for(lambda: ages(range(1, 51)) == [1] * 50, 120, "the first batch online")

        redis_server.stop()
        publish(range(51, 101), 2)  # published while Redis is down: the job must hold them, not drop them
        time.sleep(3)
        redis_server.start()
        wait_for(lambda: ages(range(51, 101)) == [2] * 50, 120, "the events published during the outage")
        wait_for(lambda: fs.offline.history(spec).num_rows == 100, 60, "all 100 events offline")
        fs.close()


def start_streaming(names: dict[str, str], stream_job: Any) -> tuple[Any, str, subprocess.Popen[bytes]]:
    """A publisher, the test's topic, and a running job whose subscription exists (the job creates it at
    start; events published before that would be lost on the emulator)."""
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, names["topic"])
    job = stream_job()
    subscriber = pubsub_v1.SubscriberClient()
    wait_for(lambda: _exists(subscriber, subscriber.subscription_path(PROJECT, names["subscription"])), 60, "sub")
    return publisher, topic, job


def _exists(subscriber: Any, subscription: str) -> bool:
    try:
        subscriber.get_subscription(subscription=subscription)
        return True
    except Exception:
        return False


def test_poison_events_are_dead_letters_and_the_job_keeps_running(
    redis_url: str, names: dict[str, str], stream_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of these once stopped the job (and lost the events pulled with it): a version attribute that
    str.isdigit() accepts and int() refuses, epoch milliseconds in event_time.seconds, and a message above
    the size limit. Counts in = stored + dead-lettered, and the job is still running after them."""
    monkeypatch.setenv("FSTORE_INGEST__MAX_EVENT_BYTES", "20000")
    get_settings.cache_clear()
    fs = FeatureStore.from_config()
    spec = fs.spec("user")
    publisher, topic, job = start_streaming(names, stream_job)
    now = datetime.now(UTC).replace(microsecond=0)
    milliseconds = spec.message_class(user_id=900)
    milliseconds.event_time.seconds = int(now.timestamp() * 1000)
    poison = [
        (user_event(spec, 901, now), routing(spec) | {ATTR_VERSION: "²"}),
        (milliseconds.SerializeToString(), routing(spec)),
        (user_event(spec, 902, now, country="x" * 50_000), routing(spec)),
    ]
    futures = [publisher.publish(topic, user_event(spec, i, now, age=i), **routing(spec)) for i in range(1, 41)]
    futures += [publisher.publish(topic, data, **attributes) for data, attributes in poison]
    futures += [publisher.publish(topic, user_event(spec, i, now, age=i), **routing(spec)) for i in range(41, 81)]
    for f in futures:
        f.result()

    wait_for(lambda: fs.offline.dead_letters().num_rows == 3, 120, "three dead letters")
    wait_for(lambda: fs.offline.history(spec).num_rows == 80, 120, "the 80 valid events offline")
    ages = [r["age"] if r else None for r in fs.get_online("user", list(range(1, 81)), features=["age"])]
    assert ages == list(range(1, 81))
    reasons = sorted(fs.offline.dead_letters().column("reason").to_pylist())
    assert reasons == ["event_time_out_of_range", "too_large", "unknown_version"]
    assert job.poll() is None, "the job must keep running"
    fs.close()


@pytest.mark.slow
def test_kill_9_loop_loses_nothing(
    redis_url: str, names: dict[str, str], stream_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill -9` of the job at random moments while 20,000 events stream in, a restart after each: every
    event is stored offline once, and online holds the latest by event time. A message the killed job had
    pulled but not acked is delivered again once its (here 10 s) ack deadline passes."""
    monkeypatch.setenv("FSTORE_PUBSUB__ACK_DEADLINE_SECONDS", "10")
    get_settings.cache_clear()
    fs = FeatureStore.from_config()
    spec = fs.spec("user")
    publisher, topic, job = start_streaming(names, stream_job)
    users, per_user = 2_000, 10
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rng = random.Random(12)
    kills = []  # (rows offline before the round, rows offline at the kill)
    for k in range(per_user):  # a kill in each round but the last two
        before = fs.offline.history(spec).num_rows
        payload = [user_event(spec, u, start + timedelta(seconds=k), age=k) for u in range(1, users + 1)]
        for f in [publisher.publish(topic, data, **routing(spec)) for data in payload]:
            f.result()
        if k < per_user - 2:
            # Kill while the job is draining: once this round's rows have started to land, at a random moment.
            wait_for(lambda b=before: fs.offline.history(spec).num_rows > b, 60, "the job to drain")
            time.sleep(rng.uniform(0.0, 0.2))
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            kills.append((before, fs.offline.history(spec).num_rows))
            job = stream_job()
    print("offline rows before each killed round, and at the kill:", kills)
    assert len(kills) == per_user - 2 and any(b < at < b + users for b, at in kills), kills

    total = users * per_user
    deadline = time.monotonic() + 120
    while fs.offline.history(spec).num_rows < total and time.monotonic() < deadline:
        time.sleep(0.5)
    history = fs.offline.history(spec)
    assert history.num_rows == total and len(set(history.column("message_id").to_pylist())) == total
    rows = fs.get_online("user", list(range(1, users + 1)), features=["age"])
    assert [r["age"] if r else None for r in rows] == [per_user - 1] * users
    assert fs.offline.dead_letters().num_rows == 0
    fs.close()


def test_large_messages_neither_jam_nor_stop_the_job(redis_url: str, names: dict[str, str], stream_job: Any) -> None:
    """Pub/Sub takes messages up to 10 MB. Twelve valid 500 KB events, one 5.2 MB event (above the 1 MiB
    default limit) and eight small ones: the twenty valid ones are stored, the large one is a dead letter,
    and the job keeps running (gRPC's 4 MB receive limit used to fail every pull behind such a message)."""
    fs = FeatureStore.from_config()
    spec = fs.spec("user")
    publisher, topic, job = start_streaming(names, stream_job)
    now = datetime.now(UTC).replace(microsecond=0)
    payloads = [user_event(spec, 100 + i, now, country="x" * 500_000) for i in range(12)]
    payloads.append(user_event(spec, 999, now, country="y" * 5_200_000))
    payloads += [user_event(spec, 200 + i, now, age=3) for i in range(8)]
    for f in [publisher.publish(topic, data, **routing(spec)) for data in payloads]:
        f.result()
    wait_for(lambda: fs.offline.history(spec).num_rows == 20, 120, "the 20 valid events offline")
    wait_for(lambda: fs.offline.dead_letters().num_rows == 1, 60, "the dead letter")
    assert fs.offline.dead_letters().column("reason").to_pylist() == ["too_large"]
    assert all(r is not None for r in fs.get_online("user", [*range(100, 112), *range(200, 208)]))
    assert job.poll() is None
    fs.close()


def test_schema_changes_while_the_job_and_the_server_run(
    redis_url: str, names: dict[str, str], stream_job: Any, monkeypatch: pytest.MonkeyPatch, schema_copy: Any
) -> None:
    """With `fstore ingest stream` and `fstore serve` running: an optional field added to `user` v1 and
    regenerated; an event carrying it is stored and read back over HTTP with the field, with no restart and
    no dead letter. Then `user` v2 is added beside v1: every unpinned read over HTTP answers as before."""
    from tests.api.test_serve import get, serving

    monkeypatch.setenv("FSTORE_DESCRIPTOR_SET", str(schema_copy.descriptor_set))
    monkeypatch.setenv("FSTORE_DEFAULT_VERSIONS", json.dumps({"user": 1}))
    schema_copy.default_versions["user"] = 1
    get_settings.cache_clear()
    before = schema_copy.registry().get("user")
    publisher, topic, job = start_streaming(names, stream_job)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    with serving() as base:

        def row(user_id: int, features: str = "age") -> Any:
            status, body = get(f"{base}/v1/online/user?id={user_id}&features={features}")
            return (json.loads(body)["rows"][0] or {}) if status == 200 else {}

        publisher.publish(topic, user_event(before, 1, now, age=30), **routing(before)).result()
        wait_for(lambda: row(1).get("age") == 30, 60, "user 1 over HTTP")

        schema_copy.add_user_field()
        after = schema_copy.registry().get("user")
        publisher.publish(topic, user_event(after, 2, now, age=40, churn_score=0.5), **routing(after)).result()

        wait_for(lambda: row(2, "churn_score").get("churn_score") == 0.5, 60, "user 2's churn_score over HTTP")
        with FeatureStore(load_settings(), registry=schema_copy.registry()) as fs:
            assert fs.offline.history(after).num_rows == 2
            assert fs.offline.dead_letters().num_rows == 0
        unpinned = [get(f"{base}/v1/online/user?id=1&id=2&id=3"), get(f"{base}/v1/entities/user")]

        schema_copy.add_user_v2(default_version=1)
        status, body = get(f"{base}/v1/online/user?id=1&version=2")  # the server takes v2 up when asked for it
        assert status == 200 and json.loads(body)["version"] == 2 and json.loads(body)["rows"] == [None]
        assert get(f"{base}/v1/online/user?id=1&id=2&id=3") == unpinned[0]
        entity = json.loads(get(f"{base}/v1/entities/user")[1])
        assert (entity["default_version"], entity["latest_version"]) == (1, 2)
    assert job.poll() is None


def test_a_full_redis_stalls_the_running_job_and_it_resumes_when_memory_is_freed(
    names: dict[str, str], stream_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis at maxmemory under noeviction refuses every write: the job holds its acks and retries (it used to
    exit, losing the events it had pulled). Memory freed, every event is online, each stored offline once."""
    import redis

    with RedisServer(maxmemory="3mb") as server:
        client = redis.Redis.from_url(server.url)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(10_000):
                client.set(f"filler:{i}", b"x" * 10_000)
        monkeypatch.setenv("FSTORE_REDIS_URL", server.url)
        get_settings.cache_clear()
        publisher, topic, job = start_streaming(names, stream_job)
        with FeatureStore.from_config() as fs:
            spec = fs.spec("user")
            now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
            for f in [
                publisher.publish(topic, user_event(spec, i, now, age=30), **routing(spec)) for i in range(1, 201)
            ]:
                f.result()
            wait_for(lambda: fs.offline.history(spec).num_rows > 0, 60, "the first batch offline")
            time.sleep(3)
            assert job.poll() is None and client.exists("fs:user:v1:1") == 0  # stalled, not stopped

            client.config_set("maxmemory", "0")
            wait_for(lambda: all(fs.get_online("user", list(range(1, 201)))), 60, "all 200 events online")
            assert fs.offline.history(spec).num_rows == 200 and fs.offline.dead_letters().num_rows == 0
            assert job.poll() is None


def test_a_full_disk_stalls_the_running_job_and_loses_nothing_offline(
    redis_url: str, names: dict[str, str], stream_job: Any, monkeypatch: pytest.MonkeyPatch, small_disk: Path
) -> None:
    """The embedded offline store on a tmpfs filled to the last byte for 20 s while 500 events arrive: the job
    stalls (offline is written first, so nothing goes online either), then stores every event once."""
    from tests.conftest import fill_disk

    monkeypatch.setenv("FSTORE_OFFLINE", f"duckdb:///{small_disk / 'offline'}")
    get_settings.cache_clear()
    publisher, topic, job = start_streaming(names, stream_job)
    with FeatureStore.from_config() as fs:
        spec = fs.spec("user")
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        publisher.publish(topic, user_event(spec, 1, now, age=30), **routing(spec)).result()
        wait_for(lambda: fs.offline.history(spec).num_rows == 1, 60, "the first event offline")
        filler = fill_disk(small_disk)
        for f in [publisher.publish(topic, user_event(spec, i, now, age=30), **routing(spec)) for i in range(2, 502)]:
            f.result()
        time.sleep(20)
        assert job.poll() is None
        assert fs.offline.history(spec).num_rows == 1 and fs.get_online("user", [2]) == [None]  # stalled

        filler.unlink()
        wait_for(lambda: fs.offline.history(spec).num_rows >= 501, 90, "all 501 events offline")
        wait_for(lambda: all(fs.get_online("user", list(range(1, 502)))), 60, "all 501 events online")
        history = fs.offline.history(spec)
        assert history.num_rows == 501 and len(set(history.column("message_id").to_pylist())) == 501
        assert fs.offline.dead_letters().num_rows == 0 and job.poll() is None


KEYS, ROUNDS = 1_000, 10  # 10,000 probes


def test_aggregation_features_online_equal_the_export_at_the_same_moments(
    redis_url: str, names: dict[str, str], stream_job: Any, tmp_path: Path
) -> None:
    """Parity through the real streaming job on one Redis (`aggregation_parity`)."""
    aggregation_parity(names, stream_job, tmp_path)


def test_aggregation_features_online_equal_the_export_on_a_redis_cluster(
    redis_cluster: RedisClusterServers,
    names: dict[str, str],
    stream_job: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same parity with the job, its reads and the tiles on a Redis Cluster of three primaries (a
    key's tiles under one hash tag, scripts one call per key, reads MGET per slot): every primary holds a
    share of the families' keys."""
    import redis

    nodes = [redis.Redis(host="127.0.0.1", port=n.port) for n in redis_cluster.nodes]
    for node in nodes:
        node.flushall()
    monkeypatch.setenv("FSTORE_REDIS_URL", redis_cluster.url)
    monkeypatch.setenv("FSTORE_REDIS__CLUSTER", "true")
    get_settings.cache_clear()
    aggregation_parity(names, stream_job, tmp_path)
    states = [len(node.keys("fsa:{user_orders:*")) for node in nodes]  # one per user with orders
    assert sum(states) > KEYS // 2 and min(states) > sum(states) // 5, states
    for node in nodes:
        node.close()


def aggregation_parity(names: dict[str, str], stream_job: Any, tmp_path: Path) -> None:
    """Parity through the real streaming job, on the Redis the settings name: order events (out of order,
    some later than the allowed lateness, some published twice) in rounds; after each round drains, the
    online value of every user's `user_orders` features at that moment; then one export of those (user,
    moment) pairs. Both agree, and equal a brute force of the definition over the stored history."""
    import math

    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.parquet as pq

    from fstore.store.online.tiles import TileStore
    from tests.offline.test_aggregations import brute_force, events_of_history

    fs = FeatureStore.from_config()
    order, family = fs.spec("order"), fs.registry.family("user_orders")
    publisher, topic, job = start_streaming(names, stream_job)
    rng = random.Random(11)
    probes: list[tuple[int, int, dict[str, Any]]] = []
    tiles = TileStore.beside(fs.online)
    published = 0
    users = list(range(1, KEYS + 1))
    for round_ in range(ROUNDS):
        now = datetime.now(UTC)
        payloads = []
        for i in range(300):
            message = order.message_class(
                order_id=f"r{round_}-{i}", user_id=rng.randint(1, KEYS - 10), amount=round(rng.uniform(1, 90), 2),
                status=rng.choice(["placed", "paid", "shipped"]),
            )  # fmt: skip
            late = rng.random() < 0.15  # older than the allowed lateness when it arrives
            age = timedelta(minutes=rng.uniform(70, 300) if late else rng.uniform(0, 50))
            message.event_time.FromDatetime(now - age)
            payloads += [message.SerializeToString()] * (2 if rng.random() < 0.1 else 1)
        futures = [publisher.publish(topic, p, **routing(order)) for p in payloads]
        for f in futures:
            f.result()
        published += len(payloads)
        wait_for(lambda n=published: fs.offline.history(order).num_rows == n, 60, f"round {round_} offline")
        stored = fs.offline.history(order)
        lateness = pa.compute.subtract(stored.column("ingest_time"), stored.column("event_time"))
        accepted = sum(1 for d in lateness.to_pylist() if d <= timedelta(hours=1))

        def online_done(n: int = accepted) -> bool:  # the tiles follow the offline rows in the same flush
            return sum(r["order_count_7d"] for r in tiles.read(family, users)) == n

        wait_for(online_done, 30, f"round {round_} online")
        at = time.time_ns() // 1_000
        for key, row in zip(users, tiles.read(family, users, at), strict=True):  # the last 10 have no events
            probes.append((key, at, row))
    assert job.poll() is None
    assert len(probes) >= 10_000
    assert fs.get_online("user_orders", [1])[0]["order_count_7d"] == probes[-KEYS][2]["order_count_7d"]

    spine = pa.table({
        "user_id": pa.array([k for k, _, _ in probes], pa.int64()),
        "event_timestamp": pa.array([t for _, t, _ in probes], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    pq.write_table(spine, tmp_path / "probes.parquet")
    out = tmp_path / "train.parquet"
    fs.export_training_set(str(tmp_path / "probes.parquet"), ["user_orders:*"], out)
    exported = pq.read_table(out).to_pylist()
    history = fs.offline.history(order).to_pylist()
    events_of: dict[int, list[dict[str, Any]]] = {}
    events = events_of_history(history)
    for e in events:
        events_of.setdefault(e["user_id"], []).append(e)
    counted = 0
    for (key, at, online), row in zip(probes, exported, strict=True):
        for feature in family.features:
            offline, truth = (
                row[f"user_orders__{feature.name}"],
                brute_force(family, feature, events_of.get(key, []), key, at),
            )
            for value in (online[feature.name], offline):
                if isinstance(truth, float) and value is not None:
                    assert math.isclose(value, truth, rel_tol=1e-9), (feature.name, key, value, truth)
                else:
                    assert value == truth, (feature.name, key, at, online[feature.name], offline, truth)
            counted += truth not in (0, None)
    assert counted > 10_000  # the probes saw data, not just empty windows
    tiles.close()
    fs.close()
