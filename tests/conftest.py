"""Shared fixtures: real servers on free ports (Redis, the Pub/Sub emulator) and a clean settings env."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import settings as hypothesis_settings

from fstore.schema.registry import Registry
from fstore.settings import get_settings
from fstore.testing import PubSubEmulator, RedisClusterServers, RedisServer, ServiceUnavailable

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "clients/registry/descriptor_set.binpb"
Service = TypeVar("Service", RedisClusterServers, PubSubEmulator)

# Property tests and schemathesis draw the same examples on every run, so a red build means a change broke
# something; FSTORE_FUZZ=random explores new examples (do that when working on a property).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False, database=None)
hypothesis_settings.load_profile("explore" if os.environ.get("FSTORE_FUZZ") == "random" else "ci")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from defaults: no fstore.yaml of the developer's, no FSTORE_* from the shell."""
    for name in list(os.environ):
        if name.startswith("FSTORE_") or name == "PUBSUB_EMULATOR_HOST":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FSTORE_CONFIG", str(tmp_path / "fstore.yaml"))
    (tmp_path / "fstore.yaml").write_text("{}\n")
    monkeypatch.setenv("FSTORE_DATA_DIR", str(tmp_path / ".fstore"))
    monkeypatch.setenv("FSTORE_OFFLINE", f"duckdb:///{tmp_path / 'offline'}")
    # The feature repo under test is this repository (schemas/ with the demo's user and item entities).
    monkeypatch.setenv("FSTORE_DESCRIPTOR_SET", str(DESCRIPTOR_SET))
    monkeypatch.setenv("FSTORE_CODEGEN__PYTHON_PACKAGE", "demo_features")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.from_descriptor_set(DESCRIPTOR_SET)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis for the session; tests that need a clean one call `redis_url` (FLUSHALL)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    monkeypatch.setenv("FSTORE_REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    return redis_server.url


def started(service: Service, unavailable: str) -> Service:
    """`service`, started; the test skips (`unavailable: why`) where it cannot be started here."""
    try:
        service.start()
    except ServiceUnavailable as exc:
        pytest.skip(f"{unavailable}: {exc}")
    return service


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """One real Redis Cluster (three primaries) for the session; tests flush its nodes themselves."""
    servers = started(RedisClusterServers(), "cannot start a Redis Cluster here")
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """A fresh Pub/Sub emulator per session (its memory only grows); skips where it is not installed."""
    emulator = started(PubSubEmulator(), "Pub/Sub emulator unavailable")
    yield emulator
    emulator.stop()


@pytest.fixture
def pubsub_env(pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    return pubsub_emulator.host


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run with `@pytest.mark.anyio` on asyncio (the API's loop)."""
    return "asyncio"


class SchemaCopy:
    """A feature repo holding a copy of this repository's schemas/ and its own descriptor set (`fstore codegen
    --only registry`); `add_user_field()` adds an optional field to `user` v1 and regenerates, as a team would
    while a job or a server runs."""

    USER_PROTO = "schemas/fstore/entities/user/v1/user.proto"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.default_versions: dict[str, int] = {}
        shutil.copytree(ROOT / "schemas", root / "schemas")
        self.codegen()

    @property
    def descriptor_set(self) -> Path:
        return self.root / "clients/registry/descriptor_set.binpb"

    def registry(self) -> Registry:
        # read afresh, not the cached one
        return Registry.from_descriptor_set(self.descriptor_set, default_versions=self.default_versions)

    def codegen(self) -> subprocess.CompletedProcess[str]:
        """`fstore codegen --only registry` with this copy's default versions; raises if it fails."""
        cmd = [sys.executable, "-m", "fstore.cli", "codegen", "--root", str(self.root), "--only", "registry"]
        env = os.environ | {"FSTORE_DEFAULT_VERSIONS": json.dumps(self.default_versions)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, env=env)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def add_user_field(self, declaration: str = "optional double churn_score = 10") -> None:
        proto = self.root / self.USER_PROTO
        field = f'  {declaration} [(fstore.field) = {{description: "Added while running."}}];\n'
        proto.write_text(
            proto.read_text().replace("  repeated float embedding = 9", field + "  repeated float embedding = 9")
        )
        self.codegen()

    def add_user_v2(self, default_version: int | None = 1) -> None:
        """`user` v2 beside v1 (the same fields), with fstore.yaml's default version for `user` set to
        `default_version` (None: none declared, which the schema check refuses)."""
        v1 = self.root / self.USER_PROTO
        v2 = v1.parent.parent / "v2" / "user.proto"
        v2.parent.mkdir()
        v2.write_text(v1.read_text().replace(".v1", ".v2").replace("/v1;userv1", "/v2;userv2"))
        if default_version is None:
            self.default_versions.pop("user", None)
        else:
            self.default_versions["user"] = default_version
        self.codegen()


@pytest.fixture
def schema_copy(tmp_path: Path) -> SchemaCopy:
    return SchemaCopy(tmp_path / "feature-repo")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, for full-disk tests (needs root and mount; skipped with the reason elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full-disk test mounts a tmpfs: needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(mount: Path) -> Path:
    """Fill the file system at `mount` to the last byte it gives; returns the filler file (unlink it to free)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(mount).free < 64 * 1024
    return filler
