"""A broken settings file is one `error:` line naming the file (and the line and column for YAML syntax), never
a parser traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"project: [unclosed\n", "fstore.yaml:2:1: not valid YAML (expected ',' or ']'"),
        (b"project: fstore-local\n\tredis_url: x\n", "fstore.yaml:2:1: not valid YAML (found character '\\t'"),
        (b"- a\n- b\n", "the top level must be a mapping of settings"),
        (b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe binary", "not a text file"),
        (b"project: NOT_VALID\n", "project: Value error, 'NOT_VALID' is not a valid GCP project id"),
    ],
)
def test_a_broken_settings_file_is_one_line_naming_it(tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "fstore.yaml").write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_")}
    env["FSTORE_CONFIG"] = str(tmp_path / "fstore.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "fstore.cli", "ledger"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert says in lines[0]


def test_a_redis_url_naming_a_server_that_is_not_redis_is_one_line(tmp_path: Path) -> None:
    http = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
    try:
        assert http.stdout is not None
        port = http.stdout.readline().decode().split("port ")[1].split()[0]
        env = {k: v for k, v in os.environ.items() if k != "FSTORE_REDIS_URL"}
        env["FSTORE_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        proc = subprocess.run(
            [sys.executable, "-m", "fstore.cli", "online", "get", "user", "1"], env=env, capture_output=True, text=True
        )
    finally:
        http.kill()
        http.wait()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "answered, but not as Redis" in lines[0] and "FSTORE_REDIS_URL" in lines[0]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "fstore.yaml").write_bytes(b"project: [unclosed\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_")}
    env["FSTORE_CONFIG"] = str(tmp_path / "fstore.yaml")
    cmd = [sys.executable, "-m", "fstore.cli", "--debug", "ledger"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "SettingsError" in proc.stderr
