"""`fstore init DIR`: a feature repo of your own, ready for `fstore schema check` and `fstore codegen`.

It writes `fstore.yaml`, `schemas/` (buf config and one example entity), a GitHub workflow that checks
schema changes, a README with the next commands, and a few example events dated today. fstore's own
`fstore/options.proto` is not copied: schema check and codegen find it inside the installed package.
"""

from __future__ import annotations

import importlib.resources
import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template

import typer

import fstore
from fstore.errors import FstoreError
from fstore.settings import CodegenSettings

ENTITY = re.compile(r"^[a-z][a-z0-9_]*$")
EXAMPLE_EVENTS = 20


def templates() -> Path:
    return Path(str(importlib.resources.files("fstore") / "templates" / "repo"))


def render(template: str, **values: str) -> str:
    return Template((templates() / template).read_text()).substitute(values)


def init_repo(directory: Path, entity: str = "customer", package: str | None = None) -> list[Path]:
    """Write a feature repo into `directory` (new, or empty); returns the files written."""
    if directory.exists() and any(directory.iterdir()):
        raise FstoreError(f"{directory} is not empty: choose a new directory for the feature repo")
    if not ENTITY.match(entity):
        raise FstoreError(f"entity name {entity!r}: use lower case letters, digits and '_' (e.g. customer)")
    try:
        package = CodegenSettings(python_package=package).package_for(directory)
    except ValueError as exc:
        raise FstoreError(f"--package: {exc}") from None
    message = "".join(part.title() for part in entity.split("_"))
    values = {
        "name": directory.resolve().name,
        "package": package,
        "npm_name": package.replace("_", "-").replace(".", "-"),
        "entity": entity,
        "message": message,
        "owner": "ml-platform",
        "version": fstore.__version__,
    }
    files = {
        "fstore.yaml": render("fstore.yaml.tmpl", **values),
        "README.md": render("README.md.tmpl", **values),
        ".gitignore": render("gitignore.tmpl", **values),
        "schemas/buf.yaml": render("buf.yaml", **values),
        f"schemas/fstore/entities/{entity}/v1/{entity}.proto": render("entity.proto.tmpl", **values),
        ".github/workflows/fstore.yml": render("workflow.yml.tmpl", **values),
        f"data/{entity}.jsonl": example_events(entity, datetime.now(UTC)),
    }
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def example_events(entity: str, now: datetime) -> str:
    """A few events of the example entity over the last days (protobuf's JSON mapping, one per line)."""
    rng = random.Random(5)
    lines = []
    for n in range(EXAMPLE_EVENTS):
        event_time = now - timedelta(days=rng.uniform(0.1, 7))
        event = {
            f"{_camel(entity)}Id": 1 + n % 5,
            "eventTime": event_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "country": rng.choice(["JP", "FR", "DE", "US", "BR"]),
            "lifetimeOrders": str(n),
            "avgOrderValue": round(rng.uniform(5, 120), 2),
        }
        lines.append(json.dumps(event))
    return "\n".join(lines) + "\n"


def _camel(name: str) -> str:
    """protobuf's JSON name of a field: `order_line` -> `orderLine`."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def init(
    directory: Path = typer.Argument(..., help="The new feature repo's directory (new, or empty)."),
    entity: str = typer.Option("customer", help="Name of the example entity."),
    package: str | None = typer.Option(
        None, help="Package of the generated Python client; default: from the directory's name."
    ),
) -> None:
    """Create a feature repo: fstore.yaml, schemas/ with one example entity, a CI workflow, example events."""
    written = init_repo(directory, entity, package)
    typer.echo(f"created a feature repo in {directory} ({len(written)} files). Next:")
    typer.echo(f"  cd {directory}")
    typer.echo("  fstore schema check && fstore codegen")
    typer.echo(f"  fstore ingest backfill --entity {entity} --input data/{entity}.jsonl")
    typer.echo(f"  fstore online get {entity} 1 2 3")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
