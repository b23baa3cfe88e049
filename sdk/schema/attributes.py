"""The Pub/Sub attributes of an entity event: the contract between producers and the ingest job.

Producers (the generated publishers, in every language) set them; the ingest job routes on them and
refuses an event whose fingerprint names a schema it does not know.
"""

from __future__ import annotations

from fstore.schema.registry import EntitySpec

ATTR_ENTITY = "fstore_entity"
ATTR_VERSION = "fstore_version"
ATTR_EVENT_TIME = "fstore_event_time"
ATTR_FINGERPRINT = "fstore_fingerprint"
ROUTING_ATTRIBUTES = (ATTR_ENTITY, ATTR_VERSION, ATTR_EVENT_TIME, ATTR_FINGERPRINT)


def routing_attributes(spec: EntitySpec) -> dict[str, str]:
    """The attributes the ingest job routes on (the generated publishers add the event time too)."""
    return {ATTR_ENTITY: spec.name, ATTR_VERSION: str(spec.version), ATTR_FINGERPRINT: spec.fingerprint}
