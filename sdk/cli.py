"""`fstore`: one Typer app; each area registers its commands from its own package's `cli` module.

Heavy imports (Beam, DuckDB, FastAPI) happen inside the commands, so `fstore --help` stays fast.
"""

from __future__ import annotations

import importlib
import os

import typer

from fstore.errors import FstoreError

app = typer.Typer(
    name="fstore",
    help="fstore: a streaming feature store (Protobuf schemas, Beam ingest, Redis online, DuckDB/BigQuery offline).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


DEBUG_ENV = "FSTORE_DEBUG"


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help=f"Show the traceback of a failure (or set {DEBUG_ENV}=1)."),
) -> None:
    """Settings come from fstore.yaml (or $FSTORE_CONFIG) with FSTORE_* environment overrides."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


# Each area's `cli` module registers its commands on `app`. A failed import is an error, never a missing
# command: the modules are fstore's own, so a user's package of the same short name cannot stand in for one.
AREAS = (
    "fstore.codegen.cli",
    "fstore.store.online.cli",
    "fstore.store.offline.cli",
    "fstore.ingest.cli",
    "fstore.api.cli",
    "fstore.demo",
    "fstore.scaffold",
    "fstore.stack",
)

for _module in AREAS:
    importlib.import_module(_module).register(app)


def main() -> None:
    from fstore.stack import use_running_stack

    use_running_stack()
    try:
        app()
    except FstoreError as exc:  # bad input or environment: the message says what to fix
        if os.environ.get(DEBUG_ENV):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        text = str(exc) if len(str(exc)) <= 300 else f"{str(exc)[:300]}…"
        typer.secho(
            f"error: unexpected {type(exc).__name__}: {text} (a bug in fstore: run again with --debug for the "
            "traceback, and report it)",
            fg=typer.colors.RED,
            err=True,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
