"""Aggregation family benchmarks (issue 15). Each subcommand starts its own Redis (and offline store), checks
its work against the definition (`fstore.schema.aggregations.counts`) before printing, and prints numbers.

    .venv/bin/python benchmarks/aggregations.py read      # 10,000 keys x 50 orders over 30 days: 1 / 100-key reads
    .venv/bin/python benchmarks/aggregations.py ingest    # µs per event of the tile step beside decode + writes
    .venv/bin/python benchmarks/aggregations.py memory    # Redis bytes per key, message-id sets apart
    .venv/bin/python benchmarks/aggregations.py script    # instructions per event of the tile script (valgrind)
    .venv/bin/python benchmarks/aggregations.py export --spine-rows 100000 --events 1000000
    .venv/bin/python benchmarks/aggregations.py read --family user_orders   # the declared family instead

The family measured is `bench_orders`: the `order` entity's events grouped by user_id, windows 1h, 7d, 30d
(tiles of 5 minutes, 1 hour, 1 day) x count, sum(amount), mean(amount), max(amount), last(status): 15
features, built here with the `fstore.schema.aggregations` helpers (user_orders' lateness). `--family
user_orders` measures the family `order.proto` declares (6 features, 4 tile sizes) instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fstore.schema.aggregations import DAY, AggregationSpec, FamilySpec, counts, parse_window, tile_size
from fstore.schema.registry import Registry
from fstore.store.online.tiles import TileEvent

ROOT = Path(__file__).resolve().parent.parent  # the registry is read from here, whatever the working directory
WINDOWS = ("1h", "7d", "30d")
# (function, field): the field None for COUNT
FUNCTIONS = (("count", None), ("sum", "amount"), ("mean", "amount"), ("max", "amount"), ("last", "status"))
STATUSES = ("placed", "paid", "shipped", "cancelled")
# Pub/Sub message ids are decimal numbers of about 17 digits; the ids' length is what the id hashes store.
MESSAGE_ID_BASE = 13_000_000_000_000_000
LIVE_ID_BASE = MESSAGE_ID_BASE + 1_000_000_000  # the live stream's ids follow the history's: no id is reused


def bench_registry(family_name: str) -> tuple[Registry, FamilySpec]:
    """The default registry, plus `bench_orders` when it is the family measured (an export reads a family
    from the registry, so it has to be in one)."""
    registry = Registry.from_descriptor_set(ROOT / "clients/registry/descriptor_set.binpb")
    if family_name != "bench_orders":
        return registry, registry.family(family_name)
    order = registry.get("order")
    fields = {f.name: f for f in order.fields}
    features = []
    for window_text in WINDOWS:
        window = parse_window(window_text)
        for function, field in FUNCTIONS:
            name = f"order_count_{window_text}" if field is None else f"{field}_{function}_{window_text}"
            spec = None if field is None else fields[field]
            features.append(AggregationSpec(name, function, spec, window, tile_size(window)))
    family = FamilySpec(
        name="bench_orders",
        source=order,
        group_by=fields["user_id"],
        allowed_lateness=registry.family("user_orders").allowed_lateness,
        features=tuple(features),
    )
    specs = [registry.get(e, v) for e in registry.entities() for v in registry.versions(e)]
    families = [registry.family(f) for f in registry.families()] + [family]
    return Registry(specs, registry.source, families=families), family


def history(keys: int, per_key: int, now_us: int, seed: int = 1) -> list[TileEvent]:
    """`per_key` orders per user over the 30 days before now, ingested 0.1-30 s after they were placed (all
    known now, none too late), in event-time order as a stream would bring them."""
    rng = random.Random(seed)
    events: list[TileEvent] = []
    for key in range(1, keys + 1):
        for _ in range(per_key):
            event_us = now_us - 60_000_000 - rng.randrange(30 * DAY - 60_000_000)
            amount = round(rng.uniform(5, 300), 2)
            values = {"amount": amount, "status": rng.choice(STATUSES)}
            message_id = str(MESSAGE_ID_BASE + len(events))
            events.append(
                TileEvent(key, event_us, event_us + rng.randrange(100_000, 30_000_000), message_id, False, values)
            )
    events.sort(key=lambda e: e.event_us)
    return events


def load(tiles: Any, family: FamilySpec, events: list[TileEvent], batch: int = 1_000) -> float:
    """Every event through `TileStore.apply` in batches like the job's flushes; seconds taken."""
    started, applied = time.perf_counter(), 0
    for start in range(0, len(events), batch):
        applied += tiles.apply(family, events[start : start + batch])[0]
    took = time.perf_counter() - started
    if applied != len(events):
        raise SystemExit(f"benchmark: {applied} of {len(events)} events were applied to the tiles; no figures")
    return took


