"""A channel's exchange and queue methods: declare, delete, bind, unbind, purge."""

from __future__ import annotations

from pamqp import commands

from cavalcade.errors import NotFound

from .consumers import Consumers
from .framing import unchecked
from .link import Link


class LastQueue:
    """The queue this channel declared last: an empty queue name means that one."""

    def __init__(self) -> None:
        self.name = ""

    def resolve(self, name: str) -> str:
        if name:
            return name
        if not self.name:
            raise NotFound("no previously declared queue")
        return self.name

    def binding_key(self, queue: str, routing_key: str) -> str:
        """No queue and no key: the last declared queue, with its name as the key."""
        return self.name if not queue and not routing_key else routing_key


class Entities:
    """exchange.* and queue.* on behalf of one channel's session."""

    def __init__(
        self, link: Link, number: int, last_queue: LastQueue, consumers: Consumers
    ) -> None:
        self.link = link
        self.broker = link.broker
        self.number = number
        self.last_queue = last_queue
        self.consumers = consumers

    # -- exchanges --------------------------------------------------------------

    async def on_exchange_declare(self, m: commands.Exchange.Declare, _: None) -> None:
        await self.broker.declare_exchange(
            self.link.session,
            m.exchange,
            m.exchange_type,
            m.passive,
            m.durable,
            m.auto_delete,
            m.internal,
            dict(m.arguments or {}),
        )
        if not m.nowait:
            self.link.send_method(self.number, commands.Exchange.DeclareOk())

    async def on_exchange_delete(self, m: commands.Exchange.Delete, _: None) -> None:
        await self.broker.delete_exchange(self.link.session, m.exchange, m.if_unused)
        if not m.nowait:
            self.link.send_method(self.number, commands.Exchange.DeleteOk())

    async def on_exchange_bind(self, m: commands.Exchange.Bind, _: None) -> None:
        await self.broker.bind_exchange(
            self.link.session, m.destination, m.source, m.routing_key, dict(m.arguments or {})
        )
        if not m.nowait:
            self.link.send_method(self.number, commands.Exchange.BindOk())

    async def on_exchange_unbind(self, m: commands.Exchange.Unbind, _: None) -> None:
        await self.broker.bind_exchange(
            self.link.session,
            m.destination,
            m.source,
            m.routing_key,
            dict(m.arguments or {}),
            unbind=True,
        )
        if not m.nowait:
            self.link.send_method(self.number, commands.Exchange.UnbindOk())

    # -- queues -----------------------------------------------------------------

    async def on_queue_declare(self, m: commands.Queue.Declare, _: None) -> None:
        name = m.queue
        if m.passive and not name:
            name = self.last_queue.resolve(name)
        result = await self.broker.declare_queue(
            self.link.session,
            name,
            m.passive,
            m.durable,
            m.exclusive,
            m.auto_delete,
            dict(m.arguments or {}),
        )
        self.last_queue.name = result.name
        if not m.nowait:
            self.link.send_method(
                self.number,
                unchecked(
                    commands.Queue.DeclareOk,
                    queue=result.name,
                    message_count=result.message_count,
                    consumer_count=result.consumer_count,
                ),
            )

    async def on_queue_bind(self, m: commands.Queue.Bind, _: None) -> None:
        await self.broker.bind_queue(
            self.link.session,
            self.last_queue.resolve(m.queue),
            m.exchange,
            self.last_queue.binding_key(m.queue, m.routing_key),
            dict(m.arguments or {}),
        )
        if not m.nowait:
            self.link.send_method(self.number, commands.Queue.BindOk())

    async def on_queue_unbind(self, m: commands.Queue.Unbind, _: None) -> None:
        await self.broker.bind_queue(
            self.link.session,
            self.last_queue.resolve(m.queue),
            m.exchange,
            self.last_queue.binding_key(m.queue, m.routing_key),
            dict(m.arguments or {}),
            unbind=True,
        )
        self.link.send_method(self.number, commands.Queue.UnbindOk())

    async def on_queue_purge(self, m: commands.Queue.Purge, _: None) -> None:
        count = await self.broker.purge_queue(self.link.session, self.last_queue.resolve(m.queue))
        if not m.nowait:
            self.link.send_method(self.number, commands.Queue.PurgeOk(message_count=count))

    async def on_queue_delete(self, m: commands.Queue.Delete, _: None) -> None:
        # As on RabbitMQ, delete-ok comes before the basic.cancel of our own consumers.
        self.consumers.hold_cancels()
        try:
            count = await self.broker.delete_queue(
                self.link.session, self.last_queue.resolve(m.queue), m.if_unused, m.if_empty
            )
            if not m.nowait:
                self.link.send_method(self.number, commands.Queue.DeleteOk(message_count=count))
        finally:
            self.consumers.send_held_cancels()
