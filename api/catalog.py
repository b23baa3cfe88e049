"""The catalog: what the registry knows about each entity (versions, fields, types, key, TTL, descriptions).

Built from `EntitySpec`, the same source the generated docs read, so the API and the docs cannot disagree.
"""

from __future__ import annotations

from fstore.api.auth import Principal
from fstore.api.models import (
    AggregationFeature,
    EntityDetail,
    EntityList,
    EntitySummary,
    EntityVersionInfo,
    FamilySummary,
    FieldInfo,
)
from fstore.schema.aggregations import FamilySpec
from fstore.schema.registry import EntitySpec, FieldSpec, Registry
from fstore.store import FeatureStore


def field_info(field: FieldSpec) -> FieldInfo:
    return FieldInfo(
        name=field.name,
        number=field.number,
        type=field.type_name,
        kind=field.kind,
        repeated=field.repeated,
        description=field.description,
        pii=field.pii,
    )


def version_info(spec: EntitySpec) -> EntityVersionInfo:
    return EntityVersionInfo(
        version=spec.version,
        full_name=spec.full_name,
        proto_file=spec.proto_file,
        key=field_info(spec.key),
        event_time=field_info(spec.event_time),
        features=[field_info(f) for f in spec.features],
        ttl_seconds=spec.ttl_seconds,
        owner=spec.owner,
        description=spec.description,
        fingerprint=spec.fingerprint,
    )


class Catalog:
    """Read-only views of the store's registry (the current one: it may be reloaded); a caller sees only the
    entities its key may read."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    @property
    def registry(self) -> Registry:
        return self.store.registry

    def entities(self, principal: Principal) -> EntityList:
        summaries = []
        for name in self.registry.entities():
            if not principal.may_read(name):
                continue
            default = self.registry.get(name)
            summaries.append(
                EntitySummary(
                    name=name,
                    default_version=default.version,
                    latest_version=max(self.registry.versions(name)),
                    versions=self.registry.versions(name),
                    owner=default.owner,
                    description=default.description,
                )
            )
        families = [
            family_summary(self.registry.family(name)) for name in self.registry.families() if principal.may_read(name)
        ]
        return EntityList(entities=summaries, families=families)

    def entity(self, name: str) -> EntityDetail:
        """Raises UnknownEntityError (404) for a name the registry lacks."""
        versions = self.registry.versions(name)
        return EntityDetail(
            name=name,
            default_version=self.registry.default_version(name),
            latest_version=max(versions),
            versions=[version_info(self.registry.get(name, v)) for v in versions],
        )


def family_summary(family: FamilySpec) -> FamilySummary:
    return FamilySummary(
        name=family.name,
        source=family.source.ref,
        group_by=family.group_by.name,
        allowed_lateness_seconds=family.allowed_lateness // 1_000_000,
        features=[
            AggregationFeature(
                name=f.name,
                function=f.function,
                field=f.field.name if f.field else None,
                window=f.window_text,
                description=f.description,
            )
            for f in family.features
        ],
        description=family.description,
    )