def brute_force(family: FamilySpec, feature: AggregationSpec, events: list[TileEvent], t: int) -> Any:
    """One key's value of `feature` at t straight from the definition, over that key's events."""
    chosen = [e for e in events if counts(family, feature, t, e.event_us, e.ingest_us, e.backfilled)]
    if feature.function == "count":
        return len(chosen)
    assert feature.field is not None
    values = [(e, e.values[feature.field.name]) for e in chosen if e.values[feature.field.name] is not None]
    if feature.function == "sum":
        return math.fsum(v for _, v in values)
    if not values:
        return None
    if feature.function == "mean":
        return math.fsum(v for _, v in values) / len(values)
    if feature.function == "last":
        return max(values, key=lambda ev: (ev[0].event_us, ev[0].ingest_us, ev[0].message_id))[1]
    return (min if feature.function == "min" else max)(v for _, v in values)


def same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def check_reads(tiles: Any, family: FamilySpec, events: list[TileEvent], keys: int, sample: int) -> int:
    """A sample of keys read at one moment, every feature against the brute force; values compared."""
    by_key: dict[int | str, list[TileEvent]] = defaultdict(list)
    for e in events:
        by_key[e.key].append(e)
    chosen = random.Random(7).sample(range(1, keys + 1), min(sample, keys))
    at_us = time.time_ns() // 1_000
    compared = 0
    for key, row in zip(chosen, tiles.read(family, chosen, at_us), strict=True):
        for feature in family.features:
            want = brute_force(family, feature, by_key[key], at_us)
            if not same(row[feature.name], want):
                raise SystemExit(
                    f"benchmark: {family.name}:{feature.name} of key {key} read {row[feature.name]!r}, "
                    f"the definition says {want!r}; no figures"
                )
            compared += 1
    return compared


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):6.3f} ms  p99 {p99:6.3f} ms  (n={len(ms)})"


def timed_reads(fs: Any, name: str, keys: int, size: int, reads: int, warmup: int, rng: random.Random) -> list[float]:
    """Seconds per `fs.get_online(name, ids)` of `size` distinct random keys, after `warmup` untimed reads."""
    for _ in range(warmup):
        fs.get_online(name, rng.sample(range(1, keys + 1), size))
    samples = []
    for _ in range(reads):
        ids = rng.sample(range(1, keys + 1), size)
        t = time.perf_counter()
        rows = fs.get_online(name, ids)
        samples.append(time.perf_counter() - t)
        if len(rows) != size or any(r is None for r in rows):
            raise SystemExit(f"benchmark: a read of {size} keys returned {len(rows)} rows or a missing one")
    return samples


def read(args: argparse.Namespace) -> None:
    """SDK reads of a family (fs.get_online -> TileStore.read) for 1 and 100 keys, beside plain entity reads."""
    import redis

    from fstore.settings import load_settings
    from fstore.store import FeatureStore
    from fstore.store.online.redis import RedisOnlineStore
    from fstore.store.online.tiles import TileStore
    from fstore.testing import RedisServer

    registry, family = bench_registry(args.family)
    now_us = time.time_ns() // 1_000
    events = history(args.keys, args.per_key, now_us)
    with RedisServer() as server:
        tiles = TileStore(redis.Redis.from_url(server.url))
        took = load(tiles, family, events)
        print(
            f"{family.name}: {len(family.features)} features, {len({f.tile for f in family.features})} tile sizes; "
            f"{len(events):,} events for {args.keys:,} keys applied in {took:.1f} s "
            f"({len(events) / took:,.0f} events/s, batches of 1,000)"
        )
        compared = check_reads(tiles, family, events, args.keys, args.check)
        print(f"check: {compared:,} values of {min(args.check, args.keys)} keys equal the definition's brute force")

        # Plain rows of `user` for the same keys, so the 100-id comparison is measured in the same run.
        from sample_users import random_user

        online = RedisOnlineStore(server.url)
        user = registry.get("user")
        rng = random.Random(2)
        when = datetime.fromtimestamp(now_us / 1e6, UTC) - timedelta(days=1)
        written = online.write(user, [random_user(user, rng, k, when) for k in range(1, args.keys + 1)]).written
        if written != args.keys:
            raise SystemExit(f"benchmark: {written} of {args.keys} user rows were written; no figures")
        fs = FeatureStore(load_settings(redis_url=server.url), registry=registry, online=online)
        del events
        gc.collect()  # the generated history is garbage now; keep its collection out of the timed reads
        rng = random.Random(3)
        for name, label in ((family.name, "keys, all features"), ("user", "ids, all features (plain rows)")):
            for size, reads in ((1, args.reads), (100, args.reads_100)):
                samples = timed_reads(fs, name, args.keys, size, reads, args.warmup, rng)
                print(f"get_online {name} {size:>3} {label}: {percentiles(samples)}")
        fs.close()


