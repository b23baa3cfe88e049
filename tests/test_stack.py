"""`fstore up`, `status` and `down` in a feature repo of its own: a publish reaches the stack's read API,
and after `down` no process of the stack is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from fstore.testing import pubsub_emulator_script

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def fstore(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_") and k != "PUBSUB_EMULATOR_HOST"}
    proc = subprocess.run(
        [sys.executable, "-m", "fstore.cli", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if check:
        assert proc.returncode == 0, f"fstore {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def group_alive(pgid: int) -> bool:
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def test_up_publish_read_down_leaves_no_process(tmp_path: Path) -> None:
    if pubsub_emulator_script() is None:
        pytest.skip("Pub/Sub emulator not installed")
    fstore(tmp_path, "init", "shop")
    repo = tmp_path / "shop"
    fstore(repo, "codegen")
    fstore(repo, "up")
    stack = json.loads((repo / ".fstore/stack/stack.json").read_text())
    try:
        parts = {p["name"]: p for p in stack["parts"]}
        assert sorted(parts) == ["api", "ingest", "pubsub", "redis"]
        status = fstore(repo, "status").stdout
        assert status.count("running (pid") == 4, status

        event = {"customerId": 42, "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "country": "JP"}
        (repo / "one.jsonl").write_text(json.dumps(event) + "\n")
        fstore(repo, "publish", "--entity", "customer", "--file", "one.jsonl")
        url = f"{parts['api']['address']}/v1/online/customer?id=42"
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(url, timeout=5) as resp:
                row = json.loads(resp.read())["rows"][0]
            if row is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert row is not None and row["country"] == "JP"
        assert "JP" in fstore(repo, "online", "get", "customer", "42").stdout  # the CLI reads the stack's Redis too
    finally:
        down = fstore(repo, "down", check=False)
    assert down.returncode == 0, down.stderr
    assert not [p["name"] for p in stack["parts"] if group_alive(p["pid"])]
    assert fstore(repo, "status", check=False).returncode == 1
    (ledger,) = json.loads(fstore(repo, "ledger", "--json").stdout)
    assert (ledger["entity"], ledger["rows"]) == ("customer", 1)  # the streaming job's write is in history
