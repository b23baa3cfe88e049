"""Prometheus metrics of the read API: latency per route and entity, requests by status, rows, misses, errors.

Each app gets its own `CollectorRegistry`, so several apps in one process (the tests) never collide. With several
uvicorn workers, `fstore serve` sets PROMETHEUS_MULTIPROC_DIR and /metrics adds up every worker's values.
Label values are bounded on purpose: a route template (never the raw path) and an entity from the registry
("other" for any name a client invents), so a scanner cannot blow up the series count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# From 0.25 ms (a one-row read on loopback) to 2.5 s (something is badly wrong).
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNMATCHED_ROUTE = "unmatched"
OTHER_ENTITY = "other"


class ApiMetrics:
    def __init__(self, known_entities: frozenset[str] = frozenset()) -> None:
        self.registry = CollectorRegistry()
        self.known_entities = known_entities
        self.latency = Histogram(
            "fstore_api_request_duration_seconds",
            "Time from request to the end of the response, per route and entity.",
            ["route", "method", "entity"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "fstore_api_requests",
            "Requests answered, per route, entity and HTTP status.",
            ["route", "method", "entity", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "fstore_api_errors",
            "Requests answered with an error, per route, entity and error code (e.g. unknown_feature).",
            ["route", "entity", "error"],
            registry=self.registry,
        )
        self.rows = Counter(
            "fstore_api_rows_returned",
            "Rows found and returned by online reads.",
            ["entity", "version"],
            registry=self.registry,
        )
        self.misses = Counter(
            "fstore_api_row_misses",
            "Ids read online with no live row (unknown or expired): a null in the response.",
            ["entity", "version"],
            registry=self.registry,
        )

        # Label lookups cost ~3 us each in prometheus_client; a request needs two, so the children are kept here.
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, entity: str, status: int, seconds: float) -> None:
        key = (route, method, entity, str(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.latency.labels(route, method, entity),
                self.requests.labels(route, method, entity, key[3]),
            )
        children[0].observe(seconds)
        children[1].inc()

    def entity_label(self, entity: str | None) -> str:
        if not entity:
            return ""
        return entity if entity in self.known_entities else OTHER_ENTITY

    def count_rows(self, entity: str, version: int, found: int, missing: int) -> None:
        if found:
            self.rows.labels(entity, str(version)).inc(found)
        if missing:
            self.misses.labels(entity, str(version)).inc(missing)

    def exposition(self) -> tuple[bytes, str]:
        """The text /metrics serves, and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)
            return generate_latest(combined), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI (no per-request Request objects): it only times the call and reads what routing left in the
    scope (the matched route, the path's entity) and what an error handler left in the state (the error code)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends if the app raises before starting a response

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        route_label = getattr(route, "path", UNMATCHED_ROUTE)
        method = scope["method"]
        entity = self.metrics.entity_label(scope.get("path_params", {}).get("entity"))
        self.metrics.observe_request(route_label, method, entity, status, seconds)
        if status >= 400:
            error = scope.get("state", {}).get("error_code") or ("internal" if status >= 500 else "http_error")
            self.metrics.errors.labels(route_label, entity, error).inc()
