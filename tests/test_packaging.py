"""The sdist that Dataflow workers install (`--extra_package`, docs/ingest.md) works on its own: outside the
repository, the installed package finds its Lua script and its options file, and reads a feature repo's
descriptor set from the path its settings name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fstore.schema.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR_SET = ROOT / "clients/registry/descriptor_set.binpb"

CHECK = """
import json, fstore, fstore.ingest.pipeline
from fstore.schema import proto_include
from fstore.store.online.redis import COMPARE_AND_SET
from fstore.schema.registry import Registry
assert fstore.__file__.startswith({site!r}), fstore.__file__
assert (proto_include() / "fstore" / "options.proto").is_file()
registry = Registry.default()
print(json.dumps([registry.entities(), registry.get("user").fingerprint, COMPARE_AND_SET.decode()]))
"""


def test_the_sdist_installs_and_runs_outside_the_repository(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    sdist = tmp_path / build.stdout.strip().splitlines()[-1]
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, sdist],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_")} | {"PYTHONPATH": str(site)}
    env["FSTORE_DESCRIPTOR_SET"] = str(DESCRIPTOR_SET)
    run = subprocess.run(
        [sys.executable, "-c", CHECK.format(site=str(site))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    entities, fingerprint, script = json.loads(run.stdout)
    assert sorted(p.name for p in site.iterdir() if p.name != "bin" and not p.name.endswith("-info")) == ["fstore"]
    packaged = Registry.from_descriptor_set(DESCRIPTOR_SET)
    assert entities == packaged.entities() and fingerprint == packaged.get("user").fingerprint
    assert script == (ROOT / "store" / "online" / "compare_and_set.lua").read_text()
