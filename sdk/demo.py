"""`fstore demo`: the README's end-to-end tour, on real local services it starts (and stops) itself.

Every step runs the same `fstore` commands a user would type, so the demo never drifts from the CLI.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from fstore.testing import PubSubEmulator, RedisServer, ServiceUnavailable, free_port

USERS = 50
EVENTS_PER_USER = 4
# Events span the two weeks before today (the user entity's TTL is 30 days), so they are live online.
T0 = (datetime.now(UTC) - timedelta(days=14)).replace(hour=0, minute=0, second=0, microsecond=0)


def _step(n: int, text: str) -> None:
    typer.secho(f"\n{n}. {text}", bold=True)


def _fstore(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fstore.cli", *args]
    typer.secho(f"   $ fstore {' '.join(args)}", fg=typer.colors.CYAN)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        typer.echo("\n".join("   " + line for line in out.splitlines()[:40]))
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `fstore {' '.join(args)}` failed with exit code {proc.returncode}")
    return proc


def sample_events(path: Path, users: int = USERS) -> tuple[Path, dict[int, dict[str, object]]]:
    """JSONL user events (protobuf JSON mapping); the newest event per user is published FIRST, so the
    online store must keep it against the older ones that arrive after it. Returns the expected latest."""
    rng = random.Random(7)
    lines, latest = [], {}
    for user_id in range(1, users + 1):
        events = []
        for k in range(EVENTS_PER_USER):
            event_time = T0 + timedelta(days=k * 3, hours=user_id % 24)
            events.append(
                {
                    "userId": str(user_id),
                    "eventTime": event_time.isoformat().replace("+00:00", "Z"),
                    "age": 20 + user_id % 50,
                    "country": rng.choice(["JP", "FR", "DE", "US", "BR"]),
                    "isPremium": k % 2 == 1,
                    "lifetimeOrders": str(k * 3 + user_id % 7),
                    "avgOrderValue": round(rng.uniform(5, 200), 2),
                    "favoriteCategories": rng.sample(["books", "games", "garden", "music", "toys"], 2),
                    "embedding": [round(rng.uniform(-1, 1), 3) for _ in range(16)],
                }
            )
        latest[user_id] = events[-1]
        lines += [events[-1], *events[:-1]]  # newest first: out of order on purpose
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path, latest


@contextmanager
def _background(name: str, args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fstore.cli", *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    typer.secho(f"   started {name} (pid {proc.pid}, log {log})", fg=typer.colors.CYAN)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def _wait_online(user_ids: list[int], expected_country: dict[int, object], timeout: float) -> float:
    from fstore.store import FeatureStore

    start = time.monotonic()
    with FeatureStore.from_config() as fs:
        while time.monotonic() - start < timeout:
            rows = fs.get_online("user", user_ids, features=["country"])
            if all(r is not None and r["country"] == expected_country[i] for i, r in zip(user_ids, rows, strict=True)):
                return time.monotonic() - start
            time.sleep(0.2)
    raise SystemExit(f"demo: online values did not appear within {timeout:.0f} s (see the ingest log)")


def demo(out: Path = typer.Option(Path("demo-out"), help="Where the demo writes its data and logs.")) -> None:
    """Run the end-to-end demo (starts its own Redis and Pub/Sub emulator).

    Codegen check, stack up, publish, stream-ingest, read online (Python, CLI, HTTP), dead letters, a
    point-in-time training set, and a window aggregation family live online and in a training set."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with ExitStack() as stack:
        _step(1, "Schemas are the contract: generated clients and docs are up to date")
        _fstore("codegen", "--check")
        _fstore("schema", "check", check=False)

        _step(2, "Stack up: a real Redis and the real Pub/Sub emulator, on free ports")
        redis = stack.enter_context(RedisServer())
        os.environ["FSTORE_REDIS_URL"] = redis.url
        os.environ["FSTORE_OFFLINE"] = f"duckdb:///{(out / 'offline').resolve()}"
        os.environ["FSTORE_DATA_DIR"] = str((out / ".fstore").resolve())
        typer.echo(f"   Redis at {redis.url}; offline store {os.environ['FSTORE_OFFLINE']}")
        try:
            emulator = stack.enter_context(PubSubEmulator())
        except ServiceUnavailable as exc:
            raise SystemExit(f"demo: {exc}") from None
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        typer.echo(f"   Pub/Sub emulator at {emulator.host}")

        _step(3, "Start the streaming Beam job (Pub/Sub -> validate -> Redis + offline + dead letters)")
        stack.enter_context(_background("fstore ingest stream", ["ingest", "stream"], out / "ingest.log"))

        _step(4, f"Publish {USERS * EVENTS_PER_USER} user events (newest first per user) with the generated client")
        events, latest = sample_events(out / "events.jsonl")
        _fstore("publish", "--entity", "user", "--file", str(events))
        ids = sorted(latest)
        took = _wait_online(ids, {i: latest[i]["country"] for i in ids}, timeout=180)
        typer.echo(f"   all {len(ids)} users readable online {took:.1f} s after publishing; latest by event time won")

        typer.secho("   A producer built from another schema, and one that forgot the key, publish too:", fg="cyan")
        _publish_bad_events()
        _wait_dead_letters(2, timeout=60)
        _fstore("dead-letters")

        _step(5, "Read features online: Python, CLI, HTTP")
        from fstore.store import FeatureStore

        with FeatureStore.from_config() as fs:
            row = fs.get_online("user", [1], features=["age", "country", "is_premium"])[0]
        typer.echo(f"   fs.get_online('user', [1], features=[...]) -> {row}")
        _fstore("online", "get", "user", "1", "2", "3", "--features", "age,country,lifetime_orders")
        port = free_port()
        stack.enter_context(
            _background("fstore serve", ["serve", "--host", "127.0.0.1", "--port", str(port)], out / "api.log")
        )
        url = f"http://127.0.0.1:{port}/v1/online/user?id=1&id=2&features=age,country"
        typer.echo(f"   GET {url}")
        typer.echo(f"   -> {_http_get(url, timeout=60)}")

        _step(6, "Export a point-in-time-correct training set (spine: user ids + timestamps + labels)")
        spine = _write_spine(out / "spine.parquet")
        _fstore(
            "export", "--spine", str(spine), "--features", "user:age,user:country,user:lifetime_orders",
            "--out", str(out / "train.parquet"),
        )  # fmt: skip
        _fstore("ledger")

        _step(7, "Window aggregations: user_orders (declared with the order schema), online and in a training set")
        _aggregations_live(out)
    typer.secho(f"\nDemo done. Data and logs are in {out}/", fg=typer.colors.GREEN, bold=True)
    typer.echo(
        f"Its Redis and emulator are stopped. Its history: FSTORE_OFFLINE=duckdb:///{out}/offline fstore ledger\n"
        "A stack that stays up, for your own data: fstore up (README: Your own feature repo)."
    )


