"""`fstore materialize`: rebuild the online store from the offline history, without touching the history.

For when Redis lost keys (a flush, a new cluster, a restore): the latest row per key, by event time (ties to
the later ingest time, then the message id, as everywhere), is compare-and-set online in batches. Rows past
their TTL are not written; a key whose online row is newer stays as it is. The history is only read, so
running it twice changes nothing the second time.
"""

from __future__ import annotations

from typing import Any

from fstore.ingest.parquet import latest_messages
from fstore.ingest.retry import until_stored
from fstore.schema.registry import EntitySpec
from fstore.store import FeatureStore
from fstore.store.online import WriteResult

BATCH = 5_000


def materialize(fs: FeatureStore, spec: EntitySpec, batch: int = BATCH) -> tuple[int, WriteResult]:
    """(history rows read, what the online writes did)."""
    history = fs.offline.history(spec)
    messages, ingest_micros = latest_messages(spec, history)
    done = WriteResult()
    for start in range(0, len(messages), batch):
        chunk, times = messages[start : start + batch], ingest_micros[start : start + batch]

        def write(chunk: list[Any] = chunk, times: list[int] = times) -> WriteResult:
            return fs.online.write(spec, chunk, times)

        done += until_stored(write, f"online write of {spec.ref}")
    return int(history.num_rows), done
