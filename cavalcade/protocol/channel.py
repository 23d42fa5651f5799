"""One AMQP channel: its state, the per-channel task, and method dispatch to its parts.

The parts it owns (composition, one module each): ``content`` assembles publishes from
frames, ``entities`` runs exchange and queue methods, ``publishing`` publishes, confirms
and buffers tx, ``consumers`` consumes and delivers, ``settlement`` acks, rejects and
recovers, ``deliveries`` keeps tags, the unacked map and prefetch, ``reply_to`` is the
direct reply-to consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pamqp import commands
from pamqp.base import Frame

from cavalcade.broker.api import Backoff, retry
from cavalcade.errors import AMQPError, CommandInvalid, NotImplemented_

from .closing import close_frame
from .consumers import Consumers
from .content import Content, ContentAssembler
from .deliveries import Deliveries, Unacked
from .entities import Entities, LastQueue
from .framing import FRAME_METHOD, RawFrame, decode_method
from .link import ChannelState, Link
from .publishing import Publisher, Transaction
from .reply_to import DirectReplyTo
from .settlement import Settlement
from .tasks import keep, spawn

log = logging.getLogger(__name__)

INBOX_HIGH = 512
INBOX_LOW = 64
SLICE = 0.005  # seconds a channel task may run before it yields to the event loop


class Channel:
    """Frames in, in order, through one task; deliveries and confirms out."""

    def __init__(self, link: Link, number: int) -> None:
        self.link = link
        self.broker = link.broker
        self.number = number
        self.key = link.broker.next_id()
        self.state = ChannelState.OPEN
        self.deliveries = Deliveries()
        self.reply_to = DirectReplyTo(link.broker)
        self.transaction = Transaction()
        last_queue = LastQueue()
        self.consuming = Consumers(
            link,
            number,
            self.key,
            lambda: self.is_open,
            self.deliveries,
            self.reply_to,
            last_queue.resolve,
        )
        self.publishing = Publisher(
            link, number, lambda: self.is_open, self.reply_to, self.transaction, self.deliveries
        )
        self.settlement = Settlement(
            link, number, self.deliveries, self.consuming, self.transaction
        )
        self.entities = Entities(link, number, last_queue, self.consuming)
        self.content = ContentAssembler(link, self._enqueue, self._fail_soon)
        self._inbox: asyncio.Queue[tuple[Frame | _Fail | _Mark, Content | None]] = asyncio.Queue()
        self._reading_paused = False
        self._waiting = False  # the task waits for the inbox: nothing received is unhandled
        self._inline_until = 0.0  # (loop time) publishes skip the inbox until then
        self._loop = asyncio.get_running_loop()
        self._handlers = self._method_handlers()
        self._task = asyncio.create_task(self._run(), name=f"channel-{number}")

    def _method_handlers(self) -> dict[type, Callable[[Any, Any], Awaitable[None]]]:
        """Which part handles which client method."""
        entities, consuming, publishing, settlement = (
            self.entities,
            self.consuming,
            self.publishing,
            self.settlement,
        )
        return {
            commands.Channel.Close: self.on_channel_close,
            commands.Channel.Flow: self.on_channel_flow,
            commands.Exchange.Declare: entities.on_exchange_declare,
            commands.Exchange.Delete: entities.on_exchange_delete,
            commands.Exchange.Bind: entities.on_exchange_bind,
            commands.Exchange.Unbind: entities.on_exchange_unbind,
            commands.Queue.Declare: entities.on_queue_declare,
            commands.Queue.Bind: entities.on_queue_bind,
            commands.Queue.Unbind: entities.on_queue_unbind,
            commands.Queue.Purge: entities.on_queue_purge,
            commands.Queue.Delete: entities.on_queue_delete,
            commands.Basic.Qos: consuming.on_basic_qos,
            commands.Basic.Consume: consuming.on_basic_consume,
            commands.Basic.Cancel: consuming.on_basic_cancel,
            commands.Basic.Publish: publishing.on_basic_publish,
            commands.Basic.Get: consuming.on_basic_get,
            commands.Basic.Ack: settlement.on_basic_ack,
            commands.Basic.Reject: settlement.on_basic_reject,
            commands.Basic.Nack: settlement.on_basic_nack,
            commands.Basic.Recover: settlement.on_basic_recover,
            commands.Basic.RecoverAsync: settlement.on_basic_recover,
            commands.Confirm.Select: publishing.on_confirm_select,
            commands.Tx.Select: publishing.on_tx_select,
            commands.Tx.Commit: publishing.on_tx_commit,
            commands.Tx.Rollback: publishing.on_tx_rollback,
        }

    # -- as the connection sees it ------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is _OPEN

    @property
    def _torn_down(self) -> bool:
        return self.state is ChannelState.CLOSED

    @property
    def needs_teardown(self) -> bool:
        """Open, or still holding consumers or unacked deliveries."""
        return self.state is ChannelState.OPEN or bool(self.consumers) or bool(self.unacked)

    def wake_queues(self) -> None:
        """The socket takes writes again: let every consumer's queue deliver."""
        self.consuming.wake_queues()

    def fail(self, exc: BaseException) -> None:
        """Close this channel (soft error) or, through the link, the connection (hard)."""
        if self.link.closed:
            return
        closing = close_frame(self.broker.amqp_error(exc), self.number)
        if closing.closes_connection:
            # What follows on this channel is ignored, as RabbitMQ ignores what follows an
            # error it closes the connection for (the task skips a channel not open).
            self.state = ChannelState.CLOSING
            self.link.fail(closing.error)
            return
        if self.state is not ChannelState.OPEN:
            return
        self.state = ChannelState.CLOSING
        self.link.send_method(self.number, closing.method)
        spawn(self.teardown_logged())

    async def teardown_logged(self) -> None:
        """``teardown``, its failure logged (once per outage if the database is away)."""
        try:
            await self.teardown()
        except Exception as exc:
            if not self.broker.outage.report(exc):
                log.exception("channel teardown failed")

    def _forget(self) -> None:
        self.link.forget_channel(self.number, self)
        self.stop()

    # -- as the statistics see it (describe.py) ---------------------------------------

    @property
    def consumers(self) -> dict[str, Any]:
        """Consumer tag -> ``consumers.Consumer``."""
        return self.consuming.by_tag

    @property
    def unacked(self) -> dict[int, Unacked]:
        return self.deliveries.unacked

    @property
    def consumer_prefetch(self) -> int:
        return self.deliveries.consumer_prefetch

    @property
    def global_prefetch(self) -> int:
        return self.deliveries.global_prefetch

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed (confirm mode), for the statistics."""
        return self.publishing.unconfirmed

    @property
    def confirm(self) -> bool:
        return self.publishing.confirm

    @property
    def tx(self) -> bool:
        return self.transaction.active

    # -- frames in (synchronous, from data_received) ---------------------------

    def on_frame(self, f: RawFrame) -> None:
        if self.state is not _OPEN:
            self._on_frame_while_closing(f)
            return
        self.content.on_frame(f)

    def _on_frame_while_closing(self, f: RawFrame) -> None:
        """After we sent Channel.Close, drop everything but Close / CloseOk."""
        if f.type != FRAME_METHOD:
            return
        try:
            method = decode_method(f.payload)
        except Exception:  # noqa: BLE001
            return
        if isinstance(method, commands.Channel.CloseOk):
            self._forget()
        elif isinstance(method, commands.Channel.Close):
            self.link.send_method(self.number, commands.Channel.CloseOk())
            self._forget()

    def _enqueue(self, method: Frame, content: Content | None) -> None:
        if (
            content is not None
            and self._waiting
            and not self._inbox.qsize()
            and self._loop.time() < self._inline_until
        ):
            # A publish with nothing ahead of it: at once, if no check takes the database
            # (for at most SLICE per wait of the task: then they queue, and the task's
            # turns let the event loop in between).
            assert isinstance(method, commands.Basic.Publish)
            try:
                if self.publishing.publish_now(method, content):
                    return
            except Exception as exc:  # noqa: BLE001 - as the channel task would meet it
                self._failed(method, exc)
                return
        self._inbox.put_nowait((method, content))
        if not self._reading_paused and self._inbox.qsize() > INBOX_HIGH:
            self._reading_paused = True
            self.link.pause_reading(self.number)

    def _fail_soon(self, exc: AMQPError) -> None:
        """A soft error found while framing: close the channel once earlier work is done."""
        self._inbox.put_nowait((_Fail(exc), None))

    async def finish_received(self) -> None:
        """Wait until every method received so far is handled (or the task has ended):
        what a client sent before closing is carried out, as on RabbitMQ."""
        if self._task.done() or self._task is asyncio.current_task():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((_Mark(done), None))
        await asyncio.wait({done, self._task}, return_when=asyncio.FIRST_COMPLETED)

    # -- the channel task ------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slice_end = 0.0
        while True:
            if self._inbox.empty():
                self._waiting = True  # a publish may skip the inbox (see _enqueue)
                self._inline_until = loop.time() + SLICE
                try:
                    method, content = await self._inbox.get()
                finally:
                    self._waiting = False
                slice_end = loop.time() + SLICE
            else:
                if loop.time() >= slice_end:
                    # get() never suspends while the inbox has items: give the loop
                    # (heartbeats, the batcher, other connections) a turn every slice.
                    await asyncio.sleep(0)
                    slice_end = loop.time() + SLICE
                method, content = self._inbox.get_nowait()
            if self._reading_paused and self._inbox.qsize() < INBOX_LOW:
                self._reading_paused = False
                self.link.resume_reading(self.number)
            if isinstance(method, _Mark):
                method.reached()
                continue
            if self.state is not _OPEN:
                continue
            try:
                if isinstance(method, _Fail):
                    raise method.exc
                handler = self._handlers.get(type(method))
                if handler is None:
                    raise CommandInvalid(
                        f"unexpected method {type(method).__name__} on a channel",
                        *_ids(method),
                    )
                if not isinstance(method, _ASYNC_METHODS):
                    await self._before_synchronous(method)
                await self._handle(handler, method, content)
                if self._torn_down:
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never take the node down
                self._failed(method, exc)

    def _failed(self, method: Frame | _Fail, exc: Exception) -> None:
        """A method failed: close the channel (or the connection) as the error says; an
        unexpected error is logged and never takes the node down."""
        if isinstance(exc, AMQPError):
            if not exc.class_id and not isinstance(method, _Fail):
                exc.class_id, exc.method_id = _ids(method)
        else:
            log.exception("channel %s: %s failed", self.number, type(method).__name__, exc_info=exc)
        self.fail(exc)

    async def _handle(
        self, handler: Callable[[Any, Any], Awaitable[None]], method: Frame, content: Any
    ) -> None:
        """Run a handler; while the database is away, hold this channel and retry (the
        handlers are idempotent or reconciled), up to the database wait."""
        backoff = Backoff(0.1, 2.0, wait=self.link.database_wait)
        await retry(
            lambda: handler(method, content),
            self.broker.database_unavailable,
            backoff,
            lambda exc: self.broker.outage.report(exc),  # logged once per outage, not per channel
        )

    def _held(self) -> list[tuple[int, int]]:
        """(queue id, message id) of what this channel holds unacked, incl. settlements
        waiting for tx.commit."""
        entries = list(self.unacked.values()) + self.transaction.held()
        return [(q, m) for (m, q, _c) in entries]

    def held_ids(self) -> list[int]:
        """Ids of the messages this channel holds unacked (incl. uncommitted tx acks)."""
        return [m for _q, m in self._held()]

    def stop(self) -> None:
        """End the channel task (unless it is the caller: then it returns by itself)."""
        if self._task is not asyncio.current_task():
            self._task.cancel()
            keep(self._task)

    # -- closing ----------------------------------------------------------------

    async def teardown(self) -> None:
        """Cancel consumers and requeue unacked deliveries (close, error, EOF, heartbeat)."""
        self.state = ChannelState.CLOSED
        session = self.link.session
        consumers = self.consuming.take_all()
        pending = self._held()
        self.unacked.clear()
        self.transaction.clear()
        # Requeue first: the next consumer (single active, or another node's) must see
        # these messages back in place, redelivered, before anything newer.
        self.broker.requeue(pending)
        if pending and consumers:
            await self.broker.flush()
        if session is not None:
            for c in consumers:
                try:
                    await self.broker.cancel(session, c.queue_id, c)
                except Exception:
                    log.exception("cancel of %s on close failed", c.tag)

    async def on_channel_close(self, m: commands.Channel.Close, _: None) -> None:
        await self.teardown()
        self._forget()
        self.link.send_method(self.number, commands.Channel.CloseOk())

    async def _before_synchronous(self, method: Frame) -> None:
        """Order a synchronous method after the channel's earlier publishes."""
        await self.publishing.before_synchronous(isinstance(method, _SEES_EARLIER_PUBLISHES))
        _strip_cr_lf(method)

    async def on_channel_flow(self, m: commands.Channel.Flow, _: None) -> None:
        if not m.active:
            raise NotImplemented_("active=false", 20, 20)  # as RabbitMQ
        self.link.send_method(self.number, commands.Channel.FlowOk(active=m.active))


