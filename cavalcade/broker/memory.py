"""Bounded memory: what a waiting publish really costs, and a node memory watermark.

``publish_cost`` counts a publish waiting in the write batcher as its body and properties
plus the Python objects that carry it (the pending record, its future, its routed rows):
an empty-body publish is not free. ``MemoryWatermark`` is RabbitMQ's
``vm_memory_high_watermark``: while the node's resident memory is above it, publishers are
blocked (``connection.blocked``, their sockets not read) until it falls below again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

# Measured with tracemalloc: a pending publish with its future, Properties, batch entry and
# one routed row holds ~700 bytes besides its body and property bytes.
PUBLISH_OVERHEAD = 768
ROW_OVERHEAD = 256


def publish_cost(body: int, properties: int, rows: int = 1) -> int:
    return body + properties + PUBLISH_OVERHEAD + ROW_OVERHEAD * max(rows, 1)


def total_memory() -> int:
    """Physical memory of the machine (or of the cgroup, when it is limited)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = open(path).read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:
            return int(value)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def watermark_bytes(setting: float) -> int:
    """A fraction of RAM (``0 < setting <= 1``, RabbitMQ's relative form) or bytes."""
    if setting <= 0:
        return 0  # off
    if setting <= 1:
        return int(total_memory() * setting)
    return int(setting)


def rss() -> int:
    """This process's resident set size in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryWatermark:
    """Samples RSS every ``interval`` s; ``active`` while it is above ``limit`` bytes."""

    def __init__(self, limit: int, changed: Callable[[], None], interval: float = 0.5) -> None:
        self.limit = limit
        self.interval = interval
        self.active = False
        self._changed = changed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.limit > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="memory")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def sample(self) -> None:
        used = rss()
        above = used > self.limit
        if above != self.active:
            self.active = above
            if above:
                log.warning(
                    "memory alarm: %d MiB resident is above the watermark (%d MiB);"
                    " publishers are blocked",
                    used >> 20,
                    self.limit >> 20,
                )
            else:
                log.warning("memory alarm cleared (%d MiB resident)", used >> 20)
            self._changed()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()
