"""`fstore codegen` and `fstore schema check`."""

from __future__ import annotations

from pathlib import Path

import typer


def codegen(
    check: bool = typer.Option(False, "--check", help="Exit 1 and name the stale files instead of writing."),
    root: Path = typer.Option(Path("."), help="Repository root (holds schemas/)."),
    only: list[str] = typer.Option(
        None, "--only", help="Run only these generators, repeated or comma-separated (registry, python, go, ...)."
    ),
    against: str = typer.Option(
        "main", "--against", help="Git ref whose schemas/ the new ones must stay compatible with."
    ),
    skip_schema_check: bool = typer.Option(
        False, "--force", "--skip-schema-check", help="Generate even if `fstore schema check` finds problems."
    ),
) -> None:
    """Generate clients, docs, BigQuery schemas and the descriptor set from schemas/ (deterministic). Runs
    `fstore schema check` first, and writes nothing if it fails: a breaking edit is never generated."""
    from fstore.codegen.generate import build, generators, stale, write
    from fstore.settings import CLIENT_LANGUAGES, load_settings

    settings = load_settings().codegen
    package = settings.package_for(root)
    chosen = {name.strip() for names in only for name in names.split(",") if name.strip()} if only else None
    unknown = sorted((chosen or set()) - {g.name for g in generators()})
    if unknown:
        raise typer.BadParameter(
            f"unknown generator {', '.join(unknown)}; choose from {', '.join(g.name for g in generators())}",
            param_hint="--only",
        )
    if chosen is None:
        chosen = {g.name for g in generators() if g.name not in CLIENT_LANGUAGES or g.name in settings.languages}
    result = build(
        root,
        package,
        chosen,
        checking=check,
        go_module=settings.go_module,
        typescript_package=settings.typescript_package,
    )
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
    if not skip_schema_check:
        from fstore.codegen.check import check_schemas, print_report

        report = check_schemas((root / "schemas").resolve(), against)
        print_report(report)
        if report.problems:
            typer.secho("nothing written: fix the schemas (or pass --force)", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
    written = write(root, result)
    typer.echo(f"wrote {len(written)} of {len(result.outputs)} files")
    for f in written:
        typer.echo(f"  {f}")


def register(app: typer.Typer) -> None:
    app.command("codegen")(codegen)
    from fstore.codegen.check import schema_app

    app.add_typer(schema_app, name="schema")