_OPEN = ChannelState.OPEN  # hot path: an Enum member read off its class is a lookup

# Client methods that expect no reply: they need not wait for earlier publishes' replies.
_ASYNC_METHODS = (
    commands.Basic.Publish,
    commands.Basic.Ack,
    commands.Basic.Nack,
    commands.Basic.Reject,
)

# Methods whose outcome depends on where earlier publishes on the channel were routed.
_SEES_EARLIER_PUBLISHES = (
    commands.Queue.Bind,
    commands.Queue.Unbind,
    commands.Queue.Purge,
    commands.Queue.Delete,
    commands.Exchange.Bind,
    commands.Exchange.Unbind,
    commands.Exchange.Delete,
    commands.Basic.Get,
)


class _Fail:
    """An inbox item that raises a framing-time error in order."""

    __slots__ = ("exc",)

    def __init__(self, exc: AMQPError) -> None:
        self.exc = exc


class _Mark:
    """An inbox item: everything before it has been handled (``finish_received``)."""

    __slots__ = ("done",)

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done

    def reached(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


_NAME_FIELDS = ("queue", "exchange", "source", "destination")


def _strip_cr_lf(method: Any) -> None:
    """RabbitMQ drops CR and LF from queue and exchange names (the client then uses
    the stripped name, e.g. from declare-ok)."""
    for name in _NAME_FIELDS:
        value = getattr(method, name, None)
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            setattr(method, name, value.replace("\r", "").replace("\n", ""))


def _ids(method: Any) -> tuple[int, int]:
    index = getattr(method, "index", 0) or 0
    return (index >> 16) & 0xFFFF, index & 0xFFFF
