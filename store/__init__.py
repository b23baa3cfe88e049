"""fstore's store layer. `FeatureStore` is the user-facing object; it checks names and ids and
delegates to the online store (Redis) and the offline store (DuckDB or BigQuery)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from fstore.schema.registry import DescriptorSetWatcher, EntitySpec, Registry
from fstore.settings import Settings, load_settings
from fstore.store.ids import check_ids
from fstore.store.offline import OfflineStore, open_offline_store
from fstore.store.offline.manifest import ExportOptions, Manifest
from fstore.store.online import OnlineStore, Row, WriteResult, open_online_store

__all__ = ["FeatureStore"]


class FeatureStore:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        online: OnlineStore | None = None,
        offline: OfflineStore | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self._registry = registry
        self._watcher = DescriptorSetWatcher(self.settings.descriptor_set)
        self._online = online
        self._tiles: Any = None
        self._offline = offline

    @classmethod
    def from_config(cls, **overrides: Any) -> FeatureStore:
        """Settings from fstore.yaml (or $FSTORE_CONFIG) and FSTORE_* environment, plus overrides."""
        return cls(load_settings(**overrides))

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.default()
        return self._registry

    def refresh_registry(self) -> bool:
        """Take up a descriptor set rewritten since this store read it (`fstore codegen` while a server runs);
        True when the registry changed. One stat per call: callers ask when a name was not found."""
        newer = self._watcher.newer(self.registry)
        if newer is None:
            return False
        self._registry = newer
        return True

    @property
    def online(self) -> OnlineStore:
        if self._online is None:
            self._online = open_online_store(self.settings, self.registry)
        return self._online

    @property
    def offline(self) -> OfflineStore:
        if self._offline is None:
            self._offline = open_offline_store(self.settings, self.registry)
        return self._offline

    def spec(self, entity: str, version: int | None = None) -> EntitySpec:
        return self.registry.get(entity, version)

    def get_online(
        self,
        entity: str,
        ids: Sequence[object],
        features: Sequence[str] | None = None,
        version: int | None = None,
    ) -> list[Row | None]:
        """Latest values by event time, in the order of `ids`; None where unknown or expired. For an
        aggregation family (docs/aggregations.md), every key has a row: its features at the time of the read."""
        if self.registry.is_family(entity):
            return self._get_aggregates(entity, ids, features)
        spec, fields, checked = self._prepare(entity, ids, features, version)
        return self.online.read(spec, checked, fields)

    def _get_aggregates(self, name: str, ids: Sequence[object], features: Sequence[str] | None) -> list[Row | None]:
        from fstore.store.online.tiles import TileStore

        family = self.registry.family(name)
        chosen = [f.name for f in family.select(features)]
        checked = check_ids(family.key_spec, ids)
        if self._tiles is None:
            self._tiles = TileStore.beside(self.online)
        rows = self._tiles.read(family, checked)
        return [
            {family.group_by.name: key, **{f: row[f] for f in chosen}} for key, row in zip(checked, rows, strict=True)
        ]

    async def get_online_async(
        self,
        entity: str,
        ids: Sequence[object],
        features: Sequence[str] | None = None,
        version: int | None = None,
    ) -> list[Row | None]:
        spec, fields, checked = self._prepare(entity, ids, features, version)
        return await self.online.read_async(spec, checked, fields)

    def write_online(self, entity: str, messages: Sequence[Message], version: int | None = None) -> WriteResult:
        return self.online.write(self.spec(entity, version), messages)

    def export_training_set(
        self,
        spine: Any,
        features: Sequence[str] | None,
        out: str | Path,
        *,
        timestamp_column: str | None = None,
        versions: Mapping[str, int] | None = None,
        column_format: str | None = None,
        reproduce: Manifest | str | Path | None = None,
        memory_limit: str | None = None,
        threads: int | None = None,
        progress: bool = True,
    ) -> Manifest:
        """Point-in-time-correct training set: parquet at `out`, manifest beside it; returns the manifest.
        The options are `ExportOptions`' (store/offline/manifest.py)."""
        options = ExportOptions(timestamp_column, versions, column_format, reproduce, memory_limit, threads, progress)
        return self.offline.export_training_set(spine, features, Path(out), options)

    def close(self) -> None:
        for store in (self._tiles, self._online, self._offline):
            if store is not None:
                store.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(
        self, entity: str, ids: Sequence[object], features: Sequence[str] | None, version: int | None
    ) -> tuple[EntitySpec, tuple[Any, ...], list[int | str]]:
        spec = self.registry.get(entity, version)
        fields = spec.select(features)
        return spec, fields, check_ids(spec, ids)
