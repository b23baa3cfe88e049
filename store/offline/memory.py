"""The embedded store's default DuckDB memory limit, from the memory this machine (or container) has.

DuckDB's own default is 80% of physical memory, which an export beside the streaming job and the API can use
to push the machine into swap or the OOM killer; a fixed 1 GB wastes a large machine and spills early on it.
The default is a quarter of the memory available to this process, at least 1 GB: a cgroup limit (a container,
Cloud Run, Kubernetes) counts when it is below physical memory. Beyond the limit DuckDB spills to the store's
temp directory, so the limit bounds memory, not what an export can do. Override it per store
(`duckdb:///path?memory_limit=8GB`), or per export (`fstore export --memory-limit`).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SHARE = 4  # a quarter
MINIMUM_BYTES = 1 << 30
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def available_memory_bytes() -> int:
    """Physical memory, or the process's cgroup limit when that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            physical = min(physical, int(text))  # "max" (no limit) is not a number
    return physical


def default_memory_limit() -> str:
    """A DuckDB `memory_limit` value: a quarter of `available_memory_bytes()`, at least 1 GB, in whole MB."""
    limit = max(MINIMUM_BYTES, available_memory_bytes() // DEFAULT_SHARE)
    return f"{limit >> 20}MB"
