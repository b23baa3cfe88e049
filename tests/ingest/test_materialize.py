"""`fstore materialize` against a real Redis (and a real Redis Cluster) and the DuckDB store: online ends up
with each key's latest row (event time, then ingest time, then message id; each message id once) within
its TTL, written through a compare-and-set, byte for byte what the message path writes; the history is
only read; bad options are one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from google.protobuf.message import Message
from typer.testing import CliRunner

from fstore.cli import app
from fstore.ingest.materialize import materialize
from fstore.ingest.parquet import latest_messages
from fstore.schema.registry import EntitySpec, Registry
from fstore.settings import RedisSettings
from fstore.store import FeatureStore
from fstore.store.offline.duckdb import DuckDBOfflineStore
from fstore.store.offline.schema import messages_to_table
from fstore.store.online.redis import RedisOnlineStore, encode_value, row_key
from fstore.testing import RedisClusterServers, ServiceUnavailable

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR = timedelta(hours=1)


def event(spec: EntitySpec, key: Any, when: datetime, **features: Any) -> Message:
    message = spec.message_class(**{spec.key.name: key}, **features)
    getattr(message, spec.event_time.name).FromDatetime(when)
    return message


def stored(spec: EntitySpec, *events: tuple[Message, datetime, str]) -> pa.Table:
    """Offline rows of (message, ingest time, message id)."""
    messages, ingested, ids = zip(*events, strict=True)
    micros = [int(t.timestamp() * 1_000_000) for t in ingested]
    return messages_to_table(spec, list(messages), micros, list(ids))


Snapshot = dict[Any, tuple[Any, int]]


def snapshot(client: redis.Redis) -> Snapshot:
    """Every key's bytes and expiry (Unix ms; -1 for none)."""
    return {key: (client.get(key), client.pexpiretime(key)) for key in client.keys("*")}


def expected_value(spec: EntitySpec, row: dict[str, Any]) -> bytes:
    """The stored bytes of one offline row, built the message path's way."""
    row = dict(row)
    when, ingested = row.pop(spec.event_time.name), row.pop("ingest_time")
    del row["message_id"]
    message = spec.message_class(**{k: v for k, v in row.items() if v is not None})
    getattr(message, spec.event_time.name).FromDatetime(when)
    micros = int(when.timestamp() * 1_000_000)
    return encode_value(micros, int(ingested.timestamp() * 1_000_000), message)


@pytest.fixture
def fs(redis_url: str) -> Iterator[FeatureStore]:
    with FeatureStore.from_config() as store:
        yield store


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def user_history(fs: FeatureStore) -> EntitySpec:
    """`user` rows in a compacted day, a fresh segment and journals, with the ties and duplicates that
    decide; user 5 is past the 30-day TTL."""
    spec = fs.spec("user")
    fs.offline.write(
        spec,
        stored(
            spec,
            (event(spec, 1, NOW - 3 * HOUR, age=1), NOW - 3 * HOUR, "1-old"),
            (event(spec, 1, NOW - HOUR, age=2), NOW - HOUR, "1-new"),  # the latest of user 1
            (event(spec, 1, NOW - 2 * HOUR, age=3), NOW, "1-late"),  # ingested last, but an older event
            (event(spec, 2, NOW - HOUR, age=4), NOW - HOUR + timedelta(seconds=5), "2-a"),
            (event(spec, 2, NOW - HOUR, age=5), NOW - HOUR + timedelta(seconds=9), "2-b"),  # later ingest wins
            (event(spec, 3, NOW - HOUR, age=6), NOW - HOUR, "3-x"),
            (event(spec, 3, NOW - HOUR, age=7), NOW - HOUR, "3-y"),  # then the greater message id
            (event(spec, 4, NOW - HOUR, age=8), NOW - HOUR, "4-dup"),
            (event(spec, 4, NOW - HOUR, age=9), NOW - HOUR + timedelta(seconds=30), "4-z"),
            (event(spec, 5, NOW - timedelta(days=40), age=10), NOW - timedelta(days=40), "5-expired"),
        ),
    )
    assert isinstance(fs.offline, DuckDBOfflineStore)
    fs.offline.compact(spec)
    # "4-dup" again, ingested last: only its first copy counts, else it would beat "4-z".
    redelivery = stored(spec, (event(spec, 4, NOW - HOUR, age=8), NOW, "4-dup"))
    other_writer = DuckDBOfflineStore(fs.offline.root, fs.registry)
    other_writer.write(spec, redelivery)
    other_writer.close()
    bulk = [(event(spec, 100 + n, NOW - 4 * HOUR, age=n % 90), NOW - 4 * HOUR, f"bulk-{n}") for n in range(1_200)]
    fs.offline.write(spec, stored(spec, *bulk))  # a segment
    fs.offline.write(spec, stored(spec, (event(spec, 100, NOW - HOUR, age=99), NOW - HOUR, "100-new")))  # a journal
    return spec


