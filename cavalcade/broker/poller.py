"""The node's ready poll: one statement for every queue with local consumers.

Dispatchers wake on local commits and on NOTIFY from other nodes. This poll is the
fallback for what neither reports (``--notify poll``, a notification lost while the
LISTEN connection was down) and finds delayed messages published elsewhere: every
``interval`` seconds one query asks, for all of this node's consumed queues at once,
which have ready messages and when their next delayed message falls due. Idle
queues then cost one index probe each per interval inside that one statement,
instead of a claim and a next-due round trip each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from cavalcade.storage.repository import Repository

from .dispatch import QueueDispatcher
from .outage import Outage

log = logging.getLogger(__name__)


class ReadyPoller:
    """Wakes the dispatchers whose queues have ready messages; arms delayed timers."""

    def __init__(
        self,
        repo: Repository,
        dispatchers: Mapping[int, QueueDispatcher],
        interval: float,
        outage: Outage | None = None,
    ) -> None:
        self.repo = repo
        self.outage = outage  # database outages are logged there, once
        self.dispatchers = dispatchers
        self.interval = interval
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ready-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def poll_once(self) -> None:
        queue_ids = list(self.dispatchers)
        if not queue_ids:
            return
        self.polls += 1
        for queue_id, ready, due in await self.repo.ready_queues(queue_ids):
            d = self.dispatchers.get(queue_id)
            if d is None:
                continue
            if ready:
                d.wake()
            if due is not None:
                d.due_in(due)

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while
                quiet = self.outage is not None and self.outage.report(exc)
                if not failing and not quiet:
                    log.warning("ready poll failed: %s", exc)
                failing = True
