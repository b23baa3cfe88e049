"""The offline store interface: append-only history of every event, point-in-time joins, the ledger."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from fstore.schema.registry import EntitySpec
from fstore.store.events import DeadLetter


@dataclass(frozen=True)
class LedgerEntry:
    """Which entity version was ingested when: one per entity version with rows offline."""

    entity: str
    version: int
    rows: int
    first_event_time: datetime | None
    last_event_time: datetime | None
    last_ingest_time: datetime | None


class OfflineStore(ABC):
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
    def dead_letters(self) -> pa.Table:
        """Every dead letter stored."""

    @abstractmethod
    def ledger(self) -> list[LedgerEntry]:
        """Per entity version: row count, first/last event time, last ingest time."""

    @abstractmethod
    def export_training_set(
        self,
        spine: Any,
        features: Sequence[str] | None,
        out: Path,
        **options: Any,
    ) -> dict[str, Any]:
        """Point-in-time-correct join of `spine` with the features; writes parquet at `out` and its
        manifest beside it; returns the manifest."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