def brute_force_latest(fs: FeatureStore, spec: EntitySpec) -> dict[Any, dict[str, Any]]:
    latest: dict[Any, dict[str, Any]] = {}
    for row in fs.offline.history(spec).to_pylist():  # each message id once, its first ingest
        order = (row[spec.event_time.name], row["ingest_time"], row["message_id"])
        held = latest.get(row[spec.key.name])
        if held is None or order > (held[spec.event_time.name], held["ingest_time"], held["message_id"]):
            latest[row[spec.key.name]] = row
    return latest


def test_online_holds_each_keys_latest_row_within_its_ttl(fs: FeatureStore, client: redis.Redis) -> None:
    spec = user_history(fs)
    rows, done = materialize(fs, spec)
    assert rows == fs.offline.history(spec).num_rows == 1_211
    assert (done.written, done.stale, done.expired, done.failed) == (1_204, 0, 1, 0)
    expected = brute_force_latest(fs, spec)
    assert {k: expected[k]["message_id"] for k in (1, 2, 3, 4, 100)} == {
        1: "1-new", 2: "2-b", 3: "3-y", 4: "4-z", 100: "100-new"
    }  # fmt: skip
    online = snapshot(client)
    assert row_key(spec, 5) not in online  # expired: never written
    assert len(online) == 1_204
    for key, row in expected.items():
        if key == 5:
            continue
        value, expiry = online[row_key(spec, key)]
        assert value == expected_value(spec, row)
        assert expiry == int(row[spec.event_time.name].timestamp() * 1_000) + spec.ttl_seconds * 1_000
    [user_2] = fs.get_online("user", [2], features=["age"])
    assert user_2 is not None and user_2["age"] == 5


def test_running_twice_changes_nothing_and_the_history_is_only_read(fs: FeatureStore, client: redis.Redis) -> None:
    spec = user_history(fs)
    assert isinstance(fs.offline, DuckDBOfflineStore)
    files = {p: p.stat().st_mtime_ns for p in fs.offline.root.rglob("*") if p.is_file() and p.suffix != ".lock"}
    history = fs.offline.history(spec)
    materialize(fs, spec)
    online = snapshot(client)
    rows, again = materialize(fs, spec)
    assert (again.written, again.stale, again.expired) == (0, 1_204, 1)
    assert snapshot(client) == online
    assert fs.offline.history(spec).equals(history) and rows == history.num_rows
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_a_key_newer_online_stays_and_an_older_one_is_replaced(fs: FeatureStore, client: redis.Redis) -> None:
    spec = user_history(fs)
    newer = event(spec, 1, NOW - timedelta(minutes=5), age=50)
    older = event(spec, 2, NOW - 5 * HOUR, age=51)
    same = event(spec, 3, NOW - HOUR, age=7)  # user 3's latest, with the same publish time
    hour_ago = int((NOW - HOUR).timestamp() * 1_000_000)
    assert fs.online.write(spec, [newer, older, same], [0, 0, hour_ago]).written == 3
    before = snapshot(client)
    _, done = materialize(fs, spec)
    assert (done.written, done.stale) == (1_202, 2)  # users 1 and 3 stale; user 2 through the script
    after = snapshot(client)
    assert after[row_key(spec, 1)] == before[row_key(spec, 1)]
    assert after[row_key(spec, 3)] == before[row_key(spec, 3)]
    rows = fs.get_online("user", [1, 2], features=["age"])
    assert [r["age"] if r else None for r in rows] == [50, 5]


def test_start_and_end_choose_the_rows_considered(fs: FeatureStore, client: redis.Redis) -> None:
    spec = user_history(fs)
    rows, done = materialize(fs, spec, NOW - 150 * timedelta(minutes=1), NOW - 90 * timedelta(minutes=1))
    assert (rows, done.written) == (1, 1)  # only user 1's event of 2 h ago is in [now - 2.5 h, now - 1.5 h)
    [user_1] = fs.get_online("user", [1], features=["age"])
    assert user_1 is not None and user_1["age"] == 3
    result = CliRunner().invoke(app, ["materialize", "--entity", "user", "--start", (NOW - HOUR).isoformat()])
    assert result.exit_code == 0, result.output
    assert "from 8 history rows: 5 written online, 0 already newer online, 0 past their TTL" in result.output
    rows_online = fs.get_online("user", [1, 2, 3, 4, 100, 101], features=["age"])
    assert [r["age"] if r else None for r in rows_online] == [2, 5, 7, 9, 99, None]


