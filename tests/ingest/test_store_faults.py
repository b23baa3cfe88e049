"""Store errors stall the ingest job's writes, never end them: a transient refusal from Redis (out of memory
under `noeviction`) is retried until the store takes the write again, and nothing is lost."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import redis
from google.protobuf.message import Message

from fstore.errors import StoreUnavailableError
from fstore.ingest.retry import until_stored
from fstore.schema.registry import EntitySpec, Registry
from fstore.settings import RedisSettings
from fstore.store.online.redis import RedisOnlineStore, row_key
from fstore.testing import RedisServer


def users_aged_30(spec: EntitySpec, count: int) -> list[Message]:
    """User events 1..count, each age 30, as of now."""
    now = datetime.now(UTC)
    messages = []
    for user_id in range(1, count + 1):
        message = spec.message_class(user_id=user_id, age=30)
        message.event_time.FromDatetime(now)  # type: ignore[attr-defined]
        messages.append(message)
    return messages


def test_redis_out_of_memory_stalls_the_write_until_memory_is_freed(registry: Registry) -> None:
    spec = registry.get("user")
    messages = users_aged_30(spec, 100)
    with RedisServer(maxmemory="3mb") as server:  # maxmemory-policy noeviction: Redis's default
        client = redis.Redis.from_url(server.url)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(10_000):
                client.set(f"filler:{i}", b"x" * 10_000)
        store = RedisOnlineStore(server.url, RedisSettings(write_retry_seconds=0.3))
        with pytest.raises(StoreUnavailableError, match="refused the write for now"):
            store.write(spec, messages)

        freed = threading.Timer(1.5, lambda: client.config_set("maxmemory", "0"))
        freed.start()
        try:
            result = until_stored(lambda: store.write(spec, messages), "online write of user/v1")
        finally:
            freed.cancel()
        assert result.written == 100
        rows = store.read(spec, list(range(1, 101)), spec.select(["age"]))
        assert [r["age"] if r else None for r in rows] == [30] * 100
        store.close()


def test_a_key_redis_refuses_for_good_is_counted_and_the_rest_is_written(registry: Registry) -> None:
    spec = registry.get("user")
    messages = users_aged_30(spec, 10)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.rpush(row_key(spec, 5), "not a row")  # someone else's list under fstore's key
        store = RedisOnlineStore(server.url)
        result = store.write(spec, messages)
        assert (result.written, result.failed) == (9, 1)
        assert result.failure is not None and "fs:user:v1:5" in result.failure and "WRONGTYPE" in result.failure
        rows = store.read(spec, [1, 4, 6, 10], spec.select(["age"]))
        assert [r["age"] if r else None for r in rows] == [30] * 4
        store.close()
