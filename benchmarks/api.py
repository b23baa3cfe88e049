"""Read API benchmark: `fstore serve` over a Redis holding 1,000,000 `user` v1 rows, under a bounded load.

Starts its own Redis, loads the rows through the online store's compare-and-set write path, then for 1 and 2
uvicorn workers drives GET /v1/online/user with 1 id and with 100 random ids, at concurrency 1 and 16, and prints
p50/p99 latency and requests/s. The load generator is `wrk` (apt-get install wrk) when on PATH, else a Python
asyncio client (slower: it then competes harder with the server for the 2 cores). Finally it profiles one
worker (1 id and 100 ids, concurrency 16) with py-spy (when on PATH or given with --py-spy) and prints where
the server's CPU time goes, by layer.

    .venv/bin/python benchmarks/api.py                     # 1,000,000 rows; ~55 s of load, profiling included
    .venv/bin/python benchmarks/api.py --rows 100000 --seconds 3 --no-profile
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf.message import Message
from sample_users import random_user

from fstore.schema.registry import EntitySpec
from fstore.settings import load_settings
from fstore.store import FeatureStore
from fstore.testing import RedisServer, free_port

# Run as a script, this file's directory comes first on sys.path, where `api` means this module and not the
# package: the server under test therefore runs as a subprocess (`python -m fstore.cli serve`, cwd=ROOT).
ROOT = Path(__file__).resolve().parent.parent
BATCH = 5_000


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


# -- data -------------------------------------------------------------------------------------------------------


def user_templates(spec: EntitySpec, count: int, rng: random.Random) -> list[Message]:
    """Distinct, fully populated users (recent event times: none expires under the 30-day TTL)."""
    now = datetime.now(UTC)
    return [random_user(spec, rng, 0, now - timedelta(seconds=rng.randint(60, 86_400))) for _ in range(count)]


def load_users(fs: FeatureStore, rows: int) -> float:
    """Writes users 1..rows through FeatureStore.write_online in batches; returns rows/s of the writes."""
    spec = fs.registry.get("user")
    templates = user_templates(spec, 1_000, random.Random(1))
    writing = 0.0
    for start in range(1, rows + 1, BATCH):
        batch = []
        for user_id in range(start, min(start + BATCH, rows + 1)):
            msg = spec.message_class()
            msg.CopyFrom(templates[user_id % len(templates)])
            msg.user_id = user_id  # type: ignore[attr-defined]
            batch.append(msg)
        t = time.perf_counter()
        result = fs.write_online("user", batch)
        writing += time.perf_counter() - t
        assert result.written == len(batch), result
    return rows / writing


# -- the server -------------------------------------------------------------------------------------------------


@contextmanager
def fstore_serve(redis_url: str, workers: int, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "FSTORE_REDIS_URL": redis_url}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fstore.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield wait_ready(f"http://127.0.0.1:{port}", proc, log), proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# The framework's floor on this machine: a trivial FastAPI endpoint doing one async Redis GET, served the same way
# (uvicorn, uvloop, httptools, no access log). Measured in the same run, as the machine's noise varies.
FLOOR_APP = """
import sys
import redis.asyncio
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
client = None


@app.get("/v1/online/user")
async def one_get(id: str) -> Response:
    global client
    client = client or redis.asyncio.Redis.from_url(sys.argv[2])
    value = await client.get("fs:user:v1:" + id)
    return Response(b'{"found": %d}' % (value is not None), media_type="application/json")


@app.get("/readyz")
async def ready() -> Response:
    return Response(b"{}")


