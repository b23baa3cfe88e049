"""Ingest benchmarks. Starts its own Redis and Pub/Sub emulator; prints numbers.

.venv/bin/python benchmarks/streaming.py cpu                 # µs per event of our transforms (no Beam)
.venv/bin/python benchmarks/streaming.py freshness           # 20 events/s trickle: publish -> readable online
.venv/bin/python benchmarks/streaming.py stream --events 100000   # our job vs a trivial job, same runner
.venv/bin/python benchmarks/streaming.py backfill --events 1000000  # JSONL and parquet
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sample_users import random_user

ROOT = Path(__file__).resolve().parent.parent
# Event times spread over the 20 days after T0, all in the past and inside the user entity's 30-day TTL.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=21)


def events(spec: Any, n: int, users: int, seed: int = 1) -> list[Any]:
    rng = random.Random(seed)
    return [
        random_user(spec, rng, rng.randint(1, users), T0 + timedelta(seconds=rng.randint(0, 20 * 86400)))
        for _ in range(n)
    ]


def env_with(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env


def cpu(args: argparse.Namespace) -> None:
    """decode + validate + offline batch + online compare-and-set, per event, in this process (CPU time)."""
    from fstore.ingest.events import Event, decode_event
    from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
    from fstore.schema.registry import Registry
    from fstore.store.offline.schema import messages_to_table
    from fstore.store.online.redis import RedisOnlineStore
    from fstore.testing import RedisServer

    registry = Registry.default()
    spec = registry.get("user")
    attrs = {ATTR_ENTITY: "user", ATTR_VERSION: "1", ATTR_FINGERPRINT: spec.fingerprint}
    now = datetime.now(UTC)
    msgs = events(spec, args.events, args.events // 10)
    for m in msgs:  # a live stream: event times within the last minutes, so one date partition offline
        m.event_time.FromDatetime(now - timedelta(seconds=random.random() * 600))
    payloads = [m.SerializeToString() for m in msgs]
    publish = datetime.now(UTC)
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        from fstore.store.offline.duckdb import DuckDBOfflineStore

        online = RedisOnlineStore(server.url)
        offline = DuckDBOfflineStore.from_url(f"duckdb:///{tmp}/offline", registry)
        parts = {"decode+validate": 0.0, "offline batch (arrow)": 0.0, "offline write": 0.0, "online write": 0.0}
        valid = 0
        for start in range(0, len(payloads), args.batch):
            t = time.process_time()
            results = [
                decode_event(registry, p, attrs, f"m{start + i}", publish)
                for i, p in enumerate(payloads[start : start + args.batch])
            ]
            decoded = [e for e in results if isinstance(e, Event)]
            valid += len(decoded)
            t1 = time.process_time()
            table = messages_to_table(
                spec, [e.message for e in decoded], [e.ingest_micros for e in decoded], [e.message_id for e in decoded]
            )
            t2 = time.process_time()
            offline.write(spec, table)
            t3 = time.process_time()
            online.write(spec, [e.message for e in decoded], [e.publish_micros for e in decoded])
            t4 = time.process_time()
            for name, took in zip(parts, (t1 - t, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[name] += took
        stored = offline.history(spec).num_rows
        if valid != args.events or stored != args.events:
            raise SystemExit(f"benchmark: {valid} of {args.events} events decoded, {stored} stored offline")
        total = sum(parts.values())
        print(f"our transforms, CPU per event (batches of {args.batch}, {args.events} events):")
        for name, took in parts.items():
            print(f"  {name:<24} {took / args.events * 1e6:6.1f} µs")
        print(f"  {'total':<24} {total / args.events * 1e6:6.1f} µs")


class Stack:
    """A Redis, the Pub/Sub emulator and fresh topic names, in env vars for the subprocesses."""

    def __init__(self, compact_after: int = 256) -> None:
        self.compact_after = compact_after

    def __enter__(self) -> Stack:
        from fstore.testing import PubSubEmulator, RedisServer

        self.redis = RedisServer()
        self.redis.start()
        self.emulator = PubSubEmulator()
        self.emulator.start()
        self.tmp = Path(tempfile.mkdtemp(prefix="fstore-bench-"))
        suffix = uuid.uuid4().hex[:6]
        compact_after = self.compact_after
        self.env = env_with(
            FSTORE_REDIS_URL=self.redis.url,
            PUBSUB_EMULATOR_HOST=self.emulator.host,
            FSTORE_OFFLINE=f"duckdb:///{self.tmp}/offline?compact_after={compact_after}",
            FSTORE_DATA_DIR=str(self.tmp / ".fstore"),
            FSTORE_PUBSUB__TOPIC=f"bench-{suffix}",
            FSTORE_PUBSUB__SUBSCRIPTION=f"bench-ingest-{suffix}",
            FSTORE_CONFIG=str(self.tmp / "fstore.yaml"),
        )
        (self.tmp / "fstore.yaml").write_text("{}\n")
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        self.emulator.stop()
        self.redis.stop()

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{args[-1]}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_subscription(subscription: str) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    sub = pubsub_v1.SubscriberClient()
    while True:
        try:
            sub.get_subscription(subscription=subscription)
            return
        except Exception:
            time.sleep(0.2)


def publish_all(topic: str, payloads: list[bytes], attrs: dict[str, str]) -> float:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.01)
    )
    t = time.perf_counter()
    for start in range(0, len(payloads), 10_000):
        futures = [publisher.publish(topic, p, **attrs) for p in payloads[start : start + 10_000]]
        for f in futures:
            f.result()
    return time.perf_counter() - t


def stream(args: argparse.Namespace) -> None:
    """Our streaming job vs a trivial job (Pub/Sub -> Redis SET) on the same runner. Each runs against a fresh
    Redis and emulator (the emulator slows down as it ages), starts on a backlog of the same events published
    beforehand, and is timed from its start until every event is written."""
    import redis
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
    from fstore.schema.registry import Registry

    spec = Registry.default().get("user")
    attrs = {ATTR_ENTITY: "user", ATTR_VERSION: "1", ATTR_FINGERPRINT: spec.fingerprint}
    msgs = events(spec, args.events, args.events * 100)  # ~distinct users: (almost) every event lands online
    now = datetime.now(UTC)
    for m in msgs:  # a live stream: event times within the last minutes
        m.event_time.FromDatetime(now - timedelta(seconds=random.random() * 600))
    payloads = [m.SerializeToString() for m in msgs]
    distinct = len({m.user_id for m in msgs})

    def backlog(stack: Stack, topic: str, subscription: str) -> None:
        pubsub_v1.PublisherClient().create_topic(name=topic)
        pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
        publish_all(topic, payloads, attrs)

    def drain(stack: Stack, job: subprocess.Popen[bytes], keys: int) -> float:
        client = redis.Redis.from_url(stack.redis.url)
        t = time.perf_counter()
        while int(client.dbsize()) < keys and job.poll() is None:
            time.sleep(0.2)
        took = time.perf_counter() - t
        kill(job)
        if int(client.dbsize()) < keys:
            raise SystemExit(f"benchmark: the job stopped with {client.dbsize()} of {keys} keys online; no figures")
        return args.events / took

    def trivial_job() -> float:
        with Stack() as stack:
            topic, sub = f"projects/{project}/topics/trivial", f"projects/{project}/subscriptions/trivial"
            backlog(stack, topic, sub)
            script = str(Path(__file__).with_name("trivial_stream.py"))
            return drain(stack, stack.start(script, stack.redis.url, sub, "trivial"), args.events)

    def our_job() -> float:
        with Stack() as stack:
            topic = f"projects/{project}/topics/{stack.env['FSTORE_PUBSUB__TOPIC']}"
            backlog(stack, topic, f"projects/{project}/subscriptions/{stack.env['FSTORE_PUBSUB__SUBSCRIPTION']}")
            return drain(stack, stack.start("-m", "fstore.cli", "ingest", "stream"), distinct)

    project = "fstore-local"
    ratios = []
    for round_ in range(1, args.rounds + 1):  # alternating, so drift on the machine hits both alike
        ceiling = trivial_job()
        ours = our_job()
        ratios.append(ours / ceiling)
        print(
            f"round {round_}: trivial pipeline (Pub/Sub -> Redis SET) {ceiling:,.0f} events/s; "
            f"fstore ingest stream (decode, validate, offline + online writes) {ours:,.0f} events/s: "
            f"{ours / ceiling:.0%}",
            flush=True,
        )
    print(
        f"ratio: median {statistics.median(ratios):.0%} (min {min(ratios):.0%}, max {max(ratios):.0%}) of the "
        f"runner's ceiling over {len(ratios)} round(s), both timed from start, on a backlog of {args.events:,} events"
    )


def freshness(args: argparse.Namespace) -> None:
    """A trickle of events/s; for each, publish -> readable online (Redis poll every 2 ms)."""
    import redis

    from fstore.schema.attributes import ATTR_ENTITY, ATTR_FINGERPRINT, ATTR_VERSION
    from fstore.schema.registry import Registry

    spec = Registry.default().get("user")
    attrs = {ATTR_ENTITY: "user", ATTR_VERSION: "1", ATTR_FINGERPRINT: spec.fingerprint}
    with Stack(compact_after=0) as stack:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        client = redis.Redis.from_url(stack.redis.url)
        topic = f"projects/fstore-local/topics/{stack.env['FSTORE_PUBSUB__TOPIC']}"
        job = stack.start("-m", "fstore.cli", "ingest", "stream")
        wait_subscription(f"projects/fstore-local/subscriptions/{stack.env['FSTORE_PUBSUB__SUBSCRIPTION']}")
        publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        # warm up: the first bundle pays for DoFn setup
        warm = events(spec, 1, 1, seed=9)[0]
        warm.user_id = 10**9
        publisher.publish(topic, warm.SerializeToString(), **attrs).result()
        while not client.exists(f"fs:user:v1:{10**9}"):
            time.sleep(0.05)
        seen: dict[int, float] = {}
        sent: dict[int, float] = {}
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                pending = [i for i in list(sent) if i not in seen]
                if pending:
                    values = client.mget([f"fs:user:v1:{i}" for i in pending])
                    now = time.time()
                    for i, v in zip(pending, values, strict=True):
                        if v is not None:
                            seen[i] = now
                time.sleep(0.002)

        offline_seen: dict[int, float] = {}
        table_dir = stack.tmp / "offline" / "user_v1"

        def poll_offline() -> None:
            """What a reader of the offline store sees (its journals and segments), every 5 ms."""
            from fstore.store.offline import segments
            from fstore.store.offline.journal import read_journals

            read: set[Path] = set()
            while not stop.is_set():
                listing = segments.listing(table_dir)
                try:
                    tables = [read_journals(listing.journals)]
                except FileNotFoundError:  # turned into a segment since the listing
                    continue
                for path in set(listing.mixed + listing.clean) - read:
                    tables.append(pq.read_table(path, columns=["user_id"]))
                    read.add(path)
                now = time.time()
                for table in tables:
                    for user_id in [] if table is None else table.column("user_id").to_pylist():
                        offline_seen.setdefault(user_id, now)
                time.sleep(0.005)

        import pyarrow.parquet as pq

        pollers = [threading.Thread(target=poll), threading.Thread(target=poll_offline)]
        for poller in pollers:
            poller.start()
        interval = 1 / args.rate
        msgs = events(spec, args.events, 1, seed=3)
        for n, m in enumerate(msgs):
            m.user_id = n + 1
            m.event_time.FromDatetime(datetime.now(UTC))
            sent[m.user_id] = time.time()
            publisher.publish(topic, m.SerializeToString(), **attrs)
            time.sleep(interval)
        deadline = time.monotonic() + 30
        while len(seen) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        while any(i not in offline_seen for i in list(sent)) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for poller in pollers:
            poller.join()
        kill(job)
        both = {i: max(seen[i], offline_seen[i]) for i in seen if i in offline_seen}
        for label, times in (("readable online", seen), ("written offline", offline_seen), ("both", both)):
            lat = sorted((times[i] - sent[i]) * 1000 for i in times if i in sent)
            if not lat:
                print(f"freshness ({label}): nothing seen")
                continue
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(
                f"freshness at {args.rate} events/s, publish -> {label} ({len(lat)}/{len(sent)}): "
                f"p50 {statistics.median(lat):.0f} ms, p99 {p99:.0f} ms"
            )


def backfill(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.schema.registry import Registry
    from fstore.schema.tables import arrow_schema
    from fstore.store.offline.schema import messages_to_table

    spec = Registry.default().get("user")
    with tempfile.TemporaryDirectory(prefix="fstore-bench-input-") as inputs:
        jsonl = Path(inputs) / "events.jsonl"
        parquet = Path(inputs) / "events.parquet"
        rng = random.Random(5)
        with jsonl.open("w") as out:
            for i in range(args.events):
                when = T0 + timedelta(seconds=rng.randint(0, 20 * 86400))
                out.write(
                    json.dumps(
                        {
                            "userId": str(rng.randint(1, args.events // 10)),
                            "eventTime": when.isoformat().replace("+00:00", "Z"),
                            "age": rng.randint(18, 90),
                            "country": "JP",
                            "lifetimeOrders": str(i % 500),
                            "avgOrderValue": 12.5,
                            "favoriteCategories": ["books"],
                            "embedding": [0.25] * 16,
                        }
                    )
                    + "\n"
                )
        msgs = events(spec, args.events, args.events // 10)
        table = messages_to_table(spec, msgs, [0] * len(msgs), [""] * len(msgs))
        table = table.drop_columns(["ingest_time", "message_id"])
        pq.write_table(table, parquet, row_group_size=100_000)
        del msgs
        assert isinstance(arrow_schema(spec), pa.Schema)
        for name, path in (("JSONL", jsonl), ("parquet", parquet)):
            with Stack() as stack:  # each into an empty store
                t = time.perf_counter()
                cmd = ["-m", "fstore.cli", "ingest", "backfill", "--entity", "user", "--input", str(path)]
                proc = subprocess.run(
                    [sys.executable, *cmd], env=stack.env, capture_output=True, text=True, check=False
                )
                took = time.perf_counter() - t
            expected = f"{args.events} events read, {args.events} stored offline"
            if proc.returncode != 0 or expected not in proc.stdout:
                raise SystemExit(
                    f"benchmark: backfill of {name} did not store every event:\n{proc.stdout}{proc.stderr}"
                )
            print(
                f"backfill {name}: {args.events:,} events in {took:.1f} s = {args.events / took:,.0f} events/s "
                "(process start, pipeline and compaction)"
            )
            for line in proc.stdout.strip().splitlines() or [proc.stderr[-500:]]:
                print("   " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=10, help="events per bundle (the local runner pulls 10)")
    p = sub.add_parser("stream")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3, help="trivial job, then ours, this many times")
    p = sub.add_parser("freshness")
    p.add_argument("--events", type=int, default=400)
    p.add_argument("--rate", type=float, default=20)
    p = sub.add_parser("backfill")
    p.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    {"cpu": cpu, "stream": stream, "freshness": freshness, "backfill": backfill}[args.what](args)


if __name__ == "__main__":
    main()
