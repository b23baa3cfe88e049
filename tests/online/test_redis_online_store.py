"""The Redis online store against a real Redis: event-time compare-and-set, TTL by event time, errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fstore.cli import app
from fstore.errors import InvalidIdError, StoreUnavailableError, UnknownEntityError, UnknownFeatureError
from fstore.schema.registry import EntitySpec, Registry
from fstore.settings import RedisSettings
from fstore.store import FeatureStore
from fstore.store.online.redis import COMPARE_AND_SET, RedisOnlineStore, _evalsha_head, _pack_evalsha, row_key
from fstore.testing import RedisServer

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def user(spec: EntitySpec, user_id: int, when: datetime, **features: object) -> Message:
    message = spec.message_class(user_id=user_id, **features)
    message.event_time.FromDatetime(when)
    return message


@pytest.fixture
def spec(registry: Registry) -> EntitySpec:
    return registry.get("user")


@pytest.fixture
def store(redis_url: str) -> RedisOnlineStore:
    online = RedisOnlineStore(redis_url)
    yield online
    online.close()


def countries(store: RedisOnlineStore, spec: EntitySpec, ids: list[int]) -> list[str | None]:
    return [r["country"] if r else None for r in store.read(spec, ids, (spec.feature("country"),))]


@pytest.mark.parametrize(
    ("key", "value", "event", "publish", "expires_ms"),
    [
        (b"fs:user:v1:7", b"\x00\r\n\xff" * 40, 1_772_000_000_123_456, 1_772_000_000_200_000, 1_774_592_000_123),
        (b"k", b"", 0, 0, 0),
    ],
)
def test_hand_packed_evalsha_is_what_redis_py_packs(
    key: bytes, value: bytes, event: int, publish: int, expires_ms: int
) -> None:
    sha = hashlib.sha1(COMPARE_AND_SET).hexdigest()
    packed = _pack_evalsha(_evalsha_head(sha), key, value, event, publish, expires_ms)
    expected = redis.Connection().pack_command("EVALSHA", sha, 1, key, value, event, publish, expires_ms)
    assert packed == b"".join(expected)


def test_out_of_order_events_leave_the_newest(store: RedisOnlineStore, spec: EntitySpec) -> None:
    newest = user(spec, 1, T0 + timedelta(days=40), country="JP", age=31)
    older = user(spec, 1, T0 + timedelta(days=39), country="FR", age=30)
    now = datetime.now(UTC)
    newest.event_time.FromDatetime(now)
    older.event_time.FromDatetime(now - timedelta(hours=1))
    assert store.write(spec, [newest]).written == 1
    result = store.write(spec, [older])
    assert (result.written, result.stale) == (0, 1)
    [row] = store.read(spec, [1], spec.select(None))
    assert row is not None
    assert row["country"] == "JP" and row["age"] == 31 and row["user_id"] == 1
    assert row["event_time"] == now.replace(microsecond=now.microsecond)


def test_duplicates_are_idempotent(store: RedisOnlineStore, spec: EntitySpec) -> None:
    now = datetime.now(UTC)
    event = user(spec, 7, now, country="DE")
    assert store.write(spec, [event], [1_000]).written == 1
    before = store._client.get(row_key(spec, 7))
    again = store.write(spec, [event, event], [1_000, 1_000])
    assert (again.written, again.stale) == (0, 2)
    assert store._client.get(row_key(spec, 7)) == before


def test_same_event_time_later_publish_wins(store: RedisOnlineStore, spec: EntitySpec) -> None:
    now = datetime.now(UTC)
    store.write(spec, [user(spec, 3, now, country="A")], [2_000])
    store.write(spec, [user(spec, 3, now, country="B")], [1_000])  # published earlier: loses the tie
    assert countries(store, spec, [3]) == ["A"]
    store.write(spec, [user(spec, 3, now, country="C")], [3_000])
    assert countries(store, spec, [3]) == ["C"]


def test_concurrent_writers_leave_the_max_event_time(redis_url: str, spec: EntitySpec) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ids = list(range(1, 201))
    # Writer A sends even offsets ascending, writer B odd offsets descending, both racing on every id.
    batches = {
        "a": [[user(spec, i, now - timedelta(seconds=60 - k), country=f"a{k}") for i in ids] for k in range(0, 60, 2)],
        "b": [
            [user(spec, i, now - timedelta(seconds=60 - k), country=f"b{k}") for i in ids]
            for k in reversed(range(1, 61, 2))
        ],
    }
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        store = RedisOnlineStore(redis_url)
        barrier.wait()
        for batch in batches[name]:
            store.write(spec, batch)
        store.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = RedisOnlineStore(redis_url)
    assert countries(reader, spec, ids) == ["b59"] * len(ids)  # offset 59: the max event time, from writer B
    reader.close()


def test_ttl_follows_event_time(store: RedisOnlineStore, spec: EntitySpec) -> None:
    ttl = timedelta(seconds=spec.ttl_seconds)
    now = datetime.now(UTC)
    almost_expired = user(spec, 10, now - ttl + timedelta(seconds=1.5), country="JP")
    long_expired = user(spec, 11, now - ttl - timedelta(days=1), country="FR")
    fresh = user(spec, 12, now, country="DE")
    result = store.write(spec, [almost_expired, long_expired, fresh])
    assert (result.written, result.expired) == (2, 1)
    assert countries(store, spec, [10, 11, 12]) == ["JP", None, "DE"]
    pttl = store._client.pttl(row_key(spec, 12))
    assert abs(pttl - ttl.total_seconds() * 1000) < 60_000  # expires event time + TTL from now
    time.sleep(2.0)
    assert countries(store, spec, [10, 11, 12]) == [None, None, "DE"]


def test_item_without_ttl_never_expires(store: RedisOnlineStore, registry: Registry) -> None:
    item = registry.get("item")
    message = item.message_class(item_id="sku-1", price=9.5, tags=["a"])
    message.event_time.FromDatetime(T0 - timedelta(days=3650))
    assert store.write(item, [message]).written == 1
    assert store._client.pttl(row_key(item, "sku-1")) == -1
    [row] = store.read(item, ["sku-1", "nope"], item.select(["price", "tags"]))[:1]
    assert row == {"item_id": "sku-1", "event_time": T0 - timedelta(days=3650), "price": 9.5, "tags": ["a"]}


def test_feature_store_errors_name_the_problem(redis_url: str) -> None:
    with FeatureStore.from_config() as fs:
        with pytest.raises(UnknownEntityError, match="'shipment'"):
            fs.get_online("shipment", [1])
        with pytest.raises(UnknownFeatureError, match="'height'"):
            fs.get_online("user", [1], features=["height"])
        with pytest.raises(InvalidIdError, match="int64"):
            fs.get_online("user", ["1"])
        with pytest.raises(InvalidIdError, match="string"):
            fs.get_online("item", [1])
        assert fs.get_online("user", [1, 2], features=["age"]) == [None, None]


def test_get_online_selects_features_and_keeps_order(redis_url: str) -> None:
    with FeatureStore.from_config() as fs:
        spec = fs.spec("user")
        now = datetime.now(UTC)
        fs.write_online("user", [user(spec, i, now, age=20 + i, country="JP") for i in (1, 2, 3)])
        rows = fs.get_online("user", [3, 99, 1], features=["age"], version=1)
        assert rows == [{"user_id": 3, "event_time": rows[0]["event_time"], "age": 23}, None, rows[2]]
        assert rows[2] is not None and rows[2]["age"] == 21


@pytest.mark.anyio
async def test_async_read_matches_sync(redis_url: str) -> None:
    with FeatureStore.from_config() as fs:
        spec = fs.spec("user")
        fs.write_online("user", [user(spec, 5, datetime.now(UTC), age=50, favorite_categories=["x"])])
        sync_rows = fs.get_online("user", [5, 6])
        async_rows = await fs.get_online_async("user", [5, 6])
        assert async_rows == sync_rows and async_rows[0] is not None
        assert await fs.online.ping_async()
        await fs.online.aclose()  # type: ignore[attr-defined]


def test_redis_going_away_is_a_clear_error_and_no_garbage(spec: EntitySpec) -> None:
    server = RedisServer()
    server.start()
    try:
        store = RedisOnlineStore(server.url, RedisSettings(write_retry_seconds=0.5, socket_timeout=0.5))
        now = datetime.now(UTC)
        store.write(spec, [user(spec, i, now, country="JP") for i in range(100)])
        server.stop()
        assert not store.ping()
        with pytest.raises(StoreUnavailableError, match=r"Redis at redis://127\.0\.0\.1:\d+/0 is unavailable"):
            store.read(spec, [1], spec.select(None))
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.write(spec, [user(spec, 1, now, country="XX")])
        assert time.monotonic() - started < 5

        # A write that starts while Redis is down completes once it is back (retry), scripts reloaded.
        store = RedisOnlineStore(server.url, RedisSettings(write_retry_seconds=20, socket_timeout=0.5))
        restart = threading.Timer(1.0, server.start)
        restart.start()
        result = store.write(spec, [user(spec, i, now, country="FR") for i in range(100)])
        restart.join()
        assert result.written == 100
        assert countries(store, spec, list(range(100))) == ["FR"] * 100
        store.close()
    finally:
        server.stop()


def test_password_is_not_shown_in_errors(spec: EntitySpec) -> None:
    store = RedisOnlineStore("redis://ops:s3cret@127.0.0.1:1/0", RedisSettings(connect_timeout=0.2))
    with pytest.raises(StoreUnavailableError) as info:
        store.read(spec, [1], spec.select(None))
    assert "s3cret" not in str(info.value) and "ops:***@" in str(info.value)


def test_embedded_redis_when_no_url_is_configured(tmp_path: Path, spec: EntitySpec) -> None:
    first = RedisOnlineStore.embedded(tmp_path / "data")
    first.write(spec, [user(spec, 1, datetime.now(UTC), country="JP")])
    second = RedisOnlineStore.embedded(tmp_path / "data")  # another user of the same data dir sees it
    assert countries(second, spec, [1]) == ["JP"]
    assert second._client.info("server")["redis_version"].startswith("6.2")  # the Lua must stay 6.2-compatible
    pid = first._embedded.pid
    first.close()
    assert process_alive(pid)  # the other store still uses it
    second.close()
    deadline = time.monotonic() + 15
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(pid), "the embedded Redis outlived its last store"


def process_alive(pid: int) -> bool:
    """Whether a process has not exited (a zombie, exited and not reaped yet, has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_cli_online_get(redis_url: str) -> None:
    with FeatureStore.from_config() as fs:
        spec = fs.spec("user")
        fs.write_online("user", [user(spec, 1, T0 + timedelta(days=3650), age=33, country="JP")])
    runner = CliRunner()
    result = runner.invoke(app, ["online", "get", "user", "1", "2", "--features", "age,country", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["entity"] == "user" and body["version"] == 1
    assert body["rows"][0] == {"user_id": 1, "event_time": "2036-10-29T00:00:00Z", "age": 33, "country": "JP"}
    assert body["rows"][1] is None
    table = runner.invoke(app, ["online", "get", "user", "1", "2"])
    assert table.exit_code == 0 and "JP" in table.stdout and "2 (missing)" in table.stdout
    bad = runner.invoke(app, ["online", "get", "user", "abc"])
    assert bad.exit_code != 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(st.integers(1, 5), st.integers(0, 20), st.integers(0, 3), st.integers(0, 10**6)),
        min_size=1,
        max_size=60,
    ),
    cuts=st.lists(st.integers(1, 60), max_size=5),
)
def test_any_interleaving_equals_max_by_event_time(
    redis_url: str, spec: EntitySpec, events: list[tuple[int, int, int, int]], cuts: list[int]
) -> None:
    """Whatever order and batching, each id holds the event with the max (event time, publish time)."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    store = RedisOnlineStore(redis_url)
    now = datetime.now(UTC).replace(microsecond=0)
    messages = [user(spec, i, now - timedelta(minutes=m), lifetime_orders=v) for i, m, _, v in events]
    publish = [p for _, _, p, _ in events]
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    for lo, hi in itertools.pairwise(bounds):
        store.write(spec, messages[lo:hi], publish[lo:hi])
    expected: dict[int, tuple[int, int, int]] = {}
    for i, m, p, v in events:
        rank = (-m, p, v)
        if i not in expected or rank[:2] > expected[i][:2]:
            expected[i] = rank
    rows = store.read(spec, [1, 2, 3, 4, 5], (spec.feature("lifetime_orders"),))
    for entity_id, row in zip([1, 2, 3, 4, 5], rows, strict=True):
        if entity_id not in expected:
            assert row is None
        else:
            assert row is not None
            # equal (event time, publish time): the first one written stays (a replay changes nothing)
            first = next(v for i, m, p, v in events if i == entity_id and (-m, p) == expected[entity_id][:2])
            assert row["lifetime_orders"] == first
    store.close()
    client.close()


def test_acl_user_with_password(redis_url: str, spec: EntitySpec, registry: Registry) -> None:
    """A least-privilege ACL user (Memorystore AUTH / Redis 6 ACLs), as docs/online-store.md gives it: only
    fstore's keys and the commands it uses, for rows and for an aggregation family's tiles (their script runs
    its commands as that user)."""
    from fstore.store.online.tiles import TileEvent, TileStore

    admin = redis.Redis.from_url(redis_url)
    admin.execute_command(
        "ACL", "SETUSER", "ingest", "on", ">s3cret", "~fs:*", "~fsa:*", "~fsl:*", "~fsi:*", "-@all",
        "+evalsha", "+eval", "+script|load", "+mget", "+get", "+ping", "+set",
        "+getrange", "+setrange", "+append", "+sadd", "+srem", "+del", "+pexpireat", "+scan",
    )  # fmt: skip
    try:
        host_port = redis_url.removeprefix("redis://")
        store = RedisOnlineStore(f"redis://ingest:s3cret@{host_port}")
        assert store.write(spec, [user(spec, 1, datetime.now(UTC), country="JP")]).written == 1
        assert countries(store, spec, [1]) == ["JP"]
        family, tiles = registry.family("user_orders"), TileStore.beside(store)
        now = time.time_ns() // 1_000
        orders = [TileEvent(7, now - i * 60_000_000, now, f"{i + 1}", False, {"amount": 2.0, "status": "paid"})
                  for i in range(30)]  # fmt: skip
        assert tiles.apply(family, orders, now_us=now) == (30, 0)
        assert tiles.apply(family, orders, now_us=now) == (0, 0)  # the ids are known: nothing folds twice
        assert tiles.read(family, [7], now)[0]["last_status"] == "paid"
        assert tiles.drop_other_layouts(family) == 0
        tiles.close()
        store.close()
        wrong = RedisOnlineStore(f"redis://ingest:nope@{host_port}", RedisSettings(write_retry_seconds=0))
        with pytest.raises(StoreUnavailableError, match=r"ingest:\*\*\*@.*(?i:invalid|wrongpass)"):
            wrong.read(spec, [1], spec.select(None))
    finally:
        admin.execute_command("ACL", "DELUSER", "ingest")
        admin.close()


def test_tls_rediss_url(tmp_path: Path, spec: EntitySpec) -> None:
    """`rediss://` (Memorystore with in-transit encryption): a real TLS Redis with a self-signed CA."""
    import shutil
    import subprocess

    from fstore.testing import free_port, redis_server_binary

    if not shutil.which("openssl"):
        pytest.skip("openssl not found: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", tmp_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        store = RedisOnlineStore(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
        deadline = time.monotonic() + 10
        while not store.ping():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip("this redis-server cannot serve TLS")
            time.sleep(0.05)
        assert store.write(spec, [user(spec, 9, datetime.now(UTC), country="FR")]).written == 1
        assert countries(store, spec, [9]) == ["FR"]
        store.close()
        # An unknown CA is refused: TLS is verified, not just encrypted.
        untrusted = RedisOnlineStore(f"rediss://127.0.0.1:{port}/0", RedisSettings(write_retry_seconds=0))
        with pytest.raises(StoreUnavailableError):
            untrusted.read(spec, [9], spec.select(None))
    finally:
        server.terminate()
        server.wait()
