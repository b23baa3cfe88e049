"""`fstore serve`: run the read API with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile

import typer

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine; `0.0.0.0`, `::` and any other
    name count as remote."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, auth: bool, allow_unauthenticated_remote: bool) -> str | None:
    """Why serving on `host` is refused, or None when it is fine."""
    if auth or allow_unauthenticated_remote or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host}, which is not a loopback address, with auth off: anyone who can reach it "
        "could read every feature. Turn auth on (api.auth: true with api.keys, see docs/api.md), serve on "
        "127.0.0.1, or pass --allow-unauthenticated-remote (setting api.allow_unauthenticated_remote) if "
        "something in front of it already authenticates."
    )


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Non-loopback needs auth on (or the flag)."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each with its own event loop and Redis pool)."),
    allow_unauthenticated_remote: bool = typer.Option(
        False, "--allow-unauthenticated-remote", help="Serve beyond loopback with auth off, on purpose."
    ),
    access_log: bool = typer.Option(False, help="Log every request (costs throughput; /metrics counts them)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the read API: /v1/online/{entity}, /v1/entities, /healthz, /readyz, /metrics."""
    import uvicorn

    from fstore.settings import load_settings

    settings = load_settings()
    api = settings.api
    problem = exposure_problem(host, api.auth, allow_unauthenticated_remote or api.allow_unauthenticated_remote)
    if problem:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if api.auth and not api.keys:
        typer.secho("warning: auth is on but api.keys is empty: every request will get 401", err=True)

    options = {
        "host": host,
        "port": port,
        "loop": "auto",  # uvloop when installed
        "http": "auto",  # httptools when installed
        "access_log": access_log,
        "log_level": log_level,
    }
    if workers == 1:
        from fstore.api.app import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
        return
    # Each worker is a fresh process that builds its own app (and FeatureStore) from the same settings sources.
    # Their metrics go to one directory so /metrics, whichever worker answers it, adds up every worker.
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fstore-metrics-")
    try:
        uvicorn.run("api.app:create_app", factory=True, workers=workers, **options)  # type: ignore[arg-type]
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
