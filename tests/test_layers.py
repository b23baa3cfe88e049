"""The layer contracts (`lint-imports`, in `make test`) hold, and catch what they promise to: the store
importing codegen, ingest or api, and fstore importing a feature repo's generated client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fstore

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(package_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = str(package_root)
    cmd = [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def test_the_layers_hold() -> None:
    run = lint()
    assert run.returncode == 0, run.stdout[-3000:]


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("store/ids.py", "import fstore.codegen.generate", "fstore.store.ids -> fstore.codegen.generate"),
        ("store/ids.py", "import fstore.ingest.events", "fstore.store.ids -> fstore.ingest.events"),
        ("store/online/base.py", "import fstore.api.models", "fstore.store.online.base -> fstore.api.models"),
        ("schema/registry.py", "import fstore.store.ids", "fstore.schema.registry -> fstore.store.ids"),
        ("store/ids.py", "import demo_features.entities", "fstore.store.ids -> demo_features"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = tmp_path / "fstore"
    shutil.copytree(Path(fstore.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    run = lint(tmp_path)
    assert run.returncode == 1, run.stdout[-3000:]
    assert broken in run.stdout