def redis_stats(client: Any) -> tuple[float, Counter[str], Counter[str]]:
    """CPU seconds the Redis server has used (the Lua script runs there, not in this process), and calls and
    µs so far per command, those a script makes included (the online write's compare-and-set is an EVALSHA
    too: take differences)."""
    info = client.info("cpu", "commandstats")
    calls, usec = Counter[str](), Counter[str]()
    for name, stats in info.items():
        if name.startswith("cmdstat_"):
            calls[name.removeprefix("cmdstat_")], usec[name.removeprefix("cmdstat_")] = stats["calls"], stats["usec"]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), calls, usec


class Parts:
    """CPU seconds of this process and wall seconds per named part, summed over the batches."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.redis: dict[str, float] = defaultdict(float)

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        self.cpu[name] += time.process_time() - cpu
        self.wall[name] += time.perf_counter() - wall


def order_payloads(order: Any, events: int, keys: int) -> list[bytes]:
    """A live stream's orders: placed in the last 10 minutes, so ingested now they are all within lateness."""
    rng, now = random.Random(4), datetime.now(UTC)
    payloads = []
    for i in range(events):
        message = order.message_class(
            order_id=f"o{i}",
            user_id=rng.randint(1, keys),
            amount=round(rng.uniform(5, 300), 2),
            status=rng.choice(STATUSES),
        )
        message.event_time.FromDatetime(now - timedelta(seconds=rng.random() * 600))
        payloads.append(message.SerializeToString())
    return payloads