def test_the_arrow_path_writes_the_message_paths_bytes(fs: FeatureStore, client: redis.Redis) -> None:
    """`user` (int key, TTL) and `item` (string key, no TTL): materialize (Arrow batches, SET NX) leaves
    exactly the keys, bytes and expiries that `write` of the same latest rows as messages leaves."""
    user = user_history(fs)
    item = fs.spec("item")
    fs.offline.write(
        item,
        stored(
            item,
            (event(item, "sku-1", NOW - HOUR, price=9.5, tags=["a", "b"], stock=0), NOW - HOUR, "i1"),
            (event(item, "sku-1", NOW - 2 * HOUR, price=1.0), NOW, "i2"),
            (event(item, "sku-é", NOW - timedelta(days=400), category=""), NOW, "i3"),  # no TTL: still written
        ),
    )
    for spec in (user, item):
        messages, publish = latest_messages(spec, fs.offline.history(spec))
        fs.online.write(spec, messages, publish)
    by_messages = snapshot(client)
    client.flushall()
    for spec in (user, item):
        materialize(fs, spec)
    assert snapshot(client) == by_messages
    assert by_messages[row_key(item, "sku-é")][1] == -1


def test_writers_racing_the_rebuild_keep_the_newer_row(
    fs: FeatureStore, client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys absent when read, then written by another writer before the SET NX: the script decides."""
    spec = user_history(fs)
    assert isinstance(fs.online, RedisOnlineStore)
    read = RedisOnlineStore._stored_times
    other = RedisOnlineStore(redis_url)

    def read_then_race(self: RedisOnlineStore, keys: pa.Array) -> Any:
        found = read(self, keys)
        if row_key(spec, 1) in keys.to_pylist():
            other.write(spec, [event(spec, 1, NOW, age=60), event(spec, 2, NOW - 9 * HOUR, age=61)])
        return found

    monkeypatch.setattr(RedisOnlineStore, "_stored_times", read_then_race)
    _, done = materialize(fs, spec)
    assert (done.written, done.stale) == (1_203, 1)
    rows = fs.get_online("user", [1, 2], features=["age"])
    assert [r["age"] if r else None for r in rows] == [60, 5]
    other.close()


def fstore(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fstore.cli", "materialize", *args]
    return subprocess.run(command, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--start", "yesterday"], "--start 'yesterday' is not an ISO-8601 time"),
        (["--end", "2026-13-01"], "--end '2026-13-01' is not an ISO-8601 time"),
        (["--start", "2026-03-02", "--end", "2026-03-01T23:00:00+00:00"], "is not before --end"),
        (["--version", "1"], "--version needs --entity"),
        (["--entity", "user_orders", "--start", "2026-03-02"], "apply to entities, not aggregation families"),
        (["--entity", "nobody"], "nobody"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, redis_url: str, args: list[str], says: str) -> None:
    proc = fstore(tmp_path, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert says in lines[0] and proc.stdout == ""


def test_every_entity_by_default_and_exit_1_when_redis_refuses_rows(
    fs: FeatureStore, client: redis.Redis, tmp_path: Path
) -> None:
    spec = user_history(fs)
    client.rpush(row_key(spec, 3), "not a row")  # a key of another type: refused for good
    proc = fstore(tmp_path, "--start", "2000-01-01", "--end", (NOW + HOUR).isoformat())
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    families = [line for line in lines if line.startswith("materialized aggregation family ")]
    assert [line.split()[3] for line in families] == fs.registry.families()
    out = {line.split()[1]: line for line in lines if line not in families}  # one per entity, default versions
    assert sorted(out) == [fs.registry.get(name).ref for name in fs.registry.entities()]
    assert out["item/v1"].startswith("materialized item/v1 from 0 history rows: 0 written online")
    assert out["user/v1"].startswith("materialized user/v1 from 1,211 history rows: 1,203 written online")
    assert "1 refused by the online store" in proc.stderr and "WRONGTYPE" in proc.stderr
    client.delete(row_key(spec, 3))
    ok = fstore(tmp_path, "--entity", "user", "--version", "1")
    assert ok.returncode == 0 and "1 written online, 1,203 already newer online, 1 past their TTL" in ok.stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    try:
        with RedisClusterServers() as servers:  # only starting (or stopping) it raises here
            yield servers
    except ServiceUnavailable as exc:
        pytest.skip(f"cannot start a Redis Cluster here: {exc}")


def test_rows_written_to_a_cluster_are_the_message_paths(cluster: RedisClusterServers, registry: Registry) -> None:
    spec = registry.get("user")
    nodes = [redis.Redis(host="127.0.0.1", port=n.port) for n in cluster.nodes]
    for node in nodes:
        node.flushall()
    online = RedisOnlineStore(cluster.url, RedisSettings(cluster=True))
    table = stored(spec, *((event(spec, n, NOW - HOUR, age=n % 90), NOW, f"m{n}") for n in range(600)))
    messages, publish = latest_messages(spec, table)
    online.write(spec, messages[:100], publish[:100])  # some keys already there, with the same event
    by_messages: Snapshot = {}
    online.write(spec, messages, publish)
    for node in nodes:
        by_messages |= snapshot(node)
        node.flushall()
    online.write(spec, messages[:100], publish[:100])
    done = online.write_rows(spec, table.combine_chunks().to_batches()[0])
    assert (done.written, done.stale) == (500, 100)
    by_rows: Snapshot = {}
    for node in nodes:
        by_rows |= snapshot(node)
    assert by_rows == by_messages and min(node.dbsize() for node in nodes) > 100
    online.close()


def test_an_aggregation_familys_tiles_are_rebuilt_from_the_history(
    fs: FeatureStore, client: redis.Redis, tmp_path: Path
) -> None:
    """Orders over 10 days, some later than the allowed lateness, some stored twice: after the tiles are lost,
    materialize folds the history back, every feature equal to the brute force of the definition; again, it
    changes nothing; and the CLI names the family."""
    import dataclasses
    import math
    import random

    from fstore.ingest.materialize import materialize_family
    from fstore.store.online.tiles import TileStore
    from tests.offline.test_aggregations import brute_force, events_of_history

    order, family = fs.spec("order"), fs.registry.family("user_orders")
    rng, rows = random.Random(5), []
    for n in range(600):
        placed = NOW - timedelta(minutes=rng.uniform(0, 10 * 24 * 60))
        late = rng.random() < 0.1
        ingested = placed + timedelta(minutes=rng.uniform(61, 300) if late else rng.uniform(0, 50))
        message = order.message_class(
            order_id=f"o{n}", user_id=rng.randint(1, 20), amount=round(rng.uniform(1, 90), 2),
            status=rng.choice(["placed", "paid", "shipped"]),
        )  # fmt: skip
        message.event_time.FromDatetime(placed)
        rows.append((message, min(ingested, NOW), f"m{n}"))
    fs.offline.write(order, stored(order, *rows))
    fs.offline.write(order, stored(order, *rng.sample(rows, 30)))  # redelivered: stored once
    now = int(NOW.timestamp() * 1_000_000)
    users = list(range(1, 23))  # 21 and 22 have no orders

    def online() -> list[dict[str, Any]]:
        tiles = TileStore.beside(fs.online)
        try:
            return tiles.read(family, users, now)
        finally:
            tiles.close()

    history = fs.offline.history(order).to_pylist()
    assert len(history) == 600
    read, folded, late, _ = materialize_family(fs, family, now)
    assert read == 600 and folded + late == 600 and late > 20
    events = events_of_history(history)
    rebuilt = online()
    for key, row in zip(users, rebuilt, strict=True):
        for feature in family.features:
            truth = brute_force(family, feature, events, key, now)
            if isinstance(truth, float):
                assert math.isclose(row[feature.name], truth, rel_tol=1e-9), (key, feature.name)
            else:
                assert row[feature.name] == truth, (key, feature.name, row[feature.name], truth)
    assert sum(r["order_count_7d"] for r in rebuilt) > 100
    before = {key: client.dump(key) for key in client.keys("*")}
    assert materialize_family(fs, family, now) == (600, 0, late, 0)  # every id already folded
    assert online() == rebuilt and {key: client.dump(key) for key in client.keys("*")} == before
    client.flushall()
    assert materialize_family(fs, family, now)[1] == folded and online() == rebuilt
    # an edit of the family and its revert: each layout's rebuild deletes the other's keys, none is left behind
    edited = dataclasses.replace(family, features=family.features[:2])
    current = len(client.keys("fs*"))
    assert materialize_family(fs, edited, now).dropped == current
    digest = TileStore.beside(fs.online).layout(edited).digest
    assert client.keys("fs*") and all(digest.encode() in key for key in client.keys("fs*"))
    left = len(client.keys("fs*"))
    assert materialize_family(fs, family, now) == (600, folded, late, left)
    assert online() == rebuilt and not any(digest.encode() in key for key in client.keys("fs*"))
    proc = fstore(tmp_path, "--entity", "user_orders")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("materialized aggregation family user_orders from 600 history rows: 0 newly folded")
