"""The read API's application factory: `create_app()` is what `fstore serve` (and uvicorn workers) run.

One FeatureStore per app, opened in the lifespan (so the first request does not pay for connecting) and closed at
shutdown. A store passed in by the caller (tests, embedding) is the caller's to close.
"""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from fstore.api.auth import Authenticator
from fstore.api.catalog import Catalog
from fstore.api.dependencies import Services
from fstore.api.errors import install_error_handlers
from fstore.api.gate import RequestGate
from fstore.api.metrics import ApiMetrics, MetricsMiddleware
from fstore.api.reads import OnlineReader
from fstore.api.routes import router
from fstore.settings import Settings, load_settings
from fstore.store import FeatureStore

BEARER_SCHEME = "bearer"
OTEL_SIGNS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_PYTHON_CONFIGURATOR",
)
DESCRIPTION = """Latest feature values per entity id from the online store (Redis), the entity catalog, health
and Prometheus metrics. Errors are `{"error": code, "detail": message}`; see docs/api.md."""


def create_app(settings: Settings | None = None, store: FeatureStore | None = None) -> FastAPI:
    settings = settings or (store.settings if store is not None else load_settings())
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = store is None
        fs = store if store is not None else FeatureStore(settings)
        try:
            fs.online  # connect (or start the embedded Redis) now, not on the first request  # noqa: B018
            metrics.known_entities = frozenset(fs.registry.entities() + fs.registry.families())
            app.state.services = Services(
                store=fs,
                reader=OnlineReader(fs, settings.api.max_ids, metrics),
                catalog=Catalog(fs),
                authenticator=Authenticator(settings.api),
                metrics=metrics,
            )
            # Everything built so far (modules, registry, app) lives as long as the process: move it out of the
            # cyclic GC's reach, so a full collection no longer walks it in the middle of a request (p99).
            gc.collect()
            gc.freeze()
            yield
        finally:
            app.state.services = None
            if owned:
                await close_store(fs)

    app = FastAPI(
        title="fstore read API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=native_telemetry(),
    )
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(RequestGate, max_body_bytes=settings.api.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the gate's answers too
    document_security(app, settings.api.auth)
    return app


def native_telemetry() -> TelemetryConfig:
    """FastAPI's OpenTelemetry bridge looks up the global providers on every request (a visible share of a
    1-id read's CPU in a profile: docs/performance-notes.md). fstore exports Prometheus metrics itself, so the
    bridge is on only where OpenTelemetry is configured through its standard environment."""
    wanted = any(os.environ.get(name) for name in OTEL_SIGNS)
    return {"tracing": wanted, "metrics": wanted, "logs": wanted}


def document_security(app: FastAPI, auth: bool) -> None:
    """With auth on, the spec says that every /v1/ route takes a bearer API key; with it off, it says nothing,
    as clients and schemathesis believe what it says."""
    if not auth:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {})["securitySchemes"] = {
                BEARER_SCHEME: {"type": "http", "scheme": "bearer", "description": "An fstore API key (api.keys)."}
            }
            for path, operations in spec.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{BEARER_SCHEME: []}]
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


async def close_store(fs: FeatureStore) -> None:
    """Close the async Redis pool on the loop that owns it (if the backend has one), then everything else."""
    aclose = getattr(fs.online, "aclose", None)
    if aclose is not None:
        result = aclose()
        if inspect.isawaitable(result):
            await result
    fs.close()