def ingest(args: argparse.Namespace) -> None:
    """The tile step (TileStore.apply_table, as the job calls it) per event beside the entity's own path
    (decode + validate, offline batch, offline write, online write: what `streaming.py cpu` measures), batch
    by batch in one run, on tiles that already hold `--history` orders per key."""
    import redis

    from fstore.schema.attributes import routing_attributes
    from fstore.store.offline.duckdb import DuckDBOfflineStore
    from fstore.store.online.redis import RedisOnlineStore
    from fstore.store.online.tiles import TileStore
    from fstore.testing import RedisServer

    registry, family = bench_registry(args.family)
    order = family.source
    attrs = routing_attributes(order)
    payloads = order_payloads(order, args.events, args.keys)
    parts = Parts()
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        if args.history:
            load(tiles, family, history(args.keys, args.history, time.time_ns() // 1_000))
        online = RedisOnlineStore(server.url)
        offline = DuckDBOfflineStore.from_url(f"duckdb:///{tmp}/offline", registry)
        valid = applied = 0
        script_calls, script_us = Counter[str](), Counter[str]()  # commands during TileStore.apply_table
        publish = datetime.now(UTC)
        for start in range(0, len(payloads), args.batch):
            with parts.timing("decode+validate"):
                decoded = decode_batch(registry, attrs, payloads[start : start + args.batch], start, publish)
            valid += len(decoded)
            messages = [e.message for e in decoded]
            with parts.timing("offline batch (arrow)"):
                table = batch_table(order, decoded)
            with parts.timing("offline write"):
                offline.write(order, table)
            before = redis_stats(client)  # outside the timed parts: INFO is the benchmark's, not the job's
            with parts.timing("online write"):
                online.write(order, messages, [e.publish_micros for e in decoded])
            middle = redis_stats(client)
            with parts.timing("TileStore.apply_table"):  # the job's tile step, from the batch stored offline
                applied += tiles.apply_table(family, table)[0]
            after = redis_stats(client)
            parts.redis["online write"] += middle[0] - before[0]
            parts.redis["TileStore.apply_table"] += after[0] - middle[0]
            script_calls.update(after[1] - middle[1])
            script_us.update(after[2] - middle[2])
        stored = offline.history(order).num_rows
        offline.close()
    evalsha = script_calls["evalsha"]
    if valid != args.events or stored != args.events or applied != args.events or not evalsha:
        raise SystemExit(
            f"benchmark: of {args.events} events {valid} decoded, {stored} stored offline, {applied} applied to "
            f"the tiles in {evalsha} EVALSHA calls; no figures"
        )

    def us(seconds: float) -> str:
        return f"{seconds / args.events * 1e6:7.1f} µs"

    print(
        f"{family.name}: {len(family.features)} features, {len({f.tile for f in family.features})} tile sizes; "
        f"{args.events:,} order events for {args.keys:,} keys in batches of {args.batch:,}, on tiles holding "
        f"{args.history} earlier orders per key; per event:"
    )
    print(f"  {'':<24} {'CPU here':>10} {'Redis CPU':>10} {'wall':>10}")
    for name in parts.cpu:
        in_redis = us(parts.redis[name]) if name in parts.redis else ""
        print(f"  {name:<24} {us(parts.cpu[name]):>10} {in_redis:>10} {us(parts.wall[name]):>10}")
    plain, step = list(parts.cpu)[:4], list(parts.cpu)[4:]
    for label, names in (("entity path (plain)", plain), ("aggregation step", step)):
        cpu, redis_cpu, wall = (sum(d.get(n, 0.0) for n in names) for d in (parts.cpu, parts.redis, parts.wall))
        print(f"  {label:<24} {us(cpu):>10} {us(redis_cpu):>10} {us(wall):>10}")
    total = sum(parts.cpu[n] + parts.redis.get(n, 0.0) for n in step)
    print(
        f"aggregation step, CPU here + in Redis: {us(total).strip()} per event per family (target <= 15 µs); "
        f"the tile script {script_us['evalsha'] / args.events:.1f} µs per event in Redis (commandstats), "
        f"{evalsha:,} EVALSHA calls"
    )
    inside = {c: n for c, n in script_calls.most_common() if c not in ("evalsha", "info", "script|load")}
    print(
        f"  inside the script, {sum(inside.values()) / args.events:.1f} Redis commands per event: "
        + ", ".join(f"{c.upper()} {n / args.events:.2f} ({script_us[c] / n:.1f} µs each)" for c, n in inside.items())
    )


def decode_batch(registry: Registry, attrs: dict[str, str], payloads: list[bytes], start: int, publish: datetime
                 ) -> list[Any]:  # fmt: skip
    """The valid events of one batch of the live stream (message ids numbered from `start`), as the job decodes
    them."""
    from fstore.ingest.events import Event, decode_event

    results = [decode_event(registry, p, attrs, str(LIVE_ID_BASE + start + i), publish) for i, p in enumerate(payloads)]
    return [e for e in results if isinstance(e, Event)]


def batch_table(order: Any, decoded: list[Any]) -> Any:
    """A batch of decoded events as the job stores it offline (and hands it to the tile step)."""
    from fstore.store.offline.schema import messages_to_table

    ingested, ids = [e.ingest_micros for e in decoded], [e.message_id for e in decoded]
    return messages_to_table(order, [e.message for e in decoded], ingested, ids)


def live_tables(family: FamilySpec, registry: Registry, events: int, keys: int, batch: int) -> list[Any]:
    """The `ingest` stream's batches as the job stores them offline."""
    from fstore.schema.attributes import routing_attributes

    attrs, publish = routing_attributes(family.source), datetime.now(UTC)
    payloads = order_payloads(family.source, events, keys)
    return [
        batch_table(family.source, decode_batch(registry, attrs, payloads[start : start + batch], start, publish))
        for start in range(0, len(payloads), batch)
    ]


def script(args: argparse.Namespace) -> None:
    """Instructions the Redis server runs in the tile script per event, counted by valgrind's callgrind: within
    0.4% run after run (the stream's times follow the clock), where CPU time on a shared machine varies by a
    third. The `ingest` stream on the same history: the history is loaded into a Redis and saved; a second
    Redis, under callgrind, starts from that file and folds the stream, counting only inside EVALSHA (the
    script and the commands it calls)."""
    import redis

    from fstore.store.online.tiles import TileStore
    from fstore.testing import RedisServer, free_port, redis_server_binary

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("benchmark: `script` counts instructions with valgrind, which is not installed here")
    registry, family = bench_registry(args.family)
    tables = live_tables(family, registry, args.events, args.keys, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            if args.history:
                load(TileStore(client), family, history(args.keys, args.history, time.time_ns() // 1_000))
            client.save()
            shutil.copy(server.dir / "dump.rdb", Path(tmp) / "dump.rdb")
        port, out = free_port(), Path(tmp) / "callgrind.out"
        command = [valgrind, "--tool=callgrind", "--toggle-collect=evalShaCommand", f"--callgrind-out-file={out}",
                   redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                   "--appendonly", "no"]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, socket_timeout=600)
            deadline = time.monotonic() + 300
            while True:  # under valgrind the server takes seconds to start and to load the file
                try:
                    if client.dbsize() > 0 or not args.history:
                        break
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("benchmark: redis-server under valgrind did not start; no figures")
                time.sleep(0.2)
            version = client.info("server")["redis_version"]
            tiles = TileStore(client)
            started = time.perf_counter()
            applied = sum(tiles.apply_table(family, table)[0] for table in tables)
            took = time.perf_counter() - started
            calls = int(client.info("commandstats")["cmdstat_evalsha"]["calls"])
            process.terminate()  # a clean shutdown: callgrind writes its counts at the exit
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        summary = [line for line in out.read_text().splitlines() if line.startswith("summary:")]
        instructions = int(summary[0].split()[1]) if summary else 0
    if applied != args.events or not instructions:
        raise SystemExit(f"benchmark: {applied} of {args.events} events applied, {instructions} instructions counted; "
                         "no figures")  # fmt: skip
    print(
        f"{family.name}: {args.events:,} order events for {args.keys:,} keys in batches of {args.batch:,}, on tiles "
        f"holding {args.history} earlier orders per key; Redis {version} under callgrind ({took:.0f} s)"
    )
    print(
        f"tile script: {instructions / args.events:,.0f} instructions per event in Redis (inside EVALSHA, the "
        f"commands it calls included), {calls:,} EVALSHA calls"
    )


def memory(args: argparse.Namespace) -> None:
    """Redis memory per key of the family after `--per-key` orders over 30 days: used_memory before and after,
    then without the message-id hashes; MEMORY USAGE of each of a sample of keys' hashes."""
    import redis

    from fstore.store.online.tile_layout import ID_BUCKET
    from fstore.store.online.tiles import TileStore
    from fstore.testing import RedisServer

    _, family = bench_registry(args.family)
    events = history(args.keys, args.per_key, time.time_ns() // 1_000)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        tiles = TileStore(client)
        tiles.apply(family, events[:1])  # loads the script: its memory is no key's
        empty = int(client.info("memory")["used_memory"])
        load(tiles, family, events[1:])
        full = int(client.info("memory")["used_memory"])
        compared = check_reads(tiles, family, events, args.keys, args.check)
        layout = tiles.layout(family)
        now_bucket = time.time_ns() // 1_000 // ID_BUCKET
        usage: dict[str, list[int]] = defaultdict(list)
        fields: dict[str, list[int]] = defaultdict(list)
        for key in random.Random(8).sample(range(1, args.keys + 1), min(args.sample, args.keys)):
            # SAMPLES 0: every member counted, not an estimate from 5 of them
            state = [layout.blob_key(key), layout.last_key(key)]
            usage["state (two strings)"].append(sum(int(client.memory_usage(k, samples=0) or 0) for k in state))
            fields["state (two strings)"].append(sum(int(client.exists(k)) for k in state))
            buckets = [layout.bucket_key(key, b) for b in range(now_bucket - 6, now_bucket + 1)]  # 30 days and more
            usage["message-id sets"].append(sum(int(client.memory_usage(b, samples=0) or 0) for b in buckets))
            fields["message-id sets"].append(sum(int(client.scard(b)) for b in buckets))
        ids = list(client.scan_iter(match="fsi:*", count=10_000))
        for start in range(0, len(ids), 1_000):
            client.delete(*ids[start : start + 1_000])  # not UNLINK: freed now, before used_memory is read
        without_ids = int(client.info("memory")["used_memory"])
    if compared == 0 or full <= empty:
        raise SystemExit("benchmark: nothing was checked or stored; no figures")
    print(
        f"{family.name}: {args.keys:,} keys x {args.per_key} orders over 30 days ({len(events):,} events); "
        f"check: {compared:,} values equal the definition's brute force"
    )
    print(
        f"used_memory: {(full - empty) / args.keys:,.0f} bytes per key in all; "
        f"{(without_ids - empty) / args.keys:,.0f} without the message-id sets, so "
        f"{(full - without_ids) / args.keys:,.0f} for the message ids"
    )
    print(f"MEMORY USAGE per key, SAMPLES 0 (mean of {min(args.sample, args.keys)} keys):")
    for label, unit in (("state (two strings)", "keys"), ("message-id sets", "ids")):
        print(
            f"  {label:<24} {statistics.mean(usage[label]):8,.0f} bytes  {statistics.mean(fields[label]):6.1f} {unit}"
        )


EXPORT_DAYS = 30
BRUTE_FORCE_ROWS = 50  # exported rows also checked against the definition itself (a Python loop per row)


def export_start() -> datetime:
    """Midnight UTC EXPORT_DAYS days ago: the history ends today, whatever the date."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=EXPORT_DAYS)


def generate(args: argparse.Namespace, family: FamilySpec) -> None:
    """`--events` orders of `--users` users over EXPORT_DAYS days, straight into the embedded store's layout (a
    segment per day, then `compact`, as after `fstore compact`), and a spine of `--spine-rows` (user, time)."""
    import duckdb

    marker, data = args.data / "generated.json", args.data
    params = {
        "events": args.events,
        "users": args.users,
        "spine_rows": args.spine_rows,
        "start": str(export_start()),
        "layout": 1,
    }
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"reusing data in {data}")
        return
    shutil.rmtree(data, ignore_errors=True)
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    start = f"TIMESTAMPTZ '{export_start().isoformat()}'"
    per_day, late = args.events // EXPORT_DAYS, family.allowed_lateness + 3_600_000_000
    for day in range(EXPORT_DAYS):
        first, last = day * per_day, (day + 1) * per_day if day < EXPORT_DAYS - 1 else args.events
        partition = (
            data / "offline" / family.source.table_name / f"date={(export_start() + timedelta(days=day)).date()}"
        )
        partition.mkdir(parents=True)
        # hash(i) spreads users and times; ingest 0.1-30 s after the order, 1 in 100 later than allowed (in
        # the history, in no aggregate); Pub/Sub-like message ids, unique per row.
        con.execute(
            f"""COPY (
              SELECT 'o' || i AS order_id,
                {start} + to_microseconds(({day} * {DAY} + hash(i * 7) % {DAY})::BIGINT) AS event_time,
                event_time + to_microseconds(CASE WHEN i % 100 = 0 THEN {late}
                  ELSE 100000 + hash(i * 11) % 29900000 END::BIGINT) AS ingest_time,
                ({MESSAGE_ID_BASE} + i)::VARCHAR AS message_id,
                (1 + hash(i) % {args.users})::BIGINT AS user_id,
                round(5 + (hash(i * 13) % 29500) / 100.0, 2)::DOUBLE AS amount,
                {list(STATUSES)}[(1 + hash(i * 17) % {len(STATUSES)})::BIGINT] AS status
              FROM range({first}, {last}) t(i)
            ) TO '{partition / f"{day:032x}.parquet"}' (FORMAT parquet)"""
        )
    con.execute(
        f"""COPY (
          SELECT i AS row_id, (1 + hash(i * 19) % {args.users})::BIGINT AS user_id,
            {start} + to_microseconds((hash(i * 23) % ({EXPORT_DAYS} * {DAY}))::BIGINT) AS event_timestamp
          FROM range({args.spine_rows}) t(i)
        ) TO '{data / "spine.parquet"}' (FORMAT parquet)"""
    )
    store = offline_store(args, bench_registry(args.family)[0])
    store.compact(family.source)
    store.close()
    marker.write_text(json.dumps(params))
    print(
        f"generated {args.events:,} orders of {args.users:,} users and {args.spine_rows:,} spine rows, "
        f"compacted, in {time.perf_counter() - started:.1f} s"
    )


def offline_store(args: argparse.Namespace, registry: Registry) -> Any:
    from fstore.store.offline.duckdb import DuckDBOfflineStore

    return DuckDBOfflineStore(
        args.data / "offline",
        registry,
        memory_limit=args.memory_limit,
        threads=args.threads,
        temp_directory=args.data / "spill",
    )


def floor_sql(family: FamilySpec, history: str, spine: str) -> str:
    """The same answer written by hand for this data: a range join of the spine on the user's accepted orders
    known at t, then one filtered aggregate per feature over tile numbers. It leans on what the generated data
    guarantees (no backfill, no nulls, one row per message id) and sums in whatever order DuckDB likes."""
    windows = [f.window for f in family.features]
    reach = (
        ""
        if None in windows
        else (f" AND e.ev > s.t - {max(w or 0 for w in windows) + max(f.tile or 0 for f in family.features)}")
    )
    selected = []
    for f in family.features:
        if f.window is None or f.tile is None:
            within = "e.ev IS NOT NULL"
        else:
            within = (
                f"e.ev // {f.tile} > s.t // {f.tile} - {f.window // f.tile} AND e.ev // {f.tile} <= s.t // {f.tile}"
            )
        value = "" if f.field is None else f"e.{f.field.name}"
        aggregate = {
            "count": f"count(*) FILTER (WHERE {within})",
            "sum": f"coalesce(sum({value}) FILTER (WHERE {within}), 0)",
            "mean": f"avg({value}) FILTER (WHERE {within})",
            "min": f"min({value}) FILTER (WHERE {within})",
            "max": f"max({value}) FILTER (WHERE {within})",
            "last": f"arg_max({value}, {{'t': e.ev, 'i': e.ing, 'm': e.message_id}}) FILTER (WHERE {within})",
        }[f.function]
        selected.append(f"{aggregate} AS {family.name}__{f.name}")
    return f"""
      WITH e AS (
        SELECT *, epoch_us(event_time) AS ev, epoch_us(ingest_time) AS ing FROM read_parquet('{history}')
        WHERE epoch_us(ingest_time) - epoch_us(event_time) <= {family.allowed_lateness}
      ), s AS (SELECT row_id, user_id, epoch_us(event_timestamp) AS t FROM read_parquet('{spine}'))
      SELECT s.row_id, {", ".join(selected)}
      FROM s LEFT JOIN e ON e.user_id = s.user_id AND e.ing <= s.t{reach}
      GROUP BY s.row_id"""


def run_floor(args: argparse.Namespace, family: FamilySpec) -> dict[str, float]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"SET memory_limit='{args.memory_limit}'")
    con.execute(f"SET temp_directory='{args.data / 'spill'}'")
    if args.threads:
        con.execute(f"SET threads={args.threads}")
    history = args.data / "offline" / family.source.table_name / "*" / "*.parquet"
    started, cpu = time.perf_counter(), process_cpu()
    sql = floor_sql(family, str(history), str(args.data / "spine.parquet"))
    con.execute(f"COPY ({sql}) TO '{args.data / 'floor.parquet'}' (FORMAT parquet)")
    seconds, cpu = time.perf_counter() - started, process_cpu() - cpu
    (rows,) = con.execute(f"SELECT count(*) FROM '{args.data / 'floor.parquet'}'").fetchone() or (0,)
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": rows}


def run_fstore(args: argparse.Namespace, family: FamilySpec) -> dict[str, float]:
    from fstore.store.offline.manifest import ExportOptions

    store = offline_store(args, bench_registry(args.family)[0])
    started, cpu = time.perf_counter(), process_cpu()
    out = args.data / "train.parquet"
    manifest = store.export_training_set(
        args.data / "spine.parquet", [f"{family.name}:*"], out, ExportOptions(progress=False)
    )
    seconds, cpu = time.perf_counter() - started, process_cpu() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": manifest["output"]["rows"]}


def process_cpu() -> float:
    """CPU seconds of this process so far, DuckDB's threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compare_exports(args: argparse.Namespace, family: FamilySpec) -> int:
    """fstore's training set against the floor's, row by row and feature by feature (floats to 1e-9: the
    floor sums in any order), then a sample of rows against the brute force; the rows compared."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    train, floor = args.data / "train.parquet", args.data / "floor.parquet"
    differs = []
    for f in family.features:
        column = f"{family.name}__{f.name}"
        if f.function in ("mean", "sum") and f.field is not None and f.field.kind in ("float", "double"):
            close = f"abs(a.{column} - b.{column}) <= 1e-9 * greatest(abs(b.{column}), 1)"
            test = f"a.{column} IS DISTINCT FROM b.{column} AND NOT coalesce({close}, false)"
        else:
            test = f"a.{column} IS DISTINCT FROM b.{column}"
        differs.append(f"count(*) FILTER (WHERE {test})")
    row = con.execute(
        f"SELECT count(*), count(b.row_id), {', '.join(differs)} FROM '{train}' a LEFT JOIN '{floor}' b USING (row_id)"
    ).fetchone()
    assert row is not None
    if row[0] != args.spine_rows or row[1] != args.spine_rows or any(row[2:]):
        bad = {f.name: n for f, n in zip(family.features, row[2:], strict=True) if n}
        raise SystemExit(
            f"benchmark: fstore and the floor disagree ({row[0]} and {row[1]} of {args.spine_rows} "
            f"rows; rows differing per feature: {bad}); no figures"
        )
    cursor = con.execute(f"SELECT * FROM '{train}' USING SAMPLE {BRUTE_FORCE_ROWS} ROWS (reservoir, 9)")
    names = [d[0] for d in cursor.description]
    sample = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    history = args.data / "offline" / family.source.table_name / "*" / "*.parquet"
    for spine_row in sample:
        orders = con.execute(
            f"SELECT epoch_us(event_time), epoch_us(ingest_time), message_id, amount, status "
            f"FROM read_parquet('{history}') WHERE user_id = ?",
            [spine_row["user_id"]],
        ).fetchall()
        events = [
            TileEvent(spine_row["user_id"], ev, ing, m, False, {"amount": a, "status": st})
            for ev, ing, m, a, st in orders
        ]
        t = int(spine_row["event_timestamp"].timestamp() * 1_000_000)
        for f in family.features:
            want, got = brute_force(family, f, events, t), spine_row[f"{family.name}__{f.name}"]
            if not same(got, want):
                raise SystemExit(
                    f"benchmark: row {spine_row['row_id']} {f.name} is {got!r}, the definition says "
                    f"{want!r}; no figures"
                )
    return int(row[0])


def export_child(args: argparse.Namespace) -> None:
    _, family = bench_registry(args.family)
    result = (run_floor if args.child == "floor" else run_fstore)(args, family)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def export(args: argparse.Namespace) -> None:
    """`fstore export` of the family (DuckDBOfflineStore.export_training_set) beside a hand-written DuckDB
    query for the same answer, each in its own subprocess so its peak RSS is its own."""
    if args.child:
        export_child(args)
        return
    _, family = bench_registry(args.family)
    args.users = args.users or max(1, args.events // 50)
    generate(args, family)
    results = {}
    for which in ("floor", "fstore"):
        command = [sys.executable, __file__, "export", "--child", which, "--data", str(args.data)]
        command += ["--family", args.family, "--memory-limit", args.memory_limit]
        if args.threads:
            command += ["--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[which] = json.loads(output.strip().splitlines()[-1])
        if results[which]["rows"] != args.spine_rows:
            raise SystemExit(f"benchmark: {which} wrote {results[which]['rows']} rows for {args.spine_rows}")
    compared = compare_exports(args, family)
    print(
        f"{family.name}:* ({len(family.features)} features) for {args.spine_rows:,} spine rows over "
        f"{args.events:,} orders of {args.users:,} users; check: all {compared:,} rows equal the floor's, "
        f"{BRUTE_FORCE_ROWS} the definition's brute force"
    )
    for which, result in results.items():
        print(
            f"{which:>6}: {result['seconds']:6.2f} s wall  {result['cpu_seconds']:6.2f} s CPU  "
            f"{args.spine_rows / result['seconds']:10,.0f} spine rows/s  peak RSS {result['peak_rss_mb']:6,.0f} MB"
        )
    ratio = results["fstore"]["seconds"] / results["floor"]["seconds"]
    cpu_ratio = results["fstore"]["cpu_seconds"] / results["floor"]["cpu_seconds"]
    print(f"fstore / floor = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU; memory_limit {args.memory_limit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    commands = {"read": read, "ingest": ingest, "script": script, "memory": memory, "export": export}
    parsers = {name: sub.add_parser(name, help=command.__doc__) for name, command in commands.items()}
    for name, p in parsers.items():
        p.add_argument("--family", default="bench_orders", help="bench_orders (built here) or user_orders")
        if name in ("read", "memory"):
            p.add_argument("--keys", type=int, default=10_000)
            p.add_argument("--per-key", type=int, default=50, help="orders per key over 30 days")
            p.add_argument("--check", type=int, default=200, help="keys checked against the brute force")
    p = parsers["read"]
    p.add_argument("--reads", type=int, default=3_000, help="timed reads of 1 key")
    p.add_argument("--reads-100", type=int, default=1_000, help="timed reads of 100 keys")
    p.add_argument("--warmup", type=int, default=100, help="untimed reads before each size")
    for name in ("ingest", "script"):
        p = parsers[name]
        p.add_argument("--events", type=int, default=100_000)
        p.add_argument("--keys", type=int, default=10_000)
        p.add_argument("--batch", type=int, default=1_000, help="events per flush (the job's FLUSH_EVERY)")
        p.add_argument("--history", type=int, default=50, help="orders per key in the tiles beforehand (0: none)")
    parsers["memory"].add_argument("--sample", type=int, default=500, help="keys whose hashes MEMORY USAGE reads")
    p = parsers["export"]
    p.add_argument("--spine-rows", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000, help="orders in the history")
    p.add_argument("--users", type=int, default=0, help="default: --events / 50")
    p.add_argument("--data", type=Path, default=Path("/tmp/fstore-bench-aggregations"))
    p.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit for both runs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", choices=["floor", "fstore"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    commands[args.what](args)


if __name__ == "__main__":
    main()
