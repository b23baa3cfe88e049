"""What is checked before a request's body is read: the caller's key and its right to the path's entity (401,
403), and the body's size (413 at `api.max_body_bytes`, from Content-Length or while the body streams in).

Without it FastAPI parses a body before any dependency runs, so an unauthenticated 47 MB POST was read and
parsed (the server's RSS peaked at 447 MB) before its 401. The body is buffered here, up to the limit, and
handed on whole; memory per request is bounded by the limit.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fstore.api.errors import ApiError, bounded
from fstore.store.jsonrows import dumps

ONLINE_PREFIX = "/v1/online/"


class BodyTooLargeError(ApiError):
    status = 413
    code = "body_too_large"


class RequestGate:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            self._check_caller(scope)
            declared = _header(scope, b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                raise self._too_large(declared)
            body = await self._read_body(receive)
        except ApiError as exc:
            await _respond(scope, send, exc)
            return

        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, when it comes

        await self.app(scope, replay, send)

    def _check_caller(self, scope: Scope) -> None:
        path: str = scope["path"]
        services = getattr(scope["app"].state, "services", None)
        if services is None or not path.startswith(ONLINE_PREFIX):
            return
        entity = path[len(ONLINE_PREFIX) :].split("/", 1)[0]
        authorization = _header(scope, b"authorization")
        services.authenticator.authenticate(authorization).check_may_read(entity)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(f"more than {self.max_body_bytes}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, size: str) -> BodyTooLargeError:
        return BodyTooLargeError(
            f"request body of {bounded(size, 40)} bytes is above the limit of {self.max_body_bytes:,} "
            "(api.max_body_bytes); send fewer ids per request"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _respond(scope: Scope, send: Send, exc: ApiError) -> None:
    state: dict[str, Any] = scope.setdefault("state", {})
    state["error_code"] = exc.code  # counted by the metrics middleware, as every error is
    body = dumps({"error": exc.code, "detail": exc.detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    # The body was not read: the connection cannot be reused for another request.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
