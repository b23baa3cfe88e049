"""fstore: a streaming feature store (Protobuf entity schemas, Beam ingest, Redis online, DuckDB/BigQuery offline).

`from fstore import FeatureStore` is the library's front door. The package is one namespace built from the
repository's folders: `fstore.schema` (entity specs, the registry, fstore's rules and type mappings: the
bottom layer), `fstore.store` (online and offline stores), `fstore.ingest` (the Beam job), `fstore.api` (the
read API), `fstore.codegen` (clients, docs and schemas from the .proto files), and at the top the `fstore`
command (`fstore.cli`), the local stack and the demo. `fstore.testing` starts real servers for tests.

Nothing heavy is imported here: `FeatureStore` is loaded on first use, so `fstore --help` and a Dataflow
worker's imports stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fstore.store import FeatureStore

__all__ = ["DISTRIBUTION", "FeatureStore", "__version__"]

DISTRIBUTION = "fstore-streaming"  # the PyPI name (`fstore` there is an unrelated project)
__version__: str


def __getattr__(name: str) -> Any:
    if name == "FeatureStore":
        from fstore.store import FeatureStore

        return FeatureStore
    if name == "__version__":
        import importlib.metadata

        return importlib.metadata.version(DISTRIBUTION)
    raise AttributeError(f"module 'fstore' has no attribute {name!r}")
