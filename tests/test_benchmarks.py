"""The benchmarks run on any date and check their own work before printing (here at a small size: a test
asserts that they ran and what they checked, never their timings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FSTORE_CONFIG"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_online_benchmark_writes_and_reads_back_every_row_today() -> None:
    out = bench("online.py", "--rows", "3000", "--reads", "10")
    assert "writes (compare-and-set" in out
    assert "3000 of 3000 rejected as older" in out
    assert out.count("get_online") == 3


def test_export_benchmark_runs_on_todays_dates(tmp_path: Path) -> None:
    out = bench("export.py", "--rows", "20000", "--users", "2000", "--spine-rows", "2000", "--data", str(tmp_path))
    assert "fstore:" in out and "floor:" in out
    days = sorted(p.name.removeprefix("date=") for p in (tmp_path / "offline" / "user_v1").iterdir())
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert days[-1] in (str(yesterday), str(yesterday - timedelta(days=1))), days  # the history ends yesterday


def test_aggregation_ingest_benchmark_applies_every_event() -> None:
    out = bench("aggregations.py", "ingest", "--events", "2000", "--keys", "200", "--history", "5")
    assert "2,000 order events for 200 keys" in out
    assert "aggregation step, CPU here + in Redis:" in out and "EVALSHA calls" in out


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="the script benchmark counts with valgrind")
def test_aggregation_script_benchmark_counts_instructions_of_the_applied_stream() -> None:
    out = bench("aggregations.py", "script", "--events", "2000", "--keys", "200", "--history", "5")
    assert "2,000 order events for 200 keys" in out
    count = int(out.split("tile script: ")[1].split(" instructions")[0].replace(",", ""))
    assert 10_000 < count < 1_000_000  # per event: a real count, neither zero nor the whole server's
