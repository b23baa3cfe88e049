"""Readiness: the online store answers a ping in time. (Liveness, /healthz, needs nothing.)"""

from __future__ import annotations

import asyncio

from fstore.api.models import Health
from fstore.store import FeatureStore

READY = "ready"
# A probe must answer even when Redis hangs: past this, the store counts as unreachable.
PING_TIMEOUT_SECONDS = 2.0


async def readiness(store: FeatureStore) -> Health:
    try:
        answered = await asyncio.wait_for(store.online.ping_async(), PING_TIMEOUT_SECONDS)
    except Exception as exc:  # every failure means "not ready"; a probe never raises
        return Health(status="unavailable", detail=f"the online store is unreachable: {type(exc).__name__}: {exc}")
    if not answered:
        return Health(status="unavailable", detail="the online store did not answer its ping")
    return Health(status=READY)
