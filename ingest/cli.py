"""`fstore publish`, `fstore ingest stream`, `fstore ingest backfill`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

ingest_app = typer.Typer(help="Run the ingest job: Pub/Sub (streaming) or files (backfill) into both stores.")
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@ingest_app.command("stream", context_settings=PASS_THROUGH)
def stream(ctx: typer.Context) -> None:
    """Run the streaming job until stopped. Extra arguments are Beam pipeline options, e.g.
    `--runner DataflowRunner --region europe-west1 --temp_location gs://…`; default: Beam's local runner."""
    from fstore.ingest.pipeline import run_stream
    from fstore.ingest.pubsub import ensure_subscriptions, routes
    from fstore.store import FeatureStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    fs = FeatureStore.from_config()
    job_routes = routes(fs.settings, fs.registry)
    ensure_subscriptions(fs.settings, job_routes)
    for route in job_routes:
        typer.echo(f"reading {route.subscription} (topic {route.topic})")
    typer.echo(f"offline store {fs.settings.offline}; online store {fs.settings.redis_url or 'embedded Redis'}")
    run_stream(fs.settings, job_routes, ctx.args)


@ingest_app.command("backfill", context_settings=PASS_THROUGH)
def backfill(
    ctx: typer.Context,
    entity: str = typer.Option(..., help="Entity name, e.g. user."),
    input: list[Path] = typer.Option(..., "--input", help="JSONL (protobuf JSON mapping) or parquet file(s)."),
    version: int | None = typer.Option(None, help="Entity version; default: the entity's default version."),
    compact: bool = typer.Option(True, help="Compact the embedded offline store's segments afterwards."),
) -> None:
    """Load files of events through the same decode/validate/write transforms, as a batch Beam job."""
    from fstore.ingest.parquet import check_parquet_input
    from fstore.ingest.pipeline import run_backfill
    from fstore.store import FeatureStore

    fs = FeatureStore.from_config()
    spec = fs.spec(entity, version)
    for path in input:
        if not path.is_file():
            raise typer.BadParameter(f"{path}: no such file", param_hint="--input")
        if path.suffix == ".parquet":
            check_parquet_input(spec, path)
    started = time.monotonic()
    result = run_backfill(fs.settings, spec.name, spec.version, input, ctx.args)
    took = time.monotonic() - started
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    read = counters.get("events_read", 0)
    dead = sum(v for k, v in counters.items() if k.startswith("dead_letters_"))
    typer.echo(
        f"backfill of {spec.ref}: {read} events read, {counters.get('offline_written', 0)} stored offline, "
        f"{counters.get('online_written', 0)} written online, {dead} dead letters, in {took:.1f} s"
        + (f" ({read / took:,.0f} events/s)" if took > 0 else "")
    )
    for name, value in sorted(counters.items()):
        if name.startswith("dead_letters_"):
            typer.echo(f"  dead letters, {name.removeprefix('dead_letters_')}: {value}")
    stored = counters.get("offline_written", 0)
    if dead and not stored:  # e.g. a v1 file loaded as another version: say so, and fail the command
        typer.secho(
            f"error: every one of the {dead} events was rejected and nothing was stored; they are dead letters "
            f"(`fstore dead-letters`). Is the file {spec.ref}? Pass --version to load it as another version",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    compaction = fs.offline.compaction
    if compact and compaction is not None:
        # A backfill leaves many segments per day; exports over uncompacted days pay for deduplication and
        # tie-breaks in window functions, so a batch load ends compacted.
        started = time.monotonic()
        done = compaction.compact(spec)
        took = time.monotonic() - started
        typer.echo(f"compacted {done.files_merged} segments into {done.partitions} day files in {took:.1f} s")


def publish(
    entity: str = typer.Option(..., help="Entity name, e.g. user."),
    file: Path = typer.Option(..., help="JSONL: one event per line, protobuf's JSON mapping of the message."),
    version: int | None = typer.Option(None, help="Entity version; default: the entity's default version."),
) -> None:
    """Publish events from a JSONL file with the generated client (routing attributes set).

    A bad line is reported with its line number, and then nothing is published."""
    from fstore.ingest.publish import publish_file
    from fstore.ingest.pubsub import ensure_subscriptions, routes, topic_path
    from fstore.store import FeatureStore

    fs = FeatureStore.from_config()
    spec = fs.spec(entity, version)
    # Subscriptions too: on the emulator, events published to a topic nobody subscribes to yet are lost.
    ensure_subscriptions(fs.settings, routes(fs.settings, fs.registry))
    topic = topic_path(fs.settings, spec.name)
    started = time.monotonic()
    ids = publish_file(file, spec, topic)
    took = time.monotonic() - started
    typer.echo(f"published {len(ids)} {spec.ref} events to {topic} in {took:.2f} s")


def materialize(
    entity: str | None = typer.Option(
        None, help="Entity or aggregation family name, e.g. user or user_orders; default: every one."
    ),
    version: int | None = typer.Option(None, help="Entity version; default: the entity's default version."),
    start: str | None = typer.Option(
        None, help="Only rows with an event time at or after this (ISO-8601; UTC unless it names an offset)."
    ),
    end: str | None = typer.Option(None, help="Only rows with an event time before this (ISO-8601)."),
) -> None:
    """Rebuild the online store from the offline history: the latest row per key (within --start/--end),
    compare-and-set online, and every aggregation family's tiles from its source's events (as far back as its
    windows reach); the history is unchanged. Exits 1 when the online store refused rows."""
    from fstore.ingest.materialize import MaterializeError, materialize_family, time_range
    from fstore.ingest.materialize import materialize as rebuild
    from fstore.store import FeatureStore

    since, until = time_range(start, end)
    if version is not None and entity is None:
        raise MaterializeError("--version needs --entity: versions are per entity")
    refused = 0
    with FeatureStore.from_config() as fs:
        if entity is not None and fs.registry.is_family(entity):
            if version is not None or start is not None or end is not None:
                raise MaterializeError("--version, --start and --end apply to entities, not aggregation families")
            names, families = [], [entity]
        else:
            names = [entity] if entity is not None else fs.registry.entities()
            families = fs.registry.families() if entity is None else []
        for spec in [fs.spec(name, version) for name in names]:
            started = time.monotonic()
            rows, done = rebuild(fs, spec, since, until)
            typer.echo(
                f"materialized {spec.ref} from {rows:,} history rows: {done.written:,} written online, "
                f"{done.stale:,} already newer online, {done.expired:,} past their TTL, "
                f"in {time.monotonic() - started:.1f} s"
            )
            if done.failed:
                typer.echo(f"  {done.failed:,} refused by the online store, e.g. {done.failure}", err=True)
                refused += done.failed
        for name in families:
            started = time.monotonic()
            rebuilt = materialize_family(fs, fs.registry.family(name))
            typer.echo(
                f"materialized aggregation family {name} from {rebuilt.rows:,} history rows: {rebuilt.folded:,} "
                f"newly folded into its tiles, {rebuilt.late:,} later than the allowed lateness (offline only), "
                f"{rebuilt.dropped:,} keys of earlier layouts deleted, in {time.monotonic() - started:.1f} s"
            )
    if refused:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    from fstore.ingest.dead_letters import dead_letters_app  # not at the top: it imports PASS_THROUGH from here

    app.add_typer(ingest_app, name="ingest")
    app.command("publish")(publish)
    app.add_typer(dead_letters_app, name="dead-letters")
    app.command("materialize")(materialize)
