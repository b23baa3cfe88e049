"""A large body is refused before it is read whole: without a key the 401 comes first, with one the 413, and
the server's memory stays bounded (a real `fstore serve`, a real 50 MB upload over a socket)."""

from __future__ import annotations

import json
import select
import socket

import psutil
import pytest
from fastapi.testclient import TestClient

from fstore.api.auth import hash_token
from tests.api.test_serve import serving_process

TOKEN = "limits-admin-token"
AUTH_ENV = {
    "FSTORE_API__AUTH": "true",
    "FSTORE_API__KEYS": json.dumps([{"name": "admin", "sha256": hash_token(TOKEN), "entities": ["*"]}]),
}
MB = 1024 * 1024


def post_streaming(base: str, size: int, headers: dict[str, str], *, chunked: bool) -> tuple[int, dict[str, str]]:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST /v1/online/user HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{framing}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    piece, sent = b"9" * 65536, 0
    try:
        while sent < size and not select.select([sock], [], [], 0)[0]:  # stop once the server has answered
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < _length(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    response = received.decode(errors="replace")
    status = int(response.split(" ", 2)[1])
    body = response.split("\r\n\r\n", 1)[1]
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("headers", "chunked", "status", "code"),
    [
        ({}, False, 401, "not_authenticated"),
        ({"Authorization": f"Bearer {TOKEN}"}, False, 413, "body_too_large"),
        ({"Authorization": f"Bearer {TOKEN}"}, True, 413, "body_too_large"),
    ],
)
def test_a_50_mb_body_is_refused_before_it_is_read(
    redis_url: str, headers: dict[str, str], chunked: bool, status: int, code: str
) -> None:
    with serving_process(env=AUTH_ENV) as (base, proc):
        server = psutil.Process(proc.pid)
        before = server.memory_info().rss
        got, body = post_streaming(base, 50 * MB, headers, chunked=chunked)
        grown = server.memory_info().rss - before
    assert (got, body["error"]) == (status, code), body
    assert grown < 20 * MB, f"the server grew by {grown / MB:.0f} MB"


def test_error_details_never_echo_unbounded_input(client: TestClient) -> None:
    response = client.post("/v1/online/user", json={"ids": [1], "features": ["f" * 3_000_000]})
    assert response.status_code == 422, (response.status_code, response.headers, response.content[:200])
    assert len(response.content) < 5_000 and "(cut: " in response.json()["detail"]


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
