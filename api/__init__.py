"""fstore's read API (FastAPI): `api.app.create_app()`, served by `fstore serve` (api/cli.py). See docs/api.md.

Nothing is imported here, so `fstore --help` does not pay for FastAPI."""
