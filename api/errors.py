"""How errors leave the API: one JSON shape, `{"error": "<code>", "detail": "<message naming the problem>"}`.

Store errors keep their own messages (they already name the entity, version, feature or id at fault); this
module only decides their HTTP status. Bad input is always a 4xx: nothing a client sends should reach a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from fstore.errors import (
    InvalidIdError,
    StoreUnavailableError,
    UnknownEntityError,
    UnknownFeatureError,
    UnknownVersionError,
)
from fstore.store.jsonrows import dumps

# Store error -> (HTTP status, error code). Unknown entity is "not found"; a bad feature, version or id is a
# well-formed request the server cannot process (422), as the issue asks.
STORE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    UnknownEntityError: (404, "unknown_entity"),
    UnknownVersionError: (422, "unknown_version"),
    UnknownFeatureError: (422, "unknown_feature"),
    InvalidIdError: (422, "invalid_id"),
    StoreUnavailableError: (503, "store_unavailable"),
}


class ApiError(Exception):
    """An error the API raises itself (auth, limits); carries its status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotAuthenticatedError(ApiError):
    status = 401
    code = "not_authenticated"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenEntityError(ApiError):
    status = 403
    code = "forbidden"


class TooManyIdsError(ApiError):
    # 413 rather than 422: the request is valid in form and only too large, which a client fixes by splitting.
    status = 413
    code = "too_many_ids"


MAX_DETAIL_CHARS = 1_000


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Input quoted in an error, cut: an error never echoes an unbounded request back."""
    return text if len(text) <= limit else f"{text[:limit]}… (cut: {len(text):,} characters)"


def error_response(
    request: Request, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    # Kept on the request state so the metrics middleware can count errors by code without parsing bodies.
    request.state.error_code = code
    body = dumps({"error": code, "detail": bounded(detail)})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def store_error_status(exc: Exception) -> tuple[int, str]:
    for error_class in type(exc).__mro__:
        if error_class in STORE_ERRORS:
            return STORE_ERRORS[error_class]
    return 500, "internal"  # unreachable: handlers are installed for STORE_ERRORS' classes only


def describe_validation_errors(errors: Any) -> str:
    """FastAPI's validation errors as one line, e.g. `query.version: Input should be a valid integer (got 'x')`."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        got = f" (got {err['input']!r})" if "input" in err and err.get("type") != "missing" else ""
        parts.append(f"{where}: {err.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on the request's path (asked of the routes themselves, included
    routers too)."""
    routes = request.app.routes
    return [m for m in HTTP_METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(request, exc.status, exc.code, exc.detail, exc.headers)

    async def on_store_error(request: Request, exc: Exception) -> Response:
        status, code = store_error_status(exc)
        return error_response(request, status, code, str(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(request, 422, "invalid_request", describe_validation_errors(exc.errors()))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(request, exc.status_code, code, str(exc.detail), headers)

    app.add_exception_handler(ApiError, on_api_error)
    for error_class in STORE_ERRORS:
        app.add_exception_handler(error_class, on_store_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
