"""`fstore dead-letters` (the rejected events: counts per reason, the latest ones) and `fstore dead-letters
replay` (store them now, once what rejected them is fixed: ingest/replay.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from fstore.ingest.cli import PASS_THROUGH

REASON = typer.Option(None, help="Only this reason, e.g. missing_key.")
LIMIT = typer.Option(20, min=0, help="How many of the latest to list.")
JSON_OUTPUT = typer.Option(False, "--json", help="Print JSON lines instead of a table.")
OUTSTANDING = typer.Option(
    False,
    "--outstanding",
    help="Leave out letters stored since (their message id is in the offline history: replayed, or taken up by "
    "the job); reads the history of each entity version they name.",
)

# Help texts as single-line paragraphs: Typer keeps the line breaks of every paragraph but the first.
KEPT = (
    "Every letter stays in the dead-letter table: one replayed and stored since is still listed (and counted) under "
    "the reason it was rejected for; --outstanding leaves those out."
)
LIST_HELP = "Rejected events: counts per reason, then the latest ones with their reason and detail.\n\n" + KEPT
GROUP_HELP = (
    "Rejected events: counts per reason, then the latest ones with their reason and detail (also `fstore "
    "dead-letters list`); `fstore dead-letters replay` stores them once what rejected them is fixed.\n\n" + KEPT
)
REPLAY_HELP = (
    "Store the matching dead letters now, once what rejected them is fixed (a schema change, regenerated).\n\n"
    "They go through the streaming job's own decode/validate/write step, with the registry read from the "
    "descriptor set afresh, and each letter's original message id and publish time: a second replay changes "
    "nothing (offline, one row per message id; online, compare-and-set). A letter still rejected is not written to "
    "the dead-letter table again. Replayed letters stay in `fstore dead-letters` (--outstanding leaves out the "
    "stored ones).\n\n"
    "Prints how many matched, how many are stored and how many are still rejected, by reason; exits 1 when letters "
    "matched and none could be stored. Extra arguments are Beam pipeline options, e.g. `--runner DataflowRunner "
    "…`; default: Beam's local batch runner."
)

dead_letters_app = typer.Typer(help=GROUP_HELP)


def list_dead_letters(
    reason: str | None = REASON, limit: int = LIMIT, json_output: bool = JSON_OUTPUT, outstanding: bool = OUTSTANDING
) -> None:
    """`fstore dead-letters [list]`: LIST_HELP says what it prints."""
    import json

    from fstore.store import FeatureStore

    with FeatureStore.from_config() as fs:
        letters = fs.offline.dead_letters().to_pylist()
        if reason:
            letters = [d for d in letters if d["reason"] == reason]
        if outstanding:
            from fstore.ingest.replay import outstanding as not_stored

            letters = not_stored(fs, letters)
    latest = sorted(letters, key=lambda d: d["ingest_time"], reverse=True)[:limit]
    if json_output:
        for d in latest:
            shown = {k: v for k, v in d.items() if k != "data"} | {"data_bytes": len(d["data"])}
            typer.echo(json.dumps(shown, default=str))
        return
    counts: dict[str, int] = {}
    for d in letters:
        counts[d["reason"]] = counts.get(d["reason"], 0) + 1
    typer.echo(f"{len(letters)} dead letters" + "".join(f"; {r}: {n}" for r, n in sorted(counts.items())))
    for d in latest:
        typer.echo(f"  {d['ingest_time']:%Y-%m-%dT%H:%M:%SZ}  {d['message_id']}  {d['reason']}: {d['detail']}")


@dead_letters_app.callback(invoke_without_command=True)
def dead_letters(
    ctx: typer.Context,
    reason: str | None = REASON,
    limit: int = LIMIT,
    json_output: bool = JSON_OUTPUT,
    outstanding: bool = OUTSTANDING,
) -> None:
    """Without a subcommand, the list (GROUP_HELP)."""
    if ctx.invoked_subcommand is None:
        list_dead_letters(reason, limit, json_output, outstanding)
        return
    # `fstore dead-letters --reason X replay` would replay every letter, not those of X: refuse it.
    given = {
        "--reason": reason is not None,
        "--limit": limit != LIMIT.default,
        "--json": json_output,
        "--outstanding": outstanding,
    }
    if any(given.values()):
        raise typer.BadParameter(
            f"before `{ctx.invoked_subcommand}` it is the list's option, not `{ctx.invoked_subcommand}`'s: put a "
            f"subcommand's options after it (fstore dead-letters {ctx.invoked_subcommand} --help)",
            param_hint=", ".join(name for name, set_ in given.items() if set_),
        )


dead_letters_app.command("list", help=LIST_HELP)(list_dead_letters)


def _iso_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO-8601 time, e.g. 2026-12-01T09:30:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dead_letters_app.command("replay", help=REPLAY_HELP, context_settings=PASS_THROUGH)
def replay(
    ctx: typer.Context,
    reason: str | None = typer.Option(None, help="Only letters of this reason, e.g. unknown_fingerprint."),
    since: datetime | None = typer.Option(
        None,
        parser=_iso_time,
        metavar="TIME",
        help="Only letters ingested at or after this ISO-8601 time, e.g. 2026-12-01T09:30:00Z (no offset: UTC).",
    ),
) -> None:
    """`fstore dead-letters replay`: REPLAY_HELP is the contract; the work is `ingest.replay`."""
    from fstore.ingest.replay import REASONS, replay_dead_letters

    if reason is not None and reason not in REASONS:
        known = ", ".join(sorted(REASONS))
        raise typer.BadParameter(f"{reason!r} is not a reason code; one of {known}", param_hint="--reason")
    result = replay_dead_letters(reason, since, ctx.args)
    if not result.matched:
        typer.echo("no dead letters match")
        return
    typer.echo(result.summary())
    if not result.stored:
        typer.secho(
            f"error: none of the {result.matched} matching dead letters could be stored", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1)
