"""The benchmarks run on any date and check their own work before printing (here at a small size: a test
asserts that they ran and what they checked, never their timings)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
