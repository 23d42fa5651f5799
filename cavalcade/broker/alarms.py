"""The database's resource alarm, as RabbitMQ's disk alarm: while the database is out of
disk (or memory), publishers are blocked; it is logged once and clears by itself with the
next write that succeeds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cavalcade.storage.sqlstate import sqlstate

log = logging.getLogger(__name__)

_MEANING = {"53100": "disk full", "53200": "out of memory", "58030": "I/O error"}


class ResourceAlarm:
    """Set while writes fail for want of a database resource."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self.active = False
        self.since = 0.0
        self.state: str | None = None

    def raised(self, exc: BaseException) -> None:
        if self.active:
            return
        self.active, self.since, self.state = True, time.monotonic(), sqlstate(exc)
        log.error(
            "database resource alarm: %s (SQLSTATE %s); publishers are blocked until writes"
            " succeed again",
            _MEANING.get(self.state or "", "resource exhausted"),
            self.state,
        )
        self._changed()

    def clear(self) -> None:
        if not self.active:
            return
        self.active = False
        log.warning(
            "database resource alarm cleared after %.1f s; publishers unblocked",
            time.monotonic() - self.since,
        )
        self._changed()
