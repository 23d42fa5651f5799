"""The node side of the admin use-cases: once a second (it polls, so it works without
LISTEN/NOTIFY) a node applies what operators changed in the database.

* ``connection_requests`` for this node: the connection is closed with 320 and the reason.
* Topology versions that moved (policies, limits, a queue deleted by ``ctl``): the cached
  vhost is reloaded, consumers on queues that are gone are cancelled.
* The user limits of every open connection are re-read (permissions are re-read by the
  broker itself before each check, see ``Broker._grants``).
* Each connection's channel count is written back (``list_connections``, ``max-channels``
  across nodes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from cavalcade.domain.limits import limit_of
from cavalcade.storage.admin import AdminStore

from .service import Broker, Session

log = logging.getLogger(__name__)

SessionsFn = Callable[[], Sequence[tuple[Session, int]]]  # (session, open channels)
CloseFn = Callable[[int, str], bool]  # (connection id, reason) -> found


class NodeControl:
    """Applies operator changes on one node."""

    def __init__(
        self,
        broker: Broker,
        store: AdminStore,
        node_id: uuid.UUID,
        sessions: SessionsFn,
        close: CloseFn,
    ) -> None:
        self.broker = broker
        self.store = store
        self.node_id = node_id
        self.sessions = sessions
        self.close = close
        self._channels: dict[int, int] = {}

    async def run(self, interval: float = 1.0) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while
                if not failing and not self.broker.outage.report(exc):
                    log.warning("applying operator changes failed: %s", exc)
                failing = True

    async def tick(self) -> None:
        for connection_id, reason in await self.store.take_close_requests(self.node_id):
            if self.close(connection_id, reason):
                log.info("closing connection %d on request: %s", connection_id, reason)
        await self._topology()
        sessions = list(self.sessions())
        if sessions:
            await self._limits_of(sessions)
            counts = {s.id: n for s, n in sessions}
            changed = {i: n for i, n in counts.items() if self._channels.get(i) != n}
            await self.store.set_channel_counts(self.node_id, changed)
            self._channels = counts

    async def _topology(self) -> None:
        versions = await self.store.topology_versions()
        moved = False
        for vid, cached in self.broker.cached_versions().items():
            if versions.get(vid, -2) != cached:
                self.broker.topology_changed(vid)
                moved = True
        queues = self.broker.dispatched_queues()
        if moved and queues:
            alive = await self.store.existing_queues(queues)
            for qid in queues:
                if qid not in alive:
                    self.broker.queue_deleted_elsewhere(qid)

    async def _limits_of(self, sessions: list[tuple[Session, int]]) -> None:
        rows = {r["id"]: r for r in await self.store.session_grants(self.node_id)}
        limited: set[str] = set()
        for s, _ in sessions:
            r = rows.get(s.id)
            if r is None:
                continue  # not listed yet (or already gone)
            s.max_channels = limit_of(r["limits"], "max-channels")
            if s.max_channels is not None:
                limited.add(s.user)
        for user in limited:
            elsewhere = await self.store.user_channels_elsewhere(user, self.node_id)
            for s, _ in sessions:
                if s.user == user:
                    s.channels_elsewhere = elsewhere
