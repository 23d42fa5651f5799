"""Database outages, logged once: one line when the node loses the database, one when
it is back. Everything that fails meanwhile (write batches, dispatchers, channels
held, the heartbeat) reports here instead of logging each retry."""

from __future__ import annotations

import logging
import time

from cavalcade.storage.sqlstate import is_unavailable

log = logging.getLogger("cavalcade.outage")


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


class Outage:
    """Whether this node has lost its database, since when, and the two log lines."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def down(self) -> bool:
        return self.since is not None

    def report(self, exc: BaseException) -> bool:
        """Something failed with ``exc``. If it means the database is away, note the
        outage (logged the first time) and return True: the caller retries quietly."""
        if not is_unavailable(exc):
            return False
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "lost the database (%s): clients are held, everything is retried until it is back",
                describe(exc),
            )
        return True

    def back(self, requeued: int) -> None:
        """The database answers again (after :meth:`report`): say so, once."""
        if self.since is None:
            return
        took, self.since = time.monotonic() - self.since, None
        log.warning("database back after %.1f s; %d orphaned deliveries requeued", took, requeued)


class QuietPoolFilter(logging.Filter):
    """Drops asyncpg's pool warnings (with a traceback each) about connections it cannot
    make while the database is away: the outage is logged once by :class:`Outage`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not is_unavailable(exc)


def quiet_asyncpg_pool() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, QuietPoolFilter) for f in pool_log.filters):
        pool_log.addFilter(QuietPoolFilter())
