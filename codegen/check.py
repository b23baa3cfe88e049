"""`fstore schema check`: is schemas/ valid, and compatible with the schemas on a base git ref?

Three checks, each problem printed naming its file and field:
1. `buf lint` (schemas/buf.yaml: STANDARD style);
2. `buf breaking` against the same directory at `--against REF` (schemas/buf.yaml: FILE rules, so
   within a version only additions pass: a changed type, a renamed or deleted field fails);
Both run buf on a scratch copy of schemas/ beside the installed package's `fstore/options.proto` (buf
resolves imports inside its module only); the options file itself is not linted.
3. fstore's own rules (`fstore.schema.registry.schema_violations`): one key, one event time, supported types;
   an aggregation family's fields, functions and windows (`fstore.schema.aggregations.family_violations`); a
   default version for every entity with several.
Exit 1 on any problem, 0 otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import typer
from google.protobuf import descriptor_pb2, descriptor_pool

from fstore.codegen.protoc import ProtocError, descriptor_set, plugin
from fstore.errors import FstoreError, SchemaError
from fstore.schema import proto_include
from fstore.schema.registry import OPTIONS_FILE, OptionsReader, Registry, schema_violations

schema_app = typer.Typer(help="Check entity schemas (lint, breaking changes, fstore rules).", no_args_is_help=True)

ENTITY_PACKAGE_PREFIX = "fstore.entities."
_PROBLEM_LINE = re.compile(r"^[^:\s]+\.proto:\d+:\d+:")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def buf() -> str:
    found = plugin("buf")
    if found is None:
        raise FstoreError("buf not found: pip install 'buf-bin>=1.75,<2' (it is a dependency of fstore)")
    return found


@contextmanager
def buf_module(schemas: Path) -> Iterator[Path]:
    """A scratch copy of `schemas` with fstore's options file in it, at the path the schemas import."""
    with tempfile.TemporaryDirectory(prefix="fstore-buf-") as tmp:
        module = Path(tmp) / schemas.name
        shutil.copytree(schemas, module)
        with_options(module)
        yield module


def with_options(module: Path) -> None:
    target = module / OPTIONS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(proto_include() / OPTIONS_FILE, target)


def lint(schemas: Path) -> list[str]:
    with buf_module(schemas) as module:
        proc = _run([buf(), "lint", ".", "--exclude-path", OPTIONS_FILE], cwd=module)
    return _buf_problems(proc, schemas, "lint")


def git_root(path: Path) -> Path | None:
    proc = _run(["git", "rev-parse", "--show-toplevel"], cwd=path)
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def ref_exists(repo: Path, ref: str) -> bool:
    return _run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo).returncode == 0


def breaking(schemas: Path, against: str, report: Report) -> None:
    if shutil.which("git") is None:
        report.notes.append("git not found: breaking-change check skipped")
        return
    repo = git_root(schemas)
    if repo is None:
        report.notes.append(f"{schemas} is not in a git repository: breaking-change check skipped")
        return
    if not ref_exists(repo, against):
        report.notes.append(f"git ref {against!r} does not exist in {repo}: breaking-change check skipped")
        return
    subdir = schemas.resolve().relative_to(repo.resolve()).as_posix()
    listed = _run(["git", "ls-tree", "-d", "--name-only", against, "--", subdir], cwd=repo)
    if not listed.stdout.strip():
        report.notes.append(f"{subdir}/ does not exist at {against}: breaking-change check skipped (new schemas)")
        return
    with tempfile.TemporaryDirectory(prefix="fstore-buf-against-") as tmp, buf_module(schemas) as module:
        image = Path(tmp) / "against.binpb"
        base = _checkout(repo, against, subdir, Path(tmp) / "tree")
        with_options(base)
        built = _run([buf(), "build", ".", "-o", str(image)], cwd=base)
        if built.returncode != 0:
            report.notes.append(f"{subdir}/ at {against} does not build: breaking-change check skipped")
            return
        proc = _run([buf(), "breaking", ".", "--against", str(image)], cwd=module)
    report.problems += _buf_problems(proc, schemas, f"breaking change against {against}")


