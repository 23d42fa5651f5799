"""A channel's consumers: basic.consume/cancel/get/qos, deliveries out, server cancels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pamqp import commands

from cavalcade.broker.api import DIRECT_REPLY_TO, ClaimedMessage
from cavalcade.domain.arguments import server_generated_name
from cavalcade.errors import NotAllowed, NotImplemented_, PreconditionFailed

from .deliveries import Deliveries
from .framing import Buffers, content_frames, deliver_frames, get_ok_payload, short_str
from .link import Link
from .reply_to import DirectReplyTo


class Consumer:
    """A basic.consume on a channel; the broker's dispatcher sees it as a DeliveryTarget."""

    __slots__ = (
        "consumers",
        "channel_key",
        "tag",
        "queue_id",
        "no_ack",
        "exclusive",
        "priority",
        "unacked",
        "reserved",
    )

    def __init__(
        self, consumers: Consumers, tag: str, no_ack: bool, exclusive: bool, priority: int
    ) -> None:
        self.consumers = consumers
        self.channel_key = consumers.channel_key
        self.tag = tag
        self.queue_id = 0
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.unacked = 0
        self.reserved = 0

    def credit(self) -> int:
        return self.consumers.credit_for(self)

    def deliver(self, messages: list[ClaimedMessage]) -> bool:
        return self.consumers.deliver(self, messages)

    def cancel_by_server(self) -> None:
        self.consumers.cancel_by_server(self)

    def reserve(self, n: int) -> None:
        self.consumers.deliveries.reserve(self, n)

    def release(self, n: int) -> None:
        self.consumers.deliveries.release(self, n)