ORDER_WAVES = ({1: [12.5, 30.0, 7.25], 2: [99.0]}, {1: [40.0], 3: [5.5, 5.5]})
AGGREGATES = ["order_count_1h", "amount_sum_7d", "amount_max_30d", "last_status"]


def _aggregations_live(out: Path) -> None:
    """Two waves of orders; after each, the family read online; then an export at that moment, which gives
    the same values (docs/aggregations.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.ingest.publish import EventPublisher
    from fstore.ingest.pubsub import topic_path
    from fstore.store import FeatureStore

    with FeatureStore.from_config() as fs:
        order = fs.spec("order")
        publisher = EventPublisher(order, topic_path(fs.settings, "order"))
        sent: dict[int, list[float]] = {}
        for wave, orders in enumerate(ORDER_WAVES, start=1):
            now = datetime.now(UTC)
            futures = []
            for user, amounts in orders.items():
                for n, amount in enumerate(amounts):
                    message = order.message_class(
                        order_id=f"w{wave}-u{user}-{n}", user_id=user, amount=amount, status=f"paid-{wave}"
                    )
                    message.event_time.FromDatetime(now - timedelta(minutes=10 + n))  # type: ignore[attr-defined]
                    futures.append(publisher.publish(message))
                sent.setdefault(user, []).extend(amounts)
            for f in futures:
                f.result()
            rows = _wait_aggregates(fs, {u: len(a) for u, a in sent.items()}, timeout=60)
            typer.echo(f"   after wave {wave}: fs.get_online('user_orders', [1, 2, 3])")
            for row in rows:
                typer.echo(f"     {row}")
        spine = out / "order-spine.parquet"
        moment = datetime.now(UTC)
        online = fs.get_online("user_orders", [1, 2, 3], features=AGGREGATES)
        table = pa.table({"user_id": pa.array([1, 2, 3], pa.int64()), "event_timestamp": [moment] * 3})
        pq.write_table(table, spine)
    features = ",".join(f"user_orders:{f}" for f in AGGREGATES)
    _fstore("export", "--spine", str(spine), "--features", features, "--out", str(out / "orders-train.parquet"))
    exported = pq.read_table(out / "orders-train.parquet").to_pylist()
    pairs = [
        (row[f"user_orders__{f}"], (o or {}).get(f))
        for row, o in zip(exported, online, strict=True)
        for f in AGGREGATES
    ]
    if not all(_same(exported_value, online_value) for exported_value, online_value in pairs):
        raise SystemExit(f"demo: the export at {moment} differs from the online values: {exported} vs {online}")
    typer.echo(f"   the training set at {moment:%H:%M:%S} holds exactly the online values ({len(AGGREGATES)} features)")


def _same(exported: object, online: object) -> bool:
    if isinstance(exported, float) and isinstance(online, float):
        return abs(exported - online) <= 1e-9 * max(1.0, abs(online))
    return exported == online


def _wait_aggregates(fs: object, counts: dict[int, int], timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    users = sorted({1, 2, 3} | set(counts))
    while True:
        rows = fs.get_online("user_orders", users, features=AGGREGATES)  # type: ignore[attr-defined]
        if all(r["order_count_1h"] == counts.get(r["user_id"], 0) for r in rows):
            return list(rows)
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: the orders did not reach user_orders within {timeout:.0f} s (see the ingest log)")
        time.sleep(0.2)


def _publish_bad_events() -> None:
    from fstore.ingest.publish import EventPublisher
    from fstore.ingest.pubsub import topic_path
    from fstore.schema.attributes import ATTR_FINGERPRINT
    from fstore.schema.registry import Registry
    from fstore.settings import load_settings

    settings = load_settings()
    spec = Registry.default().get("user")
    publisher = EventPublisher(spec, topic_path(settings, "user"))
    stale = spec.message_class(user_id=7, age=30)
    stale.event_time.GetCurrentTime()  # type: ignore[attr-defined]
    no_key = spec.message_class(age=41)
    no_key.event_time.GetCurrentTime()  # type: ignore[attr-defined]
    publisher.publish(stale, overrides={ATTR_FINGERPRINT: "0123456789abcdef"}).result()
    publisher.publish(no_key).result()


def _wait_dead_letters(count: int, timeout: float) -> None:
    from fstore.store import FeatureStore

    deadline = time.monotonic() + timeout
    with FeatureStore.from_config() as fs:
        while fs.offline.dead_letters().num_rows < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: {count} dead letters did not appear within {timeout:.0f} s")
            time.sleep(0.2)


def _http_get(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the read API did not answer {url}") from None
            time.sleep(0.2)


def _write_spine(path: Path) -> Path:
    """Training examples: a user id, the moment of the label, and the label. Some moments precede every
    event of their user (their features must come out null: nothing was known yet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(11)
    ids, stamps, labels = [], [], []
    for _ in range(200):
        ids.append(rng.randint(1, USERS + 5))  # a few unknown users: nulls
        stamps.append(T0 + timedelta(days=rng.uniform(-2, 12)))
        labels.append(rng.random() < 0.3)
    table = pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "event_timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "clicked": labels,
        }
    )
    pq.write_table(table, path)
    return path


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
