"""Offline stores: `OfflineStore` (base.py), DuckDB (embedded default) and BigQuery backends."""

from __future__ import annotations

from fstore.schema.registry import Registry
from fstore.settings import Settings
from fstore.store.offline.base import LedgerEntry, OfflineStore

__all__ = ["LedgerEntry", "OfflineStore", "open_offline_store"]


def open_offline_store(settings: Settings, registry: Registry) -> OfflineStore:
    if settings.offline.startswith("bigquery://"):
        from fstore.store.offline.bigquery import BigQueryOfflineStore

        return BigQueryOfflineStore.from_url(settings.offline, registry, project=settings.project)
    from fstore.store.offline.duckdb import DuckDBOfflineStore

    return DuckDBOfflineStore.from_url(settings.offline, registry)
