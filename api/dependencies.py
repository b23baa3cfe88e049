"""FastAPI dependencies: the app's services (one FeatureStore per app, made in the lifespan) and auth.

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a hop that costs more than a read.

Routes ask for what they need with `Depends(...)`; nothing here is global, so tests can build several apps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Request

from fstore.api.auth import Authenticator, Principal
from fstore.api.catalog import Catalog
from fstore.api.metrics import ApiMetrics
from fstore.api.reads import OnlineReader
from fstore.store import FeatureStore


@dataclass
class Services:
    """Everything a request may need, built once per app when it starts."""

    store: FeatureStore
    reader: OnlineReader
    catalog: Catalog
    authenticator: Authenticator
    metrics: ApiMetrics


def services(request: Request) -> Services:
    found: Services | None = getattr(request.app.state, "services", None)
    if found is None:  # only if someone serves the app without running its lifespan
        raise RuntimeError("the fstore API was served without its lifespan: its FeatureStore was never created")
    return found


async def feature_store(request: Request) -> FeatureStore:
    return services(request).store


async def api_metrics(request: Request) -> ApiMetrics:
    return services(request).metrics


async def catalog(request: Request) -> Catalog:
    return services(request).catalog


def authenticate(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer <key>` (401 when auth is on and it is missing or wrong). The
    OpenAPI spec declares the scheme by hand (api/app.py): FastAPI's HTTPBearer would answer in its own error
    shape."""
    return services(request).authenticator.authenticate(request.headers.get("authorization"))


async def principal(request: Request) -> Principal:
    return authenticate(request)


EntityName = Annotated[str, Path(description="Entity name, e.g. `user`.", examples=["user"])]


async def readable_entity(request: Request, entity: EntityName) -> str:
    """The path's entity, once the caller is known (401) and allowed to read it (403)."""
    authenticate(request).check_may_read(entity)
    return entity


@dataclass(frozen=True)
class EntityReader:
    """Online reads of one entity on behalf of a caller already allowed to read it."""

    entity: str
    reader: OnlineReader

    async def read(self, ids: Sequence[object], features: Sequence[str] | None, version: int | None) -> bytes:
        return await self.reader.read(self.entity, ids, features, version)


async def entity_reader(request: Request, entity: EntityName) -> EntityReader:
    """Auth and the store in one dependency, on purpose: FastAPI solves each dependency anew per request (it
    re-inspects its path, query, header and cookie parameters), a fixed cost per dependency on every read,
    so one instead of three."""
    authenticate(request).check_may_read(entity)
    return EntityReader(entity, services(request).reader)
