"""Store clients for the ingest DoFns, one set per process and settings.

Beam's local runner pickles and unpickles every DoFn for every bundle (a pickling self-test), so `setup()`
runs per bundle of ≤ 10 messages there; creating Redis pools, loading the Lua script and the descriptor set
each time would cost more than the work itself. DoFns therefore carry only the settings as
JSON and the registry's source (the descriptor set's bytes), and look their clients up here. On Dataflow
this is also right: one connection pool per worker process, and no feature repo needed on the worker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import apache_beam as beam

from fstore.ingest.events import MAX_DETAIL_CHARS, job_registry, launcher_registry_source
from fstore.schema.registry import DescriptorSetWatcher, Registry, RegistrySource
from fstore.settings import Settings
from fstore.store.events import DeadLetter
from fstore.store.offline import OfflineStore, open_offline_store
from fstore.store.online import OnlineStore, open_online_store
from fstore.store.online.tiles import TileStore

log = logging.getLogger("fstore.ingest")


class Resources:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._watcher = DescriptorSetWatcher(settings.descriptor_set)
        self._lock = threading.Lock()
        self._online: OnlineStore | None = None
        self._offline: OfflineStore | None = None
        self._tiles: TileStore | None = None
        self._publisher: Any = None

    def reload_registry(self) -> bool:
        """Take up the settings' descriptor set if it changed on disk (a `fstore codegen` while the job runs,
        adding a field); True when the registry changed. Asked only for events the registry refused; where
        the file does not exist (a Dataflow worker) the job keeps the registry it was launched with."""
        registry = self._watcher.newer(self.registry)
        if registry is None or registry.source is None:
            return False
        self.registry = job_registry(registry.source)
        return True

    def explain_schema_refusal(self, letter: DeadLetter) -> DeadLetter:
        """Say which side is behind, for an event refused for its entity, version or fingerprint after
        `reload_registry` had its chance: where this job can read the descriptor set it has just checked
        it, so the producer's schemas are newer than (or apart from) the feature repo's; where it cannot (a
        Dataflow worker), the job may be the stale side."""
        path = self.settings.descriptor_set
        if path.is_file():
            side = (
                f"this job has just re-read {path} and it is current: the producer's schemas are not (yet) this "
                "feature repo's. Merge the schema change and run `fstore codegen`, then `fstore dead-letters "
                f"replay --reason {letter.reason}`"
            )
        else:
            side = (
                f"this job cannot re-read its schemas here (no {path} on this worker), so it may be the stale "
                "side: update the job with the new descriptor set (docs/ingest.md, Schema changes), then "
                f"`fstore dead-letters replay --reason {letter.reason}`"
            )
        return dataclasses.replace(letter, detail=f"{letter.detail}; {side}"[:MAX_DETAIL_CHARS])

    @property
    def online(self) -> OnlineStore:
        with self._lock:
            if self._online is None:
                self._online = open_online_store(self.settings, self.registry)
            return self._online

    @property
    def tiles(self) -> TileStore:
        """Aggregation families' tiles, in the online store's Redis."""
        online = self.online
        with self._lock:
            if self._tiles is None:
                self._tiles = TileStore.beside(online)
            return self._tiles

    @property
    def offline(self) -> OfflineStore:
        with self._lock:
            if self._offline is None:
                self._offline = open_offline_store(self.settings, self.registry)
            return self._offline

    @property
    def publisher(self) -> Any:
        with self._lock:
            if self._publisher is None:
                from google.cloud import pubsub_v1  # type: ignore[attr-defined]

                self._publisher = pubsub_v1.PublisherClient()
            return self._publisher

    def close(self) -> None:
        with self._lock:
            if self._offline is not None:
                self._offline.close()  # its journals become segments
            if self._online is not None:
                self._online.close()
            self._offline = self._online = None


_made: dict[tuple[str, str], Resources] = {}
_made_lock = threading.Lock()


def resources(settings_json: str, source: RegistrySource) -> Resources:
    registry = job_registry(source)
    with _made_lock:
        key = (settings_json, source.digest)
        if key not in _made:
            _made[key] = Resources(Settings.model_validate_json(settings_json), registry)
        return _made[key]


def close_resources() -> None:
    """Close the clients of this process's DoFns once its job is over."""
    with _made_lock:
        made = list(_made.values())
        _made.clear()
    for res in made:
        res.close()


class IngestDoFn(beam.DoFn):
    """Base of fstore's DoFns: holds the settings as JSON and the registry's source (cheap to pickle), read
    where the job is built; `setup` finds the process's shared clients in `self.res`."""

    res: Resources

    def __init__(self, settings: Settings) -> None:
        self.settings_json = settings.model_dump_json()
        self.registry_source = launcher_registry_source(settings.descriptor_set)

    def setup(self) -> None:
        self.res = resources(self.settings_json, self.registry_source)
