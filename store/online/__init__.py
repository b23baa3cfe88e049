"""Online stores: `OnlineStore` (base.py) and its Redis backend (redis.py)."""

from __future__ import annotations

from fstore.schema.registry import Registry
from fstore.settings import Settings
from fstore.store.online.base import EntityId, OnlineStore, Row, WriteResult

__all__ = ["EntityId", "OnlineStore", "Row", "WriteResult", "open_online_store"]


def open_online_store(settings: Settings, registry: Registry) -> OnlineStore:
    from fstore.store.online.redis import RedisOnlineStore

    return RedisOnlineStore.from_settings(settings, registry)
