"""A node's services beyond serving AMQP clients, started by :mod:`cavalcade.app`: the
outbox drainer (``cavalcade_publish()``) and the maintenance-mode watcher
(``cavalcade ctl drain`` / ``revive``)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from cavalcade.broker.outbox import OutboxDrainer
from cavalcade.broker.service import Broker
from cavalcade.protocol.server import AMQPServer
from cavalcade.settings import Settings
from cavalcade.storage import maintenance
from cavalcade.storage.notify import OUTBOX_CHANNEL
from cavalcade.storage.outbox import OutboxStore

log = logging.getLogger(__name__)


class NodeServices:
    """The outbox drainer and the maintenance watcher of one node incarnation."""

    def __init__(
        self, settings: Settings, broker: Broker, server: AMQPServer, node_id: uuid.UUID
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.server = server
        self.node_id = node_id
        store = OutboxStore(broker.repo.durable_pool, node_id, notify=settings.notify == "listen")
        self.drainer = OutboxDrainer(broker, store, settings.poll_interval)
        self.draining = False

    def channels(self) -> dict[str, Callable[..., None]]:
        """NOTIFY channels to LISTEN on, with their callbacks."""
        return {OUTBOX_CHANNEL: lambda *_args: self.drainer.wake()}

    def start(self) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(self.drainer.run(), name="outbox-drainer"),
            asyncio.create_task(self._watch_maintenance(), name="maintenance"),
        ]

    async def _watch_maintenance(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.node_heartbeat)
            try:
                wanted = await maintenance.is_draining(self.broker.repo.durable_pool, self.node_id)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away
                if not failing and not self.broker.outage.report(exc):
                    log.warning("maintenance check failed: %s", exc)
                failing = True
                continue
            if wanted and not self.draining:
                await self.enter_maintenance()
            elif not wanted and self.draining:
                self.leave_maintenance()

    async def enter_maintenance(self) -> None:
        """Stop accepting, close clients with 320, hand back what this node holds."""
        self.draining = True
        self.drainer.paused = True
        log.warning("node %s entering maintenance mode: closing every client", self.node_id)
        await self.server.drain()
        await self.broker.flush()
        requeued = await self.broker.reconcile()
        log.warning("node %s in maintenance mode (%d deliveries handed back)", self.node_id,
                    requeued)  # fmt: skip

    def leave_maintenance(self) -> None:
        self.draining = False
        self.drainer.paused = False
        self.server.revive()
        self.drainer.wake()
        log.warning("node %s revived: accepting clients again", self.node_id)
