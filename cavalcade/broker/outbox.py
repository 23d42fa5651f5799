"""Draining the outbox: publishes made with ``cavalcade_publish()`` inside applications'
transactions become messages, routed exactly as a ``basic.publish``.

A node drains when ``cavalcade_outbox`` is notified (a committed transaction called the
function), and on its poll timer (the only wake-up in ``--notify poll``). Each batch is
one transaction: take the oldest rows, encode their properties into content-header
bytes, route them (every exchange type, exchange-to-exchange bindings,
alternate-exchange, priorities, TTL, ``x-delayed-message``), insert them through the
write-batch statements (queue limits and their dead-lettering), delete the rows.

Rows that cannot become a message (properties that do not encode) are moved to
``outbox_dead`` with the reason and a log line; unroutable publishes are dropped, as an
unroutable non-mandatory ``basic.publish`` is (the alternate-exchange applies first).
"""

from __future__ import annotations

import asyncio
import logging

from cavalcade.domain.encoding import BadProperties, encode_properties
from cavalcade.domain.properties import MalformedProperties, parse_properties
from cavalcade.storage.outbox import OutboxStore
from cavalcade.storage.records import NewMessage

from . import write_path
from .group_commit import PendingPublish
from .service import Broker

log = logging.getLogger(__name__)

BATCH_ROWS = 500


class OutboxDrainer:
    """One per node: turns committed outbox rows into messages, in order."""

    def __init__(self, broker: Broker, store: OutboxStore, poll_interval: float) -> None:
        self.broker = broker
        self.store = store
        self.poll_interval = poll_interval
        self.paused = False  # a draining (maintenance) node leaves the outbox to the others
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self.paused:
                continue
            try:
                while await self.drain_once() >= BATCH_ROWS:
                    pass
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away
                if not failing and not self.broker.outage.report(exc):
                    log.warning("outbox drain failed: %s", exc)
                failing = True

    async def drain_once(self) -> int:
        """Route and store one batch; the number of outbox rows it consumed."""
        async with self.store.take(BATCH_ROWS) as taken:
            if taken is None or not taken.rows:
                return 0
            pending: list[PendingPublish] = []
            for row in taken.rows:
                try:
                    props = parse_properties(encode_properties(row.properties))
                except (BadProperties, MalformedProperties) as exc:
                    log.warning("outbox row %d moved to outbox_dead: %s", row.id, exc)
                    await taken.bury(row, str(exc))
                    continue
                vhost = self.broker.vhost_topology(row.vhost_id, row.vhost)
                pending.append(
                    PendingPublish(vhost, row.exchange, row.routing_key, props, row.body)
                )
            await self.broker.prepare(pending)
            messages: list[NewMessage] = []
            for p in pending:
                rows = self.broker.route_pending(p)
                if not rows:
                    log.debug("outbox publish to %r/%r unroutable: dropped", p.exchange,
                              p.routing_key)  # fmt: skip
                messages.extend(rows)
            rules = self.broker.rules_for(messages, set())
            batch = write_path.Batch(messages)
            outcome = await write_path.write(taken.writes, batch, rules, self.broker.dead_letter)
            await taken.delete_taken()
            if outcome.refused:
                log.info("%d outbox publishes refused by full queues", len(outcome.refused))
            consumed = len(taken.rows)
        self.broker.wake_queues(outcome.touched)
        return consumed
