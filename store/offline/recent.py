"""Message ids this process stored recently: a write skips them without reading any file, which catches
Pub/Sub redeliveries cheaply (reads still deduplicate by message id, across processes)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from fstore.schema.tables import INGEST_TIME, MESSAGE_ID

RECENT_IDS = 200_000


class RecentMessageIds:
    def __init__(self, capacity: int = RECENT_IDS) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def new_rows(self, table: pa.Table) -> pa.Table:
        """Each message id once (its earliest ingest time), and none stored recently."""
        ids = table.column(MESSAGE_ID).to_pylist()
        ingest = table.column(INGEST_TIME).cast(pa.int64()).to_numpy()
        keep: dict[str, int] = {}
        with self._lock:
            for i in np.argsort(ingest, kind="stable").tolist():
                if ids[i] not in keep and ids[i] not in self._ids:
                    keep[ids[i]] = i
        if len(keep) == len(ids):
            return table
        return table.take(pa.array(sorted(keep.values()), type=pa.int64()))

    def remember(self, ids: list[str]) -> None:
        with self._lock:
            for message_id in ids:
                self._ids[message_id] = None
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
