"""The offline store interface: append-only history of every event, point-in-time joins, the ledger."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from fstore.schema.registry import EntitySpec
from fstore.store.events import DeadLetter
from fstore.store.offline.manifest import ExportOptions, Manifest


@dataclass(frozen=True)
class CompactionResult:
    table: str
    partitions: int
    files_merged: int
    rows: int


class Compaction(Protocol):
    def compact(self, spec: EntitySpec, *, min_fresh: int = 1) -> CompactionResult:
        """Fold each day partition with at least `min_fresh` fresh files into one deduplicated file. Safe while
        ingest writes and exports read."""


@dataclass(frozen=True)
class LedgerEntry:
    """Which entity version was ingested when: one per entity version with rows offline."""

    entity: str
    version: int
    rows: int
    first_event_time: datetime | None
    last_event_time: datetime | None
    last_ingest_time: datetime | None
    quarantined_files: int = 0  # damaged files kept aside (their verified rows are counted above)


class OfflineStore(ABC):
    """Backends implement these; `FeatureStore` and the ingest job call them."""

    @abstractmethod
    def write(self, spec: EntitySpec, rows: pa.Table) -> int:
        """Append rows (schema: `store.offline.schema.arrow_schema(spec)`). Rows whose message id is
        already stored are not stored again (at-least-once in, exactly-once effect). Returns rows stored."""

    @abstractmethod
    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Append rejected events to the dead-letter table, with their original bytes and reason."""

    @abstractmethod
    def history(self, spec: EntitySpec) -> pa.Table:
        """Every stored event of one entity version, each message id once, ordered by key, event time."""

    @abstractmethod
    def history_batches(self, spec: EntitySpec, start: datetime | None = None) -> Iterator[pa.RecordBatch]:
        """The stored events of one entity version with an event time at or after `start` (None: all), each
        message id once (its earliest ingest), in no particular order, streamed in batches with bounded memory;
        a batch has exactly the columns of `arrow_schema(spec)`. What `fstore materialize` folds into an
        aggregation family's tiles."""

    @abstractmethod
    def latest_rows(
        self, spec: EntitySpec, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Per key, its latest stored row: the greatest (event time, ingest time, message id), each message id
        once, among rows whose event time is in [start, end) (None: unbounded), computed by the backend and
        streamed in batches with bounded memory. A batch has exactly the columns of `arrow_schema(spec)`, then
        `store.offline.sql.KEY_ROWS` (int64): how many rows of the range its key has. Keys come in no
        particular order, each once; the history is only read."""

    @abstractmethod
    def dead_letters(self) -> pa.Table:
        """Every dead letter stored."""

    @abstractmethod
    def ledger(self) -> list[LedgerEntry]:
        """Per entity version: row count, first/last event time, last ingest time."""

    @abstractmethod
    def high_water_mark(self, spec: EntitySpec) -> int | None:
        """Max ingest time (µs since the epoch) stored for the entity version; None when it has no rows.
        An export reads only rows at or below it, and its manifest records it."""

    @abstractmethod
    def export_training_set(
        self, spine: Any, features: Sequence[str] | None, out: Path, options: ExportOptions | None = None
    ) -> Manifest:
        """Point-in-time-correct join of `spine` (a table, or a parquet/CSV path) with `features`
        (`entity:feature` or `entity:*`; None only with `options.reproduce`): for each spine row, the latest
        value whose event time is at or before the row's timestamp and within the entity's TTL. Writes
        parquet at `out` and `<out>.manifest.json` beside it; returns the manifest."""

    @property
    def compaction(self) -> Compaction | None:
        """How to fold this store's files, for a backend that keeps them (the embedded store); None for one
        that needs no compaction (BigQuery)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
