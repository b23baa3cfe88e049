"""The online store on a real Redis Cluster (three primaries): the same guarantees, keys spread over nodes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from google.protobuf.message import Message

from fstore.schema.registry import EntitySpec, Registry
from fstore.settings import RedisSettings, get_settings
from fstore.store import FeatureStore
from fstore.store.online.redis import RedisOnlineStore, row_key
from fstore.testing import RedisClusterServers, ServiceUnavailable


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers()
    try:
        servers.start()
    except ServiceUnavailable as exc:
        pytest.skip(f"cannot start a Redis Cluster here: {exc}")
    yield servers
    servers.stop()


@pytest.fixture
def store(cluster: RedisClusterServers) -> Iterator[RedisOnlineStore]:
    for node in cluster.nodes:
        redis.Redis(host="127.0.0.1", port=node.port).flushall()
    online = RedisOnlineStore(cluster.url, RedisSettings(cluster=True))
    yield online
    online.close()


def user(spec: EntitySpec, user_id: int, when: datetime, **features: object) -> Message:
    message = spec.message_class(user_id=user_id, **features)
    message.event_time.FromDatetime(when)
    return message


def test_writes_spread_over_nodes_and_keep_the_newest(
    cluster: RedisClusterServers, store: RedisOnlineStore, registry: Registry
) -> None:
    spec = registry.get("user")
    now = datetime.now(UTC)
    ids = list(range(1, 601))
    assert store.write(spec, [user(spec, i, now, country="JP") for i in ids]).written == 600
    older = store.write(spec, [user(spec, i, now - timedelta(minutes=1), country="FR") for i in ids])
    assert (older.written, older.stale) == (0, 600)
    sizes = [redis.Redis(host="127.0.0.1", port=n.port).dbsize() for n in cluster.nodes]
    assert sum(sizes) == 600 and min(sizes) > 100  # every primary holds a share
    rows = store.read(spec, ids, (spec.feature("country"),))
    assert [r["country"] if r else None for r in rows] == ["JP"] * 600


def test_a_node_that_forgot_the_script_is_reloaded(
    cluster: RedisClusterServers, store: RedisOnlineStore, registry: Registry
) -> None:
    spec = registry.get("user")
    now = datetime.now(UTC)
    store.write(spec, [user(spec, i, now, country="JP") for i in range(1, 101)])
    redis.Redis(host="127.0.0.1", port=cluster.nodes[1].port).script_flush()  # as after a node restart
    result = store.write(spec, [user(spec, i, now + timedelta(seconds=1), country="DE") for i in range(1, 101)])
    assert (result.written, result.stale) == (100, 0)  # only the failed commands were redone


@pytest.mark.anyio
async def test_feature_store_on_a_cluster(
    cluster: RedisClusterServers, store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSTORE_REDIS_URL", cluster.url)
    monkeypatch.setenv("FSTORE_REDIS__CLUSTER", "true")
    get_settings.cache_clear()
    with FeatureStore.from_config() as fs:
        spec = fs.spec("user")
        fs.write_online("user", [user(spec, i, datetime.now(UTC), age=i) for i in range(1, 51)])
        assert [r["age"] if r else None for r in fs.get_online("user", [50, 7, 999], features=["age"])] == [
            50,
            7,
            None,
        ]
        rows = await fs.get_online_async("user", [3, 4], features=["age"])
        assert [r["age"] if r else None for r in rows] == [3, 4]
        assert fs.online._client.get(row_key(spec, 3)) is not None  # type: ignore[attr-defined]
        await fs.online.aclose()  # type: ignore[attr-defined]


def _move_slot(cluster: RedisClusterServers, slot: int, source: int, target: int) -> None:
    """Migrate one slot and its keys between primaries (ports), as a resharding would."""
    src, dst = redis.Redis(host="127.0.0.1", port=source), redis.Redis(host="127.0.0.1", port=target)
    src_id, dst_id = (c.execute_command("CLUSTER", "MYID").decode() for c in (src, dst))
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    for key in src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
        src.execute_command("MIGRATE", "127.0.0.1", target, key, 0, 5000)
    for node in cluster.nodes:
        redis.Redis(host="127.0.0.1", port=node.port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def test_reads_follow_a_slot_that_moved(
    cluster: RedisClusterServers, store: RedisOnlineStore, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = registry.get("user")
    ids = list(range(1, 201))
    store.write(spec, [user(spec, i, datetime.now(UTC), age=i) for i in ids])
    assert store._cluster is not None
    key = row_key(spec, 7)
    source = store._cluster.get_node_from_key(key).port
    target = next(n.port for n in cluster.nodes if n.port != source)
    slot = store._cluster.keyslot(key)
    _move_slot(cluster, slot, source, target)  # the store's slot map is now stale for this slot
    reread: list[bytes] = []
    follow = store._cluster.mget_nonatomic
    monkeypatch.setattr(store._cluster, "mget_nonatomic", lambda keys: reread.extend(keys) or follow(keys))
    try:
        assert store._cluster.get_node_from_key(key).port == source
        rows = store.read(spec, ids, (spec.feature("age"),))
        assert [r["age"] if r else None for r in rows] == ids
        assert reread == [row_key(spec, i) for i in ids if store._cluster.keyslot(row_key(spec, i)) == slot]
    finally:
        _move_slot(cluster, slot, target, source)


def test_aggregation_tiles_on_a_cluster(store: RedisOnlineStore) -> None:
    """A key's tiles share one slot (hash tag); scripts go one call each, as redis-py's cluster pipeline
    refuses them; a redelivery changes nothing."""
    import time

    from fstore.store.online.tiles import TileEvent, TileStore

    family = Registry.default().family("user_orders")
    tiles = TileStore.beside(store)
    now = time.time_ns() // 1_000
    events = [TileEvent(k, now - 1_000, now, f"m{k}", False, {"amount": 2.0, "status": "x"}) for k in range(40)]
    assert tiles.apply(family, events) == (40, 0)
    assert tiles.apply(family, events) == (0, 0)
    rows = tiles.read(family, [1, 39, 40])
    assert [r["order_count_1h"] for r in rows] == [1, 1, 0] and rows[0]["amount_sum_7d"] == 2.0
    # a changed family writes under a new layout; dropping the other layouts finds keys on every node
    import dataclasses

    edited = dataclasses.replace(family, features=family.features[:2])
    assert tiles.drop_other_layouts(edited) == 40 * 3  # per key its state, its LAST state and one id set
    assert tiles.read(family, [1])[0]["order_count_1h"] == 0
    tiles.close()


def test_aggregation_tiles_on_a_cluster_read_as_on_one_redis(store: RedisOnlineStore) -> None:
    """Many batches of one family (LAST tails compacted, tiles merged, redeliveries mixed in) folded into the
    cluster and into a standalone Redis read the same, key by key and feature by feature."""
    import random
    import time

    from fstore.store.online.tiles import TileEvent, TileStore
    from fstore.testing import RedisServer

    family = Registry.default().family("user_orders")
    now = time.time_ns() // 1_000
    rng = random.Random(5)
    events = [
        TileEvent(rng.randint(1, 30), now - rng.randrange(0, 20 * 86_400_000_000), now, f"{10**15 + i}", False,
                  {"amount": round(rng.uniform(1, 50), 2), "status": rng.choice(["paid", "shipped", None])})
        for i in range(3_000)
    ]  # fmt: skip
    tiles = TileStore.beside(store)
    with RedisServer() as server:
        single = TileStore(redis.Redis.from_url(server.url))
        for start in range(0, len(events), 150):
            batch = events[start : start + 150] + rng.sample(events[: start + 150], 20)  # some delivered again
            assert tiles.apply(family, batch, now) == single.apply(family, batch, now)
        keys = list(range(1, 32))
        assert tiles.read(family, keys, now) == single.read(family, keys, now)
        single.close()
    tiles.close()
