"""fstore as a user gets it: the wheel, installed into a fresh virtualenv outside this repository, drives a
feature repo of the user's own (`fstore init`) from schema check to an HTTP read, against a real Redis.

The user's own packages named `api` and `store` sit on the path throughout and must change nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fstore.testing import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    bin: Path
    wheel: Path
    decoys: Path  # a directory of the user's own `api` and `store` packages

    def env(self, **extra: str) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_") and k != "PUBSUB_EMULATOR_HOST"}
        path = f"{self.bin}{os.pathsep}{clean.get('PATH', '')}"
        return clean | {"PATH": path, "PYTHONPATH": str(self.decoys), "VIRTUAL_ENV": str(self.bin.parent)} | extra


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built from this checkout and installed with constraints.txt's versions into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", base / "dist", ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = (base / "dist").glob("fstore_streaming-*.whl")
    subprocess.run([sys.executable, "-m", "venv", base / "venv"], check=True)
    pip = [base / "venv" / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel]
    installing = subprocess.run(pip, capture_output=True, text=True, check=False, cwd=base)
    assert installing.returncode == 0, installing.stderr[-3000:]
    decoys = base / "decoys"
    for name in ("api", "store"):
        (decoys / name).mkdir(parents=True)
        (decoys / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name!r} package was imported')\n"
        )
    return Installed(base / "venv" / "bin", wheel, decoys)


def test_the_wheel_installs_only_the_fstore_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        top = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}
        names = set(wheel.namelist())
    assert top == {"fstore"}
    assert "fstore/py.typed" in names
    assert "fstore/schema/proto/fstore/options.proto" in names
    assert "fstore/codegen/templates/publisher.py.tmpl" in names
    assert "fstore/store/online/compare_and_set.lua" in names


def run(installed: Installed, cwd: Path, *cmd: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env or installed.env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_feature_repo_of_your_own_from_init_to_an_http_read(
    installed: Installed, tmp_path: Path, redis_server: RedisServer
) -> None:
    env = installed.env(FSTORE_REDIS_URL=redis_server.url)
    fstore = str(installed.bin / "fstore")
    run(installed, tmp_path, fstore, "init", "acme-features", env=env)
    repo = tmp_path / "acme-features"
    assert "python_package: acme_features" in (repo / "fstore.yaml").read_text()
    assert not list(repo.rglob("options.proto")), "fstore's options file is found in the package, never copied"

    assert "schema check passed" in run(installed, repo, fstore, "schema", "check", env=env)
    run(installed, repo, fstore, "codegen", env=env)
    assert (repo / "clients/registry/descriptor_set.binpb").is_file()
    assert (repo / "clients/python/acme_features/entities/customer/v1/customer_pb2.py").is_file()
    assert "up to date" in run(installed, repo, fstore, "codegen", "--check", env=env)

    out = run(
        installed, repo, fstore, "ingest", "backfill", "--entity", "customer", "--input", "data/customer.jsonl", env=env
    )
    assert "20 events read, 20 stored offline" in out and "0 dead letters" in out

    events = [json.loads(line) for line in (repo / "data/customer.jsonl").read_text().splitlines()]
    latest = max((e for e in events if e["customerId"] == 1), key=lambda e: e["eventTime"])
    read = (
        "from fstore import FeatureStore\n"
        "import json, sys\n"
        "row = FeatureStore.from_config().get_online('customer', [1, 999])\n"
        "print(json.dumps([row[0]['lifetime_orders'], row[0]['country'], row[1]]))\n"
    )
    assert json.loads(run(installed, repo, str(installed.bin / "python"), "-c", read, env=env)) == [
        int(latest["lifetimeOrders"]),
        latest["country"],
        None,
    ]

    now = datetime.now(UTC)
    spine = pa.table({"customer_id": pa.array([1, 2, 999], pa.int64()), "event_timestamp": [now, now, now]})
    pq.write_table(spine, repo / "spine.parquet")
    export = ("export", "--spine", "spine.parquet", "--features", "customer:*", "--out", "train.parquet")
    run(installed, repo, fstore, *export, env=env)
    train = pq.read_table(repo / "train.parquet").to_pylist()
    assert train[0]["customer__lifetime_orders"] == int(latest["lifetimeOrders"])
    assert train[2]["customer__country"] is None
    assert (repo / "train.parquet.manifest.json").is_file()

    port = free_port()
    server = subprocess.Popen(
        [fstore, "serve", "--port", str(port)], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        body = _get(f"http://127.0.0.1:{port}/v1/online/customer?id=1&features=country", server)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert body["rows"][0]["country"] == latest["country"]


def _get(url: str, server: subprocess.Popen[bytes], timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                output = server.stdout.read().decode() if server.stdout else ""
                raise AssertionError(f"the read API did not answer {url}:\n{output[-2000:]}") from None
            time.sleep(0.2)


def readme_block(heading: str) -> str:
    """The first ```bash block after `heading` in the README."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"\n{heading}\n") :]
    return section[section.index("```bash\n") + len("```bash\n") : section.index("\n```", section.index("```bash"))]


def test_the_readmes_own_feature_repo_commands_run_verbatim(installed: Installed, tmp_path: Path) -> None:
    block = readme_block("## Your own feature repo")
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) <= 6, "the README promises at most six commands"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=installed.env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert re.search(r"^1 +\d{4}-\d\d-\d\dT", proc.stdout, re.M), proc.stdout  # customer 1 read back, with its time
    assert "stopped" in proc.stdout
    assert not (tmp_path / "acme-features/.fstore/stack/stack.json").exists()
