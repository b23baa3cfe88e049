"""`fstore codegen` and `fstore schema check`."""

from __future__ import annotations

from pathlib import Path

import typer


def codegen(
    check: bool = typer.Option(False, "--check", help="Exit 1 and name the stale files instead of writing."),
    root: Path = typer.Option(Path("."), help="Repository root (holds schemas/)."),
    only: list[str] = typer.Option(None, "--only", help="Run only these generators (python, go, java, ...)."),
) -> None:
    """Generate clients, docs, BigQuery schemas and the descriptor set from schemas/ (deterministic)."""
    from fstore.codegen.generate import build, stale, write
    from fstore.settings import load_settings

    package = load_settings().codegen.package_for(root)
    result = build(root, package, set(only) if only else None, checking=check)
    for name, why in result.skipped.items():
        typer.secho(f"skipped {name}: {why}", fg=typer.colors.YELLOW, err=True)
    if check:
        files = stale(root, result)
        if files:
            typer.secho("generated files are stale; run `fstore codegen`:", fg=typer.colors.RED, err=True)
            for f in files:
                typer.echo(f"  {f}", err=True)
            raise typer.Exit(1)
        typer.echo(f"codegen output is up to date ({len(result.outputs)} files)")
        return
    written = write(root, result)
    typer.echo(f"wrote {len(written)} of {len(result.outputs)} files")
    for f in written:
        typer.echo(f"  {f}")


def register(app: typer.Typer) -> None:
    app.command("codegen")(codegen)
    from fstore.codegen.check import schema_app

    app.add_typer(schema_app, name="schema")
