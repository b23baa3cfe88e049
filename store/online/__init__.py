"""Online stores: `OnlineStore` (base.py) and its Redis backend (redis.py)."""

from __future__ import annotations

from store.online.base import EntityId, OnlineStore, Row, WriteResult
from store.registry import Registry
from store.settings import Settings

__all__ = ["EntityId", "OnlineStore", "Row", "WriteResult", "open_online_store"]


def open_online_store(settings: Settings, registry: Registry) -> OnlineStore:
    from store.online.redis import RedisOnlineStore

    return RedisOnlineStore.from_settings(settings, registry)
