"""`fstore codegen`: every output derived from schemas/, built in a scratch dir, then written or checked.

Each generator is a function `(Context) -> Outputs` owning a set of output directories. Generators
whose tool is missing on this machine say how to install it and are skipped (their directories are
then neither written nor checked); the rest still run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fstore.codegen.protoc import descriptor_set
from fstore.schema.registry import Registry
from fstore.settings import DEFAULT_GO_MODULE, DEFAULT_TYPESCRIPT_PACKAGE

Outputs = dict[str, bytes]  # path relative to the repository root -> content
TOOLS_DIR = ".fstore/tools"  # generator tools installed on first use (npm/pip packages), per checkout, gitignored


class ToolMissing(Exception):
    """A generator's tool is not installed; the message says how to install it."""


@dataclass
class Context:
    root: Path
    scratch: Path
    descriptor_set: bytes
    registry: Registry
    python_package: str  # the generated Python client's package (clients/python/<package>)
    go_module: str = DEFAULT_GO_MODULE
    typescript_package: str = DEFAULT_TYPESCRIPT_PACKAGE
    notes: list[str] = field(default_factory=list)
    # True under `fstore codegen --check` (CI): generators must not install tools or touch the network, and
    # skip (ToolMissing) rather than report stale files when their local tool differs from the committed output's.
    checking: bool = False

    @property
    def schemas(self) -> Path:
        return self.root / "schemas"

    @property
    def tools(self) -> Path:
        return self.root / TOOLS_DIR


@dataclass(frozen=True)
class Generator:
    name: str
    owns: tuple[str, ...]  # output directories (relative to root) this generator fully owns
    run: Callable[[Context], Outputs]


@dataclass
class Result:
    outputs: Outputs
    owned: tuple[str, ...]
    skipped: dict[str, str]  # generator -> why (how to install its tool)


def generators() -> list[Generator]:
    from fstore.codegen import bigquery, docs, go, java, python, registry, typescript

    modules = (registry, python, bigquery, docs, go, java, typescript)
    return [Generator(m.__name__.rsplit(".", 1)[1], m.OWNS, m.generate) for m in modules]


def build(
    root: Path,
    python_package: str,
    only: set[str] | None = None,
    checking: bool = False,
    *,
    go_module: str = DEFAULT_GO_MODULE,
    typescript_package: str = DEFAULT_TYPESCRIPT_PACKAGE,
) -> Result:
    outputs: Outputs = {}
    owned: list[str] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fstore-codegen-") as tmp:
        scratch = Path(tmp)
        data = descriptor_set(root / "schemas", scratch / "descriptor_set.binpb")
        registry = Registry.from_descriptor_set(data)
        ctx = Context(root, scratch, data, registry, python_package, go_module, typescript_package, checking=checking)
        for gen in generators():
            if only is not None and gen.name not in only:
                continue
            try:
                produced = gen.run(ctx)
            except ToolMissing as exc:
                skipped[gen.name] = str(exc)
                continue
            outside = [p for p in produced if not p.startswith(tuple(o + "/" for o in gen.owns))]
            assert not outside, f"generator {gen.name} wrote outside its directories: {outside}"
            outputs.update(produced)
            owned.extend(gen.owns)
    return Result(outputs=dict(sorted(outputs.items())), owned=tuple(owned), skipped=skipped)


def existing(root: Path, owned: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for directory in owned:
        base = root / directory
        if base.is_dir():
            found.update(
                p.relative_to(root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and "node_modules" not in p.parts
            )
    return found


def stale(root: Path, result: Result) -> list[str]:
    """Files whose committed content differs from what the schemas produce, plus missing and extra ones."""
    on_disk = existing(root, result.owned)
    changed = [p for p, data in result.outputs.items() if not (root / p).is_file() or (root / p).read_bytes() != data]
    extra = sorted(on_disk - set(result.outputs))
    return sorted(changed) + extra


def write(root: Path, result: Result) -> list[str]:
    """Write every output and remove files in owned directories that are no longer produced."""
    written = []
    for rel in stale(root, result):
        path = root / rel
        if rel in result.outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(result.outputs[rel])
        else:
            path.unlink()
        written.append(rel)
    return written