uvicorn.run(app, port=int(sys.argv[1]), loop="auto", http="auto", access_log=False, log_level="warning")
"""


@contextmanager
def floor_server(redis_url: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", FLOOR_APP, str(port), redis_url], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield wait_ready(f"http://127.0.0.1:{port}", proc, log), proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return base
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not become ready:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


# -- load generators --------------------------------------------------------------------------------------------

WRK_SCRIPT = """
math.randomseed(%(seed)d)
local rows, ids = %(rows)d, %(ids)d
request = function()
  local parts = {}
  for i = 1, ids do parts[i] = "id=" .. math.random(1, rows) end
  return wrk.format("GET", "/v1/online/user?" .. table.concat(parts, "&"))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99)))
  io.write(string.format("ERRORS %%d\\n", e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def run_wrk(base: str, rows: int, ids: int, concurrency: int, seconds: float, workdir: Path) -> LoadResult:
    script = workdir / f"ids{ids}.lua"
    script.write_text(WRK_SCRIPT % {"seed": random.randint(1, 10**6), "rows": rows, "ids": ids})
    # One wrk thread: it shares the 2 cores with the server, and one thread drives 16 connections easily.
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    errors = re.search(r"^ERRORS (\d+)$", out, re.M)
    if not result or not errors:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    requests, duration_us, p50_us, p99_us = map(int, result.groups())
    return LoadResult(requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000, int(errors[1]))


def run_python_client(base: str, rows: int, ids: int, concurrency: int, seconds: float) -> LoadResult:
    """The fallback load generator: `concurrency` keep-alive connections, each one request at a time."""
    import httpx

    async def drive() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        rng = random.Random(3)

        async def connection(client: httpx.AsyncClient) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                query = "&".join(f"id={rng.randint(1, rows)}" for _ in range(ids))
                t = time.perf_counter()
                response = await client.get(f"/v1/online/user?{query}")
                latencies.append(time.perf_counter() - t)
                errors += response.status_code != 200

        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, limits=limits) as client:
            started = time.perf_counter()
            await asyncio.gather(*(connection(client) for _ in range(concurrency)))
            took = time.perf_counter() - started
        ms = sorted(x * 1000 for x in latencies)
        return LoadResult(len(ms), took, statistics.median(ms), ms[int(len(ms) * 0.99)], errors)

    return asyncio.run(drive())


USE_WRK = bool(shutil.which("wrk"))


def run_load(base: str, rows: int, ids: int, concurrency: int, seconds: float, workdir: Path) -> LoadResult:
    if USE_WRK:
        return run_wrk(base, rows, ids, concurrency, seconds, workdir)
    return run_python_client(base, rows, ids, concurrency, seconds)


# -- profile ----------------------------------------------------------------------------------------------------

# Where a sample's CPU time goes: the innermost frame that is not generic plumbing (asyncio streams, contextlib,
# functools...) names the layer, so a socket write issued by redis-py counts as Redis, not as the event loop.
# Frames are "function (file:line)"; the first category whose marks a frame contains wins.
CATEGORIES = [
    ("JSON encoding (orjson, store/jsonrows.py)", ("(store/jsonrows.py",)),
    (
        "decoding rows (protobuf -> dict, store/events.py)",
        ("decode_rows", "(store/events.py", "(google/protobuf/", "(protobuf/"),
    ),
    ("Redis client (redis.asyncio, RedisOnlineStore)", ("(redis/", "(store/online/redis.py")),
    ("metrics (api/metrics.py, prometheus_client)", ("(api/metrics.py", "(prometheus_client/")),
    ("fstore request code (api/, store/: auth, ids, registry)", ("(api/", "(store/")),
    ("FastAPI routing, dependencies, validation (pydantic)", ("(fastapi/", "(pydantic")),
    ("Starlette routing, query-string parsing, responses", ("(starlette/", "(urllib/parse.py")),
    ("uvicorn HTTP protocol (httptools)", ("(uvicorn/", "(httptools")),
]
GENERIC = tuple(f"({m}" for m in ("asyncio/", "contextlib", "<frozen", "functools", "typing", "enum", "threading"))
EVENT_LOOP = "event loop itself (uvloop/asyncio callbacks)"


def category(frames: list[str]) -> str:
    # Frames up to the event loop's run() are the process's startup (cli, uvicorn.run): not where work happens.
    starts = [i for i, frame in enumerate(frames) if "(asyncio/runners.py" in frame or "(uvloop/" in frame]
    for frame in reversed(frames[starts[-1] + 1 :] if starts else frames):
        if any(g in frame for g in GENERIC):
            continue
        for name, marks in CATEGORIES:
            if any(m in frame for m in marks):
                return name
        return "other"
    return EVENT_LOOP


def profile(pyspy: str, pid: int, seconds: float, workdir: Path) -> str:
    out = workdir / "profile.txt"
    subprocess.run(
        [pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
         "--format", "raw", "--output", str(out), "--nonblocking"],
        check=True, capture_output=True,
    )  # fmt: skip
    by_category: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        by_leaf[frames[-1]] += count
        by_category[category(frames)] += count
    lines = [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_category.most_common()]
    lines.append("  hottest functions (self time):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_leaf.most_common(8)]
    return f"{total} samples (on-CPU only)\n" + "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=4, help="load per configuration (10 configurations)")
    parser.add_argument("--python-client", action="store_true", help="use the Python load generator even with wrk")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy binary (default: from PATH)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-floor", action="store_true", help="skip the trivial-endpoint floor measurement")
    args = parser.parse_args()

    global USE_WRK
    USE_WRK = USE_WRK and not args.python_client
    workdir = Path(tempfile.mkdtemp(prefix="fstore-bench-api-"))
    print(f"load generator: {'wrk' if USE_WRK else 'python asyncio + httpx'}; logs in {workdir}")
    with RedisServer() as redis_server:
        t = time.perf_counter()
        with FeatureStore(load_settings(redis_url=redis_server.url)) as fs:
            rate = load_users(fs, args.rows)
        print(f"loaded {args.rows:,} user rows in {time.perf_counter() - t:.1f} s (writes: {rate:,.0f} rows/s)")

        print(f"\n{'server':>16} {'ids':>4} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        load_seconds = 0.0

        def measure(name: str, base: str, ids: int, concurrency: int) -> None:
            nonlocal load_seconds
            r = run_load(base, args.rows, ids, concurrency, args.seconds, workdir)
            load_seconds += r.seconds
            print(
                f"{name:>16} {ids:>4} {concurrency:>4} {r.rate:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6}",
                flush=True,
            )

        for workers in args.workers:
            with fstore_serve(redis_server.url, workers, workdir / f"serve-{workers}.log") as (base, _):
                run_load(base, args.rows, 1, 16, 1.0, workdir)  # warm-up: connections, imports, caches
                for ids in (1, 100):
                    for concurrency in (1, 16):
                        measure(f"fstore {workers} worker{'s' if workers > 1 else ''}", base, ids, concurrency)
        if not args.no_floor:
            with floor_server(redis_server.url, workdir / "floor.log") as (base, _):
                run_load(base, args.rows, 1, 16, 1.0, workdir)
                for concurrency in (1, 16):
                    measure("floor 1 worker", base, 1, concurrency)
        print(f"total load: {load_seconds:.0f} s")

        if args.no_profile:
            return
        if not args.py_spy:
            print("\nprofile: skipped (no py-spy; `pip install py-spy` anywhere and pass --py-spy PATH)")
            return
        with fstore_serve(redis_server.url, 1, workdir / "serve-profiled.log") as (base, proc):
            for ids in (1, 100):
                print(f"\nprofile: 1 worker, {ids} id(s), concurrency 16 (saturated: samples are work, not waiting)")
                print(profile_under_load(args.py_spy, proc.pid, base, args.rows, ids, workdir))


def profile_under_load(pyspy: str, pid: int, base: str, rows: int, ids: int, workdir: Path) -> str:
    seconds = 4
    results: list[LoadResult] = []
    load = threading.Thread(target=lambda: results.append(run_load(base, rows, ids, 16, seconds + 1, workdir)))
    load.start()
    time.sleep(0.5)
    report = profile(pyspy, pid, seconds, workdir)
    load.join()
    return f"  ({results[0].rate:,.0f} req/s while sampled) {report}"


if __name__ == "__main__":
    main()
