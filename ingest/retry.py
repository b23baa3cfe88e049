"""Retry a store write until the store is back: the local runner has already acked the Pub/Sub message and
never retries a failed bundle, so giving up would lose the event. The writes are idempotent (compare-and-set
online, message-id dedup offline), so a retried batch is safe here and under Dataflow's bundle retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from fstore.errors import StoreUnavailableError

T = TypeVar("T")
log = logging.getLogger("fstore.ingest")

RETRYABLE: tuple[type[BaseException], ...] = (StoreUnavailableError, ConnectionError, TimeoutError, OSError)


def until_stored(
    write: Callable[[], T], what: str, *, max_delay: float = 5.0, sleep: Callable[[float], None] = time.sleep
) -> T:
    delay, failures = 0.1, 0
    while True:
        try:
            result = write()
        except RETRYABLE as exc:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning("%s failed (%s); retrying until the store is back (attempt %d)", what, exc, failures)
            sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        if failures:
            log.warning("%s succeeded after %d failed attempts", what, failures)
        return result