def _checkout(repo: Path, ref: str, subdir: str, into: Path) -> Path:
    """`subdir` as it is at `ref`, extracted under `into` (git archive: no work tree is touched)."""
    into.mkdir(parents=True)
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", "--format=tar", ref, "--", subdir], cwd=repo, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / subdir


def fstore_rules(schemas: Path, default_versions: dict[str, int] | None = None) -> list[str]:
    """fstore's rules over every entity message: those in fstore.entities.* packages, and any other message
    carrying the (fstore.entity) option; and a declared default version for every entity with several."""
    with tempfile.TemporaryDirectory(prefix="fstore-schema-check-") as tmp:
        try:
            data = descriptor_set(schemas, Path(tmp) / "descriptor_set.binpb")
        except ProtocError as exc:
            return [str(exc)]
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files:
        pool.Add(file_proto)
    try:
        options = OptionsReader(pool)
    except SchemaError as exc:
        return [f"schemas/: {exc}"]
    problems: list[str] = []
    for file_proto in files:
        if file_proto.name == OPTIONS_FILE or file_proto.name.startswith("google/protobuf/"):
            continue
        for message in file_proto.message_type:
            desc = pool.FindMessageTypeByName(f"{file_proto.package}.{message.name}")
            if file_proto.package.startswith(ENTITY_PACKAGE_PREFIX) or options.entity(desc) is not None:
                problems += [f"schemas/{p}" for p in schema_violations(desc, options)]
    return problems or default_version_problems(data, default_versions or {})


def default_version_problems(data: bytes, default_versions: dict[str, int]) -> list[str]:
    """Also the aggregation families' rules, which need the entities built first."""
    try:
        registry = Registry.from_descriptor_set(data, default_versions=default_versions)
    except SchemaError as exc:
        return [f"schemas/{line}" for line in str(exc).splitlines()]
    problems = []
    for entity in registry.undeclared_defaults():
        versions = registry.versions(entity)
        problems.append(
            f"entity {entity} has versions {', '.join(map(str, versions))} and no default version: unpinned "
            f"readers get v{registry.default_version(entity)} until fstore.yaml says otherwise. Write the choice "
            f"down: `default_versions: {{{entity}: {versions[0]}}}` (or {versions[-1]}) in fstore.yaml"
        )
    for entity in default_versions:
        try:
            registry.default_version(entity)
        except FstoreError as exc:  # a version or entity the schemas lack
            problems.append(str(exc))
    return problems


def check_schemas(schemas: Path, against: str, default_versions: dict[str, int] | None = None) -> Report:
    """`default_versions`: fstore.yaml's (the settings' when None)."""
    if default_versions is None:
        from fstore.settings import get_settings

        default_versions = get_settings().default_versions
    report = Report()
    report.problems += lint(schemas)
    breaking(schemas, against, report)
    report.problems += fstore_rules(schemas, default_versions)
    return report


@schema_app.command("check")
def check(
    against: str = typer.Option("main", "--against", help="Git ref whose schemas/ must stay compatible."),
    root: Path = typer.Option(Path("."), help="Repository root (holds schemas/)."),
) -> None:
    """Lint schemas/, check breaking changes against a git ref, apply fstore's schema rules; exit 1 on a problem."""
    schemas = (root / "schemas").resolve()
    if not schemas.is_dir():
        raise FstoreError(f"{schemas} is not a directory (pass --root, the repository root holding schemas/)")
    report = check_schemas(schemas, against)
    print_report(report)
    if report.problems:
        typer.secho(f"schema check failed: {len(report.problems)} problem(s)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo("schema check passed")


def print_report(report: Report) -> None:
    for note in report.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    for problem in report.problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _buf_problems(proc: subprocess.CompletedProcess[str], schemas: Path, what: str) -> list[str]:
    """buf prints one `file:line:col:message` per problem, paths relative to schemas/."""
    if proc.returncode == 0:
        return []
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if not lines:
        return [f"buf {what} failed with exit code {proc.returncode} and no message"]
    return [f"{schemas.name}/{line} ({what})" if _PROBLEM_LINE.match(line) else f"buf {what}: {line}" for line in lines]
