"""Runs protoc (the one bundled with grpcio-tools) over the schemas.

A feature repo's schemas import `fstore/options.proto`; it is found in the installed fstore package
(`fstore.schema.proto_include()`), never copied into the repo, and compiled with the repo's own files.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fstore.errors import FstoreError
from fstore.schema import proto_include
from fstore.schema.registry import OPTIONS_FILE


class ProtocError(FstoreError):
    pass


def schema_files(schemas_dir: Path) -> list[str]:
    """Every .proto under schemas/, relative to it, plus fstore's options file, sorted (so output order never
    depends on the disk)."""
    return sorted({OPTIONS_FILE, *(p.relative_to(schemas_dir).as_posix() for p in schemas_dir.rglob("*.proto"))})


def well_known_include() -> Path:
    """google/protobuf/*.proto as shipped with grpcio-tools."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def run_protoc(schemas_dir: Path, args: Sequence[str], files: Sequence[str] | None = None) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{schemas_dir}",
        f"-I{proto_include()}",
        f"-I{well_known_include()}",
        *args,
        *(files if files is not None else schema_files(schemas_dir)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProtocError(f"protoc failed ({' '.join(args)}):\n{proc.stderr.strip()}")


def plugin(name: str) -> str | None:
    """Path of a protoc plugin on PATH or beside this interpreter (the venv's bin/), or None."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def descriptor_set(schemas_dir: Path, out: Path) -> bytes:
    """A FileDescriptorSet of every schema with imports and source info (comments, for the docs)."""
    run_protoc(schemas_dir, [f"--descriptor_set_out={out}", "--include_imports", "--include_source_info"])
    return out.read_bytes()
