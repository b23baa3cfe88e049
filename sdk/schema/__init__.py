"""The schema model, fstore's bottom layer: entity specs and the registry built from the descriptor set
(`registry`), the Pub/Sub routing contract (`attributes`), offline tables and their Arrow and BigQuery types
(`tables`), and fstore's own proto options (`proto/fstore/options.proto`, read by `fstore schema check` and
`fstore codegen` from the installed package). Every other area imports it; it imports none of them."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def proto_include() -> Path:
    """The directory holding `fstore/options.proto`, for protoc's and buf's include paths."""
    return Path(str(importlib.resources.files("fstore.schema") / "proto"))
