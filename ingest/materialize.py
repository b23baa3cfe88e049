"""`fstore materialize`: rebuild the online store from the offline history, without touching the history.

For when Redis lost keys (a flush, a new cluster, a restore): the latest row per key, by event time (ties to
the later ingest time, then the message id, as everywhere), is computed inside the offline store
(`OfflineStore.latest_rows`: DuckDB over the parquet files within a memory limit, or one BigQuery query),
streamed in Arrow batches and compare-and-set online batch by batch (`OnlineStore.write_rows`), so memory
stays bounded however long the history. Rows past their TTL are not written; a key whose online row is
newer stays as it is. The history is only read, so running it twice changes nothing the second time.

An aggregation family (docs/aggregations.md) is rebuilt the same way: its source entity's history, as far back
as its longest window reaches (all of it for a lifetime feature), streamed in batches and folded into the
tiles by the streaming job's own `TileStore.apply`, each event with its stored ingest time, so the same events
are accepted or refused as late as when they streamed in. Tiles are idempotent by message id: events already
folded change nothing, so it refills a family whose tiles were lost, or whose layout changed, and is a no-op on
tiles that are whole. Then the keys of the family's earlier layouts are deleted (a changed family is written
under a new layout digest, and a lifetime family's old keys would never expire).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from fstore.errors import FstoreError
from fstore.ingest.retry import until_stored
from fstore.schema.aggregations import FamilySpec, tile_size
from fstore.schema.registry import EntitySpec
from fstore.store import FeatureStore
from fstore.store.events import utc_from_micros
from fstore.store.offline.sql import KEY_ROWS
from fstore.store.online import WriteResult

# Batches being written at once: one is encoded while Redis works through the other's commands (Redis is
# one process, so a third would only wait). Memory is bounded by these and the offline store's own limit.
IN_FLIGHT = 2


class MaterializeError(FstoreError):
    """Bad input to `fstore materialize`; the message names the option."""


def materialize(
    fs: FeatureStore, spec: EntitySpec, start: datetime | None = None, end: datetime | None = None
) -> tuple[int, WriteResult]:
    """(history rows with an event time in [start, end), what the online writes did). A write the online
    store refuses for now is retried until it is back (`until_stored`): every write is a compare-and-set."""
    rows, done = 0, WriteResult()
    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="fstore-materialize") as pool:
        pending: deque[Future[WriteResult]] = deque()
        for batch in fs.offline.latest_rows(spec, start, end):
            rows += int(pc.sum(batch.column(KEY_ROWS)).as_py() or 0)
            if len(pending) == IN_FLIGHT:
                done += pending.popleft().result()
            pending.append(pool.submit(_write, fs, spec, batch))
        while pending:
            done += pending.popleft().result()
    return rows, done


class FamilyRebuild(NamedTuple):
    """What `materialize_family` did."""

    rows: int  # history rows read
    folded: int  # events newly folded into the tiles (0 for events already in them)
    late: int  # events refused as later than the allowed lateness (they stay offline only)
    dropped: int  # keys of the family's earlier layouts deleted


def materialize_family(fs: FeatureStore, family: FamilySpec, now_us: int | None = None) -> FamilyRebuild:
    """Fold the family's history into its tiles, then delete the keys its earlier layouts left behind.
    `now_us`: the clock that decides how far back windows reach (tests move it)."""
    from fstore.store.online.tiles import TileStore

    now = time.time_ns() // 1_000 if now_us is None else now_us
    windows = [f.window for f in family.features]
    start = None
    if all(w is not None for w in windows):
        reach = max(w + (tile_size(w) or 0) for w in windows if w is not None)
        start = utc_from_micros(now - reach)
    rows = applied = refused = 0
    tiles = TileStore.beside(fs.online)
    try:
        for batch in fs.offline.history_batches(family.source, start):
            table = pa.Table.from_batches([batch])
            done = until_stored(functools.partial(tiles.apply_table, family, table, now), f"tiles of {family.name}")
            rows, applied, refused = rows + batch.num_rows, applied + done[0], refused + done[1]
        dropped = tiles.drop_other_layouts(family)
    finally:
        tiles.close()
    return FamilyRebuild(rows, applied, refused, dropped)


def _write(fs: FeatureStore, spec: EntitySpec, batch: pa.RecordBatch) -> WriteResult:
    return until_stored(lambda: fs.online.write_rows(spec, batch), f"online write of {spec.ref}")


def time_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """`--start` and `--end` as UTC datetimes (ISO-8601; UTC when they name no offset), start before end."""
    since, until = _moment(start, "--start"), _moment(end, "--end")
    if since is not None and until is not None and since >= until:
        raise MaterializeError(f"--start {start} is not before --end {end}: the range [start, end) is empty")
    return since, until


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MaterializeError(
            f"{option} {text!r} is not an ISO-8601 time (e.g. 2026-03-01, 2026-03-01T12:00:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
