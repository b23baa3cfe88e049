"""The runtime's view of the schemas: clients/registry/descriptor_set.binpb and fingerprints.json.

Every fstore process (ingest, the stores, the read API) builds its `Registry` from this descriptor set,
which `descriptor_set` in fstore.yaml points at (this path by default); no generated code is imported.
fingerprints.json keeps every fingerprint each entity version has had, so events from producers built
before a compatible edit (a field added) stay valid.
"""

from __future__ import annotations

import json

from fstore.codegen.generate import Context, Outputs
from fstore.schema.registry import FINGERPRINTS_FILE, read_fingerprints

ROOT = "clients/registry"
OWNS = (ROOT,)
DESCRIPTOR_SET = f"{ROOT}/descriptor_set.binpb"


def generate(ctx: Context) -> Outputs:
    return {DESCRIPTOR_SET: ctx.descriptor_set, f"{ROOT}/{FINGERPRINTS_FILE}": _fingerprints(ctx)}


def _fingerprints(ctx: Context) -> bytes:
    """The committed history plus today's fingerprints. Within a version only compatible edits pass
    `fstore schema check`, so events from older producers stay valid."""
    history = read_fingerprints(ctx.root / ROOT / FINGERPRINTS_FILE)
    for spec in ctx.registry:
        history[spec.ref] = sorted({*history.get(spec.ref, []), spec.fingerprint})
    return (json.dumps(dict(sorted(history.items())), indent=2) + "\n").encode()
