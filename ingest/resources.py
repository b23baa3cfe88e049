"""Store clients for the ingest DoFns, one set per process and settings.

Beam's local runner pickles and unpickles every DoFn for every bundle (a pickling self-test), so `setup()`
runs per bundle of ≤ 10 messages there; creating Redis pools, loading the Lua script and the descriptor set
each time cost more than the work itself (measured with py-spy). DoFns therefore carry only the settings as
JSON and look their clients up here. On Dataflow this is also right: one connection pool per worker process.
"""

from __future__ import annotations

import threading
from typing import Any

import apache_beam as beam

from fstore.schema.registry import Registry
from fstore.settings import Settings
from fstore.store.offline import OfflineStore, open_offline_store
from fstore.store.online import OnlineStore, open_online_store


class Resources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._online: OnlineStore | None = None
        self._offline: OfflineStore | None = None
        self._publisher: Any = None
        self.registry = Registry.load(settings.descriptor_set)

    @property
    def online(self) -> OnlineStore:
        with self._lock:
            if self._online is None:
                self._online = open_online_store(self.settings, self.registry)
            return self._online

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


_made: dict[str, Resources] = {}
_made_lock = threading.Lock()


def resources(settings_json: str) -> Resources:
    with _made_lock:
        if settings_json not in _made:
            _made[settings_json] = Resources(Settings.model_validate_json(settings_json))
        return _made[settings_json]


def close_resources() -> None:
    """Close the clients of this process's DoFns once its job is over."""
    with _made_lock:
        made = list(_made.values())
        _made.clear()
    for res in made:
        res.close()


class IngestDoFn(beam.DoFn):
    """Base of fstore's DoFns: holds the settings as JSON (cheap to pickle); `setup` finds the process's
    shared clients in `self.res`."""

    res: Resources

    def __init__(self, settings: Settings) -> None:
        self.settings_json = settings.model_dump_json()

    def setup(self) -> None:
        self.res = resources(self.settings_json)
