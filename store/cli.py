"""`fstore`: one Typer app; each area registers its commands from its own package's `cli` module.

Heavy imports (Beam, DuckDB, FastAPI) happen inside the commands, so `fstore --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from store.errors import FstoreError

app = typer.Typer(
    name="fstore",
    help="fstore: a streaming feature store (Protobuf schemas, Beam ingest, Redis online, DuckDB/BigQuery offline).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Settings come from fstore.yaml (or $FSTORE_CONFIG) with FSTORE_* environment overrides."""


# module -> attribute that registers its commands on `app`; an area not built yet is simply absent.
AREAS = ("codegen.cli", "store.online.cli", "store.offline.cli", "ingest.cli", "api.cli", "store.demo")

for _module in AREAS:
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise


def main() -> None:
    try:
        app()
    except FstoreError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