class Consumers:
    """The consumer table of one channel, and what it delivers."""

    def __init__(
        self,
        link: Link,
        number: int,
        channel_key: int,
        is_open: Callable[[], bool],
        deliveries: Deliveries,
        reply_to: DirectReplyTo,
        queue_name: Callable[[str], str],
    ) -> None:
        self.link = link
        self.broker = link.broker
        self.number = number
        self.channel_key = channel_key
        self._is_open = is_open
        self.deliveries = deliveries
        self.reply_to = reply_to
        self._queue_name = queue_name
        self.by_tag: dict[str, Consumer] = {}
        self.lingering: list[Consumer] = []  # cancelled, still holding unacked messages
        self._held_cancels: list[str] | None = None  # server cancels waiting for delete-ok
        self._wake_turn = -1  # which consumer's queue is woken first (global credit)

    # -- as the broker's dispatcher sees them -------------------------------------

    def credit_for(self, c: Consumer) -> int:
        link = self.link
        if not self._is_open() or link.write_paused or link.closing or c.tag not in self.by_tag:
            return 0
        return self.deliveries.credit(c)

    def deliver(self, c: Consumer, messages: list[ClaimedMessage]) -> bool:
        if not self._is_open() or self.by_tag.get(c.tag) is not c or self.link.closed:
            return False
        frames: Buffers = []
        fmax, number, track = self.link.frame_max, self.number, self.deliveries.track
        consumer = short_str(c.tag)
        names: dict[tuple[str, str], bytes] = {}  # a claim's rows share a few
        for msg in messages:
            key = (msg.exchange, msg.routing_key)
            named = names.get(key)
            if named is None:
                named = names[key] = short_str(msg.exchange) + short_str(msg.routing_key)
            tag = track(c, msg.id, msg.queue_id, c.no_ack)
            frames += deliver_frames(
                number, consumer, tag, msg.redelivered, named, msg.properties, msg.body, fmax
            )
        self.link.write_frames(frames)
        return True

    def cancel_by_server(self, c: Consumer) -> None:
        """The queue went away: tell the client (if it understands basic.cancel)."""
        if self.by_tag.get(c.tag) is c:
            del self.by_tag[c.tag]
            if self._held_cancels is not None:
                self._held_cancels.append(c.tag)
            else:
                self._send_cancel(c.tag)

    def _send_cancel(self, tag: str) -> None:
        if self._is_open() and self.link.cancel_notify:
            self.link.send_method(self.number, commands.Basic.Cancel(consumer_tag=tag, nowait=True))

    def hold_cancels(self) -> None:
        """queue.delete: as on RabbitMQ, delete-ok comes before the basic.cancel of our
        own consumers; server cancels wait until ``send_held_cancels``."""
        self._held_cancels = []

    def send_held_cancels(self) -> None:
        held, self._held_cancels = self._held_cancels or [], None
        for tag in held:
            self._send_cancel(tag)

    # -- waking queues --------------------------------------------------------------

    def wake_queues(self) -> None:
        """The socket takes writes again: let every consumer's queue deliver."""
        for c in self.by_tag.values():
            self.broker.credit_freed(c.queue_id)

    def wake_in_turn(self) -> None:
        """Wake the queues of every consumer, starting one further each time: the first
        woken takes a freed channel-wide (global) credit, so the queues take turns (the
        round-robin RabbitMQ's limiter gives)."""
        consumers = list(self.by_tag.values())
        if not consumers:
            return
        self._wake_turn = (self._wake_turn + 1) % len(consumers)
        for c in consumers[self._wake_turn :] + consumers[: self._wake_turn]:
            self.broker.credit_freed(c.queue_id)

    def credit_returned(self, queues: set[int]) -> None:
        """Settlements gave credit back to consumers of ``queues``."""
        if self.deliveries.global_prefetch and queues:
            self.wake_in_turn()  # no-ack consumers wait on the channel's limit too
        else:
            for qid in queues:
                self.broker.credit_freed(qid)

    # -- client methods ---------------------------------------------------------------

    async def on_basic_qos(self, m: commands.Basic.Qos, _: None) -> None:
        if m.prefetch_size:
            raise NotImplemented_(f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
        self.deliveries.set_prefetch(m.prefetch_count, m.global_)
        self.wake_in_turn()
        self.link.send_method(self.number, commands.Basic.QosOk())

    async def on_basic_consume(self, m: commands.Basic.Consume, _: None) -> None:
        tag = m.consumer_tag or server_generated_name("amq.ctag-")
        if tag in self.by_tag:
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'", 60, 20)
        queue = self._queue_name(m.queue)
        if queue == DIRECT_REPLY_TO:
            queue = await self.reply_to.consume(self.link.session, tag, m.no_ack)
        args = dict(m.arguments or {})
        priority = args.get("x-priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise PreconditionFailed(
                f"invalid arg 'x-priority' for queue '{queue}' in vhost "
                f"'{self.link.session.vhost.name}': \"expected integer, got "
                f'{_field_type(priority)}"',
                60,
                20,
            )
        c = Consumer(self, tag, m.no_ack, m.exclusive, priority)
        self.by_tag[tag] = c
        try:
            c.queue_id = await self.broker.consume(self.link.session, queue, c, m.exclusive)
        except BaseException:
            self.by_tag.pop(tag, None)
            raise
        if not m.nowait:
            self.link.send_method(self.number, commands.Basic.ConsumeOk(consumer_tag=tag))

    async def on_basic_cancel(self, m: commands.Basic.Cancel, _: None) -> None:
        self.reply_to.cancelled(m.consumer_tag)
        c = self.by_tag.get(m.consumer_tag or "")
        if c is not None:
            # The consumer stays registered until the broker has stopped dispatching to
            # it: deliveries of a claim in flight reach it (and are tracked) first.
            if c.unacked and self.broker.is_single_active(self.link.session, c.queue_id):
                # As on RabbitMQ, a single active consumer stays active until what it
                # holds is settled: the next one must not overtake those messages.
                await self.broker.detach(c.queue_id, c)
                self._forget(c)
                self.lingering.append(c)
            else:
                await self.broker.detach(c.queue_id, c)
                self._forget(c)
                await self.broker.cancel(self.link.session, c.queue_id, c)
        if not m.nowait:
            self.link.send_method(self.number, commands.Basic.CancelOk(consumer_tag=m.consumer_tag))

    def _forget(self, c: Consumer) -> None:
        if self.by_tag.get(c.tag) is c:
            del self.by_tag[c.tag]

    async def on_basic_get(self, m: commands.Basic.Get, _: None) -> None:
        result = await self.broker.get(
            self.link.session, self._queue_name(m.queue), m.no_ack, self.channel_key
        )
        if result is None:
            self.link.send_method(self.number, commands.Basic.GetEmpty())
            return
        msg, remaining = result
        tag = self.deliveries.track(None, msg.id, msg.queue_id, m.no_ack)
        self.link.write_frames(
            content_frames(
                self.number,
                get_ok_payload(tag, msg.redelivered, msg.exchange, msg.routing_key, remaining),
                msg.properties,
                msg.body,
                self.link.frame_max,
            )
        )

    # -- settled and closed -------------------------------------------------------------

    async def release_lingering(self) -> None:
        """Cancelled consumers that hold nothing any more are removed for good."""
        done = [c for c in self.lingering if c.unacked <= 0]
        if not done:
            return
        self.lingering = [c for c in self.lingering if c.unacked > 0]
        await self.broker.flush()
        for c in done:
            await self.broker.cancel(self.link.session, c.queue_id, c)

    def take_all(self) -> list[Consumer]:
        """Teardown: every consumer, lingering ones included; the table is left empty."""
        consumers = list(self.by_tag.values()) + self.lingering
        self.by_tag.clear()
        self.lingering.clear()
        return consumers


def _field_type(value: Any) -> str:
    """RabbitMQ's name for the field type of a decoded value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
