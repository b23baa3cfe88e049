"""Online store benchmark: starts its own Redis, loads `user` v1 rows through the compare-and-set write path,
then prints write throughput, `get_online` latency for 1 / 100 / 1,000 ids and Redis memory per row.

    .venv/bin/python benchmarks/online.py            # 1,000,000 rows (the issue's size)
    .venv/bin/python benchmarks/online.py --rows 100000 --reads 500
    .venv/bin/python benchmarks/online.py --cluster 3   # a Redis Cluster of 3 primaries (Memorystore cluster)
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

import redis
from google.protobuf.message import Message
from sample_users import random_user

from fstore.schema.registry import EntitySpec, Registry
from fstore.settings import RedisSettings, load_settings
from fstore.store import FeatureStore
from fstore.store.online import WriteResult
from fstore.store.online.redis import RedisOnlineStore
from fstore.testing import RedisClusterServers, RedisServer

# Event times spread over the 20 days after T0, all in the past and inside the user entity's 30-day TTL.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=21)


def user_messages(spec: EntitySpec, start: int, count: int, rng: random.Random) -> list[Message]:
    return [
        random_user(spec, rng, user_id, T0 + timedelta(seconds=rng.randint(0, 20 * 86400)))
        for user_id in range(start, start + count)
    ]


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--reads", type=int, default=2_000, help="get_online calls per size")
    parser.add_argument("--cluster", type=int, default=0, help="primaries of a Redis Cluster (default: one Redis)")
    args = parser.parse_args()

    registry = Registry.default()
    spec = registry.get("user")
    rng = random.Random(1)
    server = RedisClusterServers(args.cluster) if args.cluster else RedisServer()
    with server:
        nodes = server.nodes if isinstance(server, RedisClusterServers) else [server]
        store = RedisOnlineStore(server.url, RedisSettings(cluster=bool(args.cluster)))
        fs = FeatureStore(load_settings(redis_url=server.url), registry=registry, online=store)
        print(f"Redis: {f'a cluster of {args.cluster} primaries' if args.cluster else 'one server'}")

        # Build messages outside the timed section: we time the store, not the test data generator.
        write_time = 0.0
        written = WriteResult()
        for start in range(1, args.rows + 1, 50_000):
            chunk = user_messages(spec, start, min(50_000, args.rows + 1 - start), rng)
            t = time.perf_counter()
            for i in range(0, len(chunk), args.batch):
                written += store.write(spec, chunk[i : i + args.batch])
            write_time += time.perf_counter() - t
        if written.written != args.rows:
            raise SystemExit(f"benchmark: {written.written} of {args.rows} rows were written ({written}); no figures")
        print(f"writes (compare-and-set, batches of {args.batch}): {args.rows / write_time:,.0f} rows/s")

        # Same rows again, older: every write must lose (stale), and it is the CAS path's worst case.
        stale = user_messages(spec, 1, min(args.rows, 100_000), random.Random(2))
        for msg in stale:
            msg.event_time.FromDatetime(T0 - timedelta(days=1))  # type: ignore[attr-defined]
        t = time.perf_counter()
        result = store.write(spec, stale)
        took = time.perf_counter() - t
        if result.stale != len(stale):
            raise SystemExit(f"benchmark: {result.stale} of {len(stale)} older rows were rejected ({result})")
        print(f"stale rewrites: {len(stale) / took:,.0f} rows/s, {result.stale} of {len(stale)} rejected as older")

        del chunk, stale
        gc.collect()  # the generated test messages are garbage now; don't let them skew read latencies

        used = sum(int(redis.Redis.from_url(n.url).info("memory")["used_memory"]) for n in nodes)
        sample = [store.memory_usage(spec, rng.randint(1, args.rows)) or 0 for _ in range(1000)]
        print(
            f"memory: used_memory {used / args.rows:,.0f} bytes/row overall; "
            f"MEMORY USAGE per key {statistics.mean(sample):,.0f} bytes"
        )

        for size in (1, 100, 1000):
            samples = []
            for _ in range(args.reads):
                ids = [rng.randint(1, args.rows) for _ in range(size)]
                t = time.perf_counter()
                rows = fs.get_online("user", ids)
                samples.append(time.perf_counter() - t)
                if any(r is None for r in rows):
                    raise SystemExit(f"benchmark: get_online missed rows that were written (ids {ids[:5]}…)")
            print(f"get_online {size:>5} ids, all features: {percentiles(samples)}")
        fs.close()


if __name__ == "__main__":
    main()
