"""The templates of generated code (`*.tmpl`), and `render`, which fills them in."""

from __future__ import annotations

import re
from pathlib import Path

from fstore.schema.attributes import ATTR_ENTITY, ATTR_EVENT_TIME, ATTR_FINGERPRINT, ATTR_VERSION
from fstore.schema.registry import EntitySpec

_PLACEHOLDER = re.compile(r"\{[A-Z][A-Z0-9_]*\}")
# Every language's shared publisher names the attributes the ingest job routes on.
ATTRIBUTE_NAMES = {
    "ATTR_ENTITY": ATTR_ENTITY,
    "ATTR_VERSION": ATTR_VERSION,
    "ATTR_EVENT_TIME": ATTR_EVENT_TIME,
    "ATTR_FINGERPRINT": ATTR_FINGERPRINT,
}


def render(name: str, **values: str | int) -> str:
    """Template `name` with each `{KEY}` replaced by `values[KEY]`; a placeholder left unfilled is a bug."""
    text = (Path(__file__).parent / name).read_text()
    for key, value in values.items():
        text = text.replace(f"{{{key}}}", str(value))
    unfilled = sorted(set(_PLACEHOLDER.findall(text)))
    if unfilled:
        raise ValueError(f"template {name}: no value for {', '.join(unfilled)}")
    return text


def entity_values(spec: EntitySpec) -> dict[str, str | int]:
    """What every language's per-version publisher template names: the version's routing values, its
    message's full name and its event-time field (as the schema spells it)."""
    return {
        "ENTITY": spec.name,
        "VERSION": spec.version,
        "FINGERPRINT": spec.fingerprint,
        "FULL_NAME": spec.full_name,
        "FIELD": spec.event_time.name,
    }
