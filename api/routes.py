"""The routes: wiring only. Reading lives in api/reads.py, the catalog in api/catalog.py, auth in api/auth.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response

from fstore.api.auth import Principal
from fstore.api.catalog import Catalog
from fstore.api.dependencies import (
    EntityReader,
    api_metrics,
    catalog,
    entity_reader,
    feature_store,
    principal,
    readable_entity,
)
from fstore.api.health import READY, readiness
from fstore.api.metrics import ApiMetrics
from fstore.api.models import (
    CATALOG_ERRORS,
    FEATURES_DESCRIPTION,
    IDS_DESCRIPTION,
    ONLINE_ERRORS,
    VERSION_DESCRIPTION,
    EntityDetail,
    EntityList,
    Health,
    NonEmptyStr,
    OnlineRequest,
    OnlineResponse,
)
from fstore.api.reads import split_features
from fstore.store import FeatureStore

JSON = "application/json"

router = APIRouter()


@router.get(
    "/v1/online/{entity}",
    response_model=OnlineResponse,
    responses=ONLINE_ERRORS,
    tags=["online"],
    summary="Latest feature values of some ids (query string)",
)
async def get_online(
    reader: Annotated[EntityReader, Depends(entity_reader)],
    ids: Annotated[list[NonEmptyStr], Query(alias="id", min_length=1, description=IDS_DESCRIPTION)],
    features: Annotated[
        list[str] | None, Query(description=FEATURES_DESCRIPTION + " Comma-separated, or repeated.")
    ] = None,
    version: Annotated[int | None, Query(description=VERSION_DESCRIPTION)] = None,
) -> Response:
    body = await reader.read(ids, split_features(features), version)
    return Response(body, media_type=JSON)


@router.post(
    "/v1/online/{entity}",
    response_model=OnlineResponse,
    responses=ONLINE_ERRORS,
    tags=["online"],
    summary="Latest feature values of some ids (JSON body)",
)
async def post_online(
    reader: Annotated[EntityReader, Depends(entity_reader)],
    query: Annotated[OnlineRequest, Body()],
) -> Response:
    body = await reader.read(query.ids, query.features, query.version)
    return Response(body, media_type=JSON)


@router.get("/v1/entities", response_model=EntityList, responses={401: CATALOG_ERRORS[401]}, tags=["catalog"])
async def list_entities(
    caller: Annotated[Principal, Depends(principal)], entities: Annotated[Catalog, Depends(catalog)]
) -> EntityList:
    """Every entity the caller may read, with its versions, owner and description."""
    return entities.entities(caller)


@router.get("/v1/entities/{entity}", response_model=EntityDetail, responses=CATALOG_ERRORS, tags=["catalog"])
async def describe_entity(
    entity: Annotated[str, Depends(readable_entity)], entities: Annotated[Catalog, Depends(catalog)]
) -> EntityDetail:
    """Every version of one entity: key, event time, features (types, descriptions, PII), TTL, fingerprint."""
    return entities.entity(entity)


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The process is up (no store is touched)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
async def readyz(store: Annotated[FeatureStore, Depends(feature_store)]) -> Response:
    """The online store answers a ping within a couple of seconds."""
    health = await readiness(store)
    return Response(health.model_dump_json(), status_code=200 if health.status == READY else 503, media_type=JSON)


@router.get("/metrics", tags=["health"], response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(registry: Annotated[ApiMetrics, Depends(api_metrics)]) -> Response:
    """Prometheus exposition."""
    body, content_type = registry.exposition()
    return Response(body, media_type=content_type)
