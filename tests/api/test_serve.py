"""`fstore serve`: the refusal to serve beyond loopback with auth off, and real servers (1 and 2 workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from fstore.api.cli import exposure_problem, is_loopback
from fstore.cli import app
from fstore.testing import free_port


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", ""])
def test_other_hosts_are_remote(host: str) -> None:
    assert not is_loopback(host)
    assert exposure_problem(host, auth=False, allow_unauthenticated_remote=False) is not None
    assert exposure_problem(host, auth=True, allow_unauthenticated_remote=False) is None
    assert exposure_problem(host, auth=False, allow_unauthenticated_remote=True) is None


def test_serve_refuses_0000_with_auth_off() -> None:
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0" in result.output
    assert "--allow-unauthenticated-remote" in result.output


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    with serving_process(*args, env=env) as (base, _):
        yield base


@contextmanager
def serving_process(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fstore.cli", "serve", "--port", str(port), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"fstore serve exited with {proc.returncode}:\n{out}")
            try:
                if get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "fstore serve did not answer /healthz within 30 s"
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_on_0000_when_allowed_explicitly(redis_url: str, seeded: None) -> None:
    with serving("--host", "0.0.0.0", "--allow-unauthenticated-remote") as base:
        status, body = get(f"{base}/v1/online/user?id=1&features=country")
        assert status == 200 and json.loads(body)["rows"][0]["country"] == "FR"


def test_serve_on_0000_with_the_setting(redis_url: str) -> None:
    with serving("--host", "0.0.0.0", env={"FSTORE_API__ALLOW_UNAUTHENTICATED_REMOTE": "true"}) as base:
        assert get(f"{base}/readyz")[0] == 200


def test_serve_with_two_workers_adds_up_their_metrics(redis_url: str, seeded: None) -> None:
    with serving("--workers", "2") as base:
        for _ in range(20):
            status, body = get(f"{base}/v1/online/user?id=2&features=age")
            assert status == 200 and json.loads(body)["rows"][0]["age"] == 45
        # A request is counted just after its response is sent, possibly by the other worker than the one
        # answering /metrics: poll briefly for the last one.
        deadline = time.monotonic() + 5
        while True:
            metrics = get(f"{base}/metrics")[1].decode()
            counted = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("fstore_api_requests_total{") and 'status="200"' in line and 'entity="user"' in line
            )
            if counted == 20 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert counted == 20, metrics
