"""TypeScript client: `@bufbuild/protoc-gen-es` output under clients/typescript/src, plus a package.json.

The plugin is pinned (PROTOC_GEN_ES) and installed from npm into a per-checkout cache, `.fstore/tools`
(gitignored), the first time `fstore codegen` runs; the generated code depends on `@bufbuild/protobuf`
of the same version. `fstore codegen --check` never installs (CI must not need the network): without the
cached plugin it skips TypeScript with a note. Beside each entity version's `*_pb.ts`, `*_publisher.ts` gives
producers the version's routing attributes (`attributes`, `encode`, `publish`) on the shared REST publisher
`src/fstore/publish.ts` (global fetch, no dependency but `@bufbuild/protobuf`).
"""

from __future__ import annotations

import json
import posixpath
import shutil
import subprocess
from pathlib import Path

from fstore.codegen.generate import TOOLS_DIR, Context, Outputs, ToolMissing
from fstore.codegen.protoc import run_protoc
from fstore.codegen.templates import ATTRIBUTE_NAMES, entity_values, render
from fstore.schema.registry import EntitySpec

ROOT = "clients/typescript"
PUBLISH_MODULE = "fstore/publish"  # the shared publisher, under src/
OWNS = (ROOT,)
PROTOC_GEN_ES = "2.17.0"  # also the @bufbuild/protobuf runtime the generated code needs
TYPESCRIPT = "5.4.5"  # the compiler the tests check the generated package with
PACKAGES = (f"@bufbuild/protoc-gen-es@{PROTOC_GEN_ES}", f"typescript@{TYPESCRIPT}")
INSTALL_HINT = (
    f"needs node and npm (protoc-gen-es declares Node.js 22+) to install @bufbuild/protoc-gen-es@{PROTOC_GEN_ES} "
    f"into {TOOLS_DIR}"
)


def installed_plugin(tools: Path) -> Path | None:
    """The cached plugin if it is the pinned version."""
    package = tools / "node_modules/@bufbuild/protoc-gen-es/package.json"
    binary = tools / "node_modules/.bin/protoc-gen-es"
    if not (package.is_file() and binary.exists()):
        return None
    return binary if json.loads(package.read_text()).get("version") == PROTOC_GEN_ES else None


def install_plugin(tools: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolMissing(f"npm not found; {INSTALL_HINT}")
    tools.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "install", "--prefix", str(tools), "--no-audit", "--no-fund", *PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    )
    found = installed_plugin(tools)
    if proc.returncode != 0 or found is None:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise ToolMissing(f"npm install of @bufbuild/protoc-gen-es@{PROTOC_GEN_ES} failed: {' / '.join(last)}")
    return found


def generate(ctx: Context) -> Outputs:
    if shutil.which("node") is None:
        raise ToolMissing(f"node not found; {INSTALL_HINT}")
    tools = ctx.tools
    found = installed_plugin(tools)
    if found is None:
        if ctx.checking:
            raise ToolMissing(f"protoc-gen-es {PROTOC_GEN_ES} is not in {TOOLS_DIR} (run `fstore codegen` once)")
        found = install_plugin(tools)
    out = ctx.scratch / "typescript"
    out.mkdir()
    run_protoc(ctx.schemas, [f"--plugin=protoc-gen-es={found}", f"--es_out={out}", "--es_opt=target=ts"])
    outputs: Outputs = {
        f"{ROOT}/src/{p.relative_to(out).as_posix()}": p.read_bytes() for p in sorted(out.rglob("*.ts"))
    }
    outputs[f"{ROOT}/src/{PUBLISH_MODULE}.ts"] = render("publish.ts.tmpl", **ATTRIBUTE_NAMES).encode()
    for spec in ctx.registry:
        outputs[f"{ROOT}/src/{publisher_file(spec)}"] = _publisher(spec).encode()
    outputs[f"{ROOT}/package.json"] = _json(_package_json(ctx.typescript_package))
    outputs[f"{ROOT}/tsconfig.json"] = _json(_tsconfig())
    return outputs


def publisher_file(spec: EntitySpec) -> str:
    """`fstore/entities/user/v1/user_publisher.ts`: beside the version's `user_pb.ts`."""
    proto = Path(spec.proto_file)
    return f"{proto.parent.as_posix()}/{proto.stem}_publisher.ts"


def _publisher(spec: EntitySpec) -> str:
    directory = Path(spec.proto_file).parent.as_posix()
    return render(
        "entity_publisher.ts.tmpl",
        **entity_values(spec),
        PUBLISH_MODULE=posixpath.relpath(PUBLISH_MODULE, directory),
        PB_MODULE=f"{Path(spec.proto_file).stem}_pb",
        MESSAGE=spec.descriptor.name,
        FIELD_TS=proto_camel_case(spec.event_time.name),
    )


def proto_camel_case(name: str) -> str:
    """The property protoc-gen-es gives a field (`protoCamelCase`): `event_time` -> `eventTime`."""
    out: list[str] = []
    upper_next = False
    for c in name:
        if c == "_":
            upper_next = True
        elif "0" <= c <= "9":
            out.append(c)
            upper_next = False
        else:
            out.append(c.upper() if upper_next else c)
            upper_next = False
    return "".join(out)


def _package_json(name: str) -> dict[str, object]:
    return {
        "name": name,
        "version": "0.1.0",
        "description": (
            "TypeScript messages and Pub/Sub publishers of the fstore entity schemas. "
            "Generated by `fstore codegen`; do not edit."
        ),
        "license": "Apache-2.0",
        "type": "module",
        "files": ["src"],
        "dependencies": {"@bufbuild/protobuf": PROTOC_GEN_ES},
        "devDependencies": {"typescript": "^5.4.0"},
        "scripts": {"build": "tsc --noEmit"},
    }


def _tsconfig() -> dict[str, object]:
    return {
        "compilerOptions": {
            "target": "ES2020",
            "module": "ESNext",
            "moduleResolution": "Bundler",
            "strict": True,
            "noEmit": True,
            "skipLibCheck": True,
        },
        "include": ["src/**/*.ts"],
    }


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


if __name__ == "__main__":
    # `python -m codegen.typescript`: install the pinned plugin ahead of time (`make install` does, best effort),
    # so `fstore codegen --check` and the tests cover TypeScript on a fresh clone too.
    try:
        print(f"protoc-gen-es ready: {installed_plugin(Path(TOOLS_DIR)) or install_plugin(Path(TOOLS_DIR))}")
    except ToolMissing as exc:
        print(f"TypeScript codegen will be skipped: {exc}")
