"""Request and response shapes of the read API, as declared in its OpenAPI spec.

Online responses are encoded by `store.jsonrows` (the shape `fstore online get --json` prints) and returned as raw
bytes for speed; `OnlineResponse` documents that same shape.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

IDS_DESCRIPTION = (
    "Entity ids, rows come back in this order. int64 keys take JSON numbers or decimal strings "
    "(JavaScript clients should send ids above 2**53 as strings); string keys take strings."
)
FEATURES_DESCRIPTION = "Feature names to return; every feature of the version when omitted."
VERSION_DESCRIPTION = "Entity version; when omitted, the entity's default version (fstore.yaml default_versions)."


# An empty id names no entity: refused rather than answered with a null row.
NonEmptyStr = Annotated[StrictStr, StringConstraints(min_length=1)]


class OnlineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: a bool or a float is refused here instead of silently becoming an id.
    ids: list[StrictInt | NonEmptyStr] = Field(min_length=1, description=IDS_DESCRIPTION)
    features: list[str] | None = Field(None, description=FEATURES_DESCRIPTION)
    version: StrictInt | None = Field(None, description=VERSION_DESCRIPTION)


class OnlineResponse(BaseModel):
    entity: str
    version: int
    rows: list[dict[str, Any] | None] = Field(
        description="One entry per requested id, in request order: the key, the event time (RFC 3339, UTC) and "
        "the requested features, or null where the id is unknown or its row expired."
    )


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. unknown_feature, too_many_ids, forbidden.")
    detail: str = Field(description="What is wrong, naming the entity, feature, version or id at fault.")


class FieldInfo(BaseModel):
    name: str
    number: int
    type: str = Field(description="As in the generated docs, e.g. `int64`, `repeated float`, `timestamp`.")
    kind: str
    repeated: bool
    description: str
    pii: bool


class EntityVersionInfo(BaseModel):
    version: int
    full_name: str
    proto_file: str
    key: FieldInfo
    event_time: FieldInfo
    features: list[FieldInfo]
    ttl_seconds: int = Field(description="Online rows expire this long after their event time; 0: never.")
    owner: str
    description: str
    fingerprint: str


class EntitySummary(BaseModel):
    name: str
    default_version: int = Field(description="The version an unpinned read gets.")
    latest_version: int
    versions: list[int]
    owner: str
    description: str


class AggregationFeature(BaseModel):
    name: str
    function: str = Field(description="count, sum, mean, min, max or last.")
    field: str | None = Field(description="The event field aggregated; null for count.")
    window: str = Field(description="e.g. 1h, 7d, lifetime (docs/aggregations.md).")
    description: str


class FamilySummary(BaseModel):
    name: str = Field(description="Read like an entity: GET /v1/online/{name}.")
    source: str = Field(description="The entity version whose events it aggregates, e.g. order/v1.")
    group_by: str
    allowed_lateness_seconds: int
    features: list[AggregationFeature]
    description: str


class EntityList(BaseModel):
    entities: list[EntitySummary]
    families: list[FamilySummary] = Field(description="Aggregation families (docs/aggregations.md).")


class EntityDetail(BaseModel):
    name: str
    default_version: int = Field(description="The version an unpinned read gets.")
    latest_version: int
    versions: list[EntityVersionInfo]


class Health(BaseModel):
    status: str
    detail: str = ""


# Error responses every online route may give, for the OpenAPI spec.
ONLINE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body could not be parsed at all (e.g. not UTF-8)."},
    401: {"model": ErrorResponse, "description": "Auth is on and no valid API key was given."},
    403: {"model": ErrorResponse, "description": "The API key may not read this entity."},
    404: {"model": ErrorResponse, "description": "Unknown entity."},
    413: {"model": ErrorResponse, "description": "More ids than the configured maximum (api.max_ids)."},
    422: {"model": ErrorResponse, "description": "Unknown feature or version, an id of the wrong type, bad input."},
    503: {"model": ErrorResponse, "description": "The online store cannot be reached."},
}
CATALOG_ERRORS: dict[int | str, dict[str, Any]] = {code: ONLINE_ERRORS[code] for code in (401, 403, 404, 422)}
