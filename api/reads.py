"""Online reads for the API: limits, id parsing, the store call, row counting and the JSON encoding.

GET and POST differ only in how their arguments arrive; both end in `OnlineReader.read`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fstore.api.errors import TooManyIdsError
from fstore.api.metrics import ApiMetrics
from fstore.errors import UnknownEntityError, UnknownFeatureError, UnknownVersionError
from fstore.store import FeatureStore
from fstore.store.ids import check_ids
from fstore.store.jsonrows import dumps_online_response, float_field_names


def split_features(values: Sequence[str] | None) -> list[str] | None:
    """`features=age,country` and `features=age&features=country` both name two features; None: all."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",")]
    # An empty name (`features=` or `age,,country`) is kept: the store then refuses it, naming it.
    return names


class OnlineReader:
    def __init__(self, store: FeatureStore, max_ids: int, metrics: ApiMetrics) -> None:
        self.store = store
        self.max_ids = max_ids
        self.metrics = metrics

    async def read(
        self,
        entity: str,
        ids: Sequence[object],
        features: Sequence[str] | None,
        version: int | None,
    ) -> bytes:
        """The response body `{"entity", "version", "rows"}`; raises store errors (mapped to 404/422/503 by
        api.errors) and TooManyIdsError (413)."""
        if len(ids) > self.max_ids:
            raise TooManyIdsError(f"at most {self.max_ids} ids per request (api.max_ids); got {len(ids)}")
        if self.store.registry.is_family(entity):
            return await self._read_family(entity, ids, features)
        try:
            spec = self.store.spec(entity, version)
            fields = spec.select(features)
        except (UnknownEntityError, UnknownVersionError, UnknownFeatureError):
            # Perhaps `fstore codegen` added it while this server runs: look at the descriptor set once more.
            if not self.store.refresh_registry():
                raise
            self.metrics.known_entities = frozenset(self.store.registry.entities() + self.store.registry.families())
            spec = self.store.spec(entity, version)
            fields = spec.select(features)
        # Query strings carry every id as text, and JSON clients may send int64 ids as strings (2**53 and up).
        checked = check_ids(spec, ids, from_text=True)
        rows = await self.store.get_online_async(entity, checked, features, spec.version)
        found = sum(row is not None for row in rows)
        self.metrics.count_rows(spec.name, spec.version, found, len(rows) - found)
        return dumps_online_response(spec.name, spec.version, rows, float_field_names(fields))

    async def _read_family(self, name: str, ids: Sequence[object], features: Sequence[str] | None) -> bytes:
        """An aggregation family (docs/aggregations.md): every key has a row, its features at this moment;
        `version` is the family's source entity version."""
        family = self.store.registry.family(name)
        chosen = family.select(features)
        checked = check_ids(family.key_spec, ids, from_text=True)
        # The tiles' reads are synchronous (a pipeline of HMGETs): off the event loop.
        rows = await asyncio.to_thread(self.store.get_online, name, checked, [f.name for f in chosen])
        self.metrics.count_rows(name, family.source.version, len(rows), 0)
        floats = [f.name for f in chosen if f.result_kind in ("double", "float")]
        return dumps_online_response(name, family.source.version, rows, floats)
