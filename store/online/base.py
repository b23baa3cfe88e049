"""The online store interface: latest feature values per entity id, by event time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf.message import Message

from fstore.schema.registry import EntitySpec, FieldSpec

EntityId = int | str
Row = dict[str, Any]


@dataclass(frozen=True)
class WriteResult:
    """What one `write` call did: `written` replaced or created rows; `stale` lost to a newer (or equal)
    stored event; `expired` were already past their TTL by event time and were not stored; `failed` were
    refused by the store for good (a key holding a value of another type, say), `failure` says why (the first)."""

    written: int = 0
    stale: int = 0
    expired: int = 0
    failed: int = 0
    failure: str | None = None

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.written + other.written,
            self.stale + other.stale,
            self.expired + other.expired,
            self.failed + other.failed,
            self.failure or other.failure,
        )


class OnlineStore(ABC):
    """Backends implement these; `FeatureStore` validates names and ids before calling them."""

    @abstractmethod
    def write(
        self,
        spec: EntitySpec,
        messages: Sequence[Message],
        publish_times_micros: Sequence[int] | None = None,
    ) -> WriteResult:
        """Compare-and-set each message on (event time, publish time): an older event never overwrites
        a newer one; an equal one is a no-op. One round trip per call."""

    @abstractmethod
    def write_rows(self, spec: EntitySpec, rows: pa.RecordBatch) -> WriteResult:
        """`write` for rows of the offline schema (the columns of `arrow_schema(spec)` by name, others
        ignored; at most one row per key), each row's ingest time as its publish time: the same stored
        bytes, the same compare-and-set outcome and counts as `write` of the rows as messages."""

    @abstractmethod
    def read(self, spec: EntitySpec, ids: Sequence[EntityId], features: tuple[FieldSpec, ...]) -> list[Row | None]:
        """Rows in the order of `ids` (key, event time, the features), None where unknown or expired."""

    @abstractmethod
    async def read_async(
        self, spec: EntitySpec, ids: Sequence[EntityId], features: tuple[FieldSpec, ...]
    ) -> list[Row | None]:
        """The async twin of `read`, for the API's event loop."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the backend answers."""

    async def ping_async(self) -> bool:
        return self.ping()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (and stop an embedded server)."""
