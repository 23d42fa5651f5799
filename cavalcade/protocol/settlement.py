"""A channel's settlements: basic.ack, reject, nack and recover (buffered in tx mode)."""

from __future__ import annotations

from pamqp import commands

from cavalcade.errors import NotImplemented_

from .consumers import Consumers
from .deliveries import Deliveries, Taken, pairs
from .link import Link
from .publishing import Transaction


class Settlement:
    """Settles delivery tags with the broker and gives credit back to consumers."""

    def __init__(
        self,
        link: Link,
        number: int,
        deliveries: Deliveries,
        consumers: Consumers,
        tx: Transaction,
    ) -> None:
        self.link = link
        self.broker = link.broker
        self.number = number
        self.deliveries = deliveries
        self.consumers = consumers
        self.tx = tx

    def _take(self, tag: int, multiple: bool, method_id: int) -> Taken:
        taken, queues = self.deliveries.take(tag, multiple, method_id)
        self.consumers.credit_returned(queues)
        return taken

    async def on_basic_ack(self, m: commands.Basic.Ack, _: None) -> None:
        taken = self._take(m.delivery_tag, m.multiple, 80)
        if self.tx.active:
            self.tx.acks.extend(taken)
        else:
            self.broker.ack([e[0] for _, e in taken], [e[1] for _, e in taken])
        await self.consumers.release_lingering()

    async def on_basic_reject(self, m: commands.Basic.Reject, _: None) -> None:
        await self._settle_negative(self._take(m.delivery_tag or 0, False, 90), m.requeue)

    async def on_basic_nack(self, m: commands.Basic.Nack, _: None) -> None:
        await self._settle_negative(self._take(m.delivery_tag, m.multiple, 120), m.requeue)

    async def _settle_negative(self, taken: Taken, requeue: bool) -> None:
        if self.tx.active:
            self.tx.rejects.extend((t, e, requeue) for t, e in taken)
        elif requeue:
            self.broker.requeue(pairs(taken))
        else:
            self.broker.discard(pairs(taken))
        await self.consumers.release_lingering()

    async def on_basic_recover(self, m: commands.Basic.Recover, _: None) -> None:
        if not m.requeue:
            raise NotImplemented_(
                "requeue=false", 60, 110 if isinstance(m, commands.Basic.Recover) else 100
            )
        taken = self._take(0, True, 110)
        self.broker.requeue(pairs(taken))
        if isinstance(m, commands.Basic.Recover):
            self.link.send_method(self.number, commands.Basic.RecoverOk())
