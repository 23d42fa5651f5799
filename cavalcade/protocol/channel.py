"""One AMQP channel: content assembly, the per-channel task, and its method handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pamqp import commands
from pamqp.base import Frame

from cavalcade.broker.api import CLAIM_CAP, DIRECT_REPLY_TO, Backoff, ClaimedMessage, retry
from cavalcade.domain.arguments import server_generated_name
from cavalcade.domain.properties import (
    MalformedProperties,
    Properties,
    parse_properties,
    rewrite_properties,
)
from cavalcade.errors import (
    AMQPError,
    CommandInvalid,
    NotAllowed,
    NotFound,
    NotImplemented_,
    PreconditionFailed,
    SyntaxError_,
    UnexpectedFrame,
)

from .closing import close_frame
from .framing import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    RawFrame,
    content_frames,
    decode_method,
    deliver_payload,
    get_ok_payload,
    parse_content_header,
    return_payload,
    unchecked,
)
from .link import ChannelState, Link
from .tasks import keep, spawn

log = logging.getLogger(__name__)

INBOX_HIGH = 512
INBOX_LOW = 64
SLICE = 0.005  # seconds a channel task may run before it yields to the event loop

Unacked = tuple[int, int, "Consumer | None"]  # message id, queue id, consumer


class Consumer:
    """A basic.consume on a channel; the broker's dispatcher sees it as a DeliveryTarget."""

    __slots__ = (
        "channel",
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
        self, channel: Channel, tag: str, no_ack: bool, exclusive: bool, priority: int
    ) -> None:
        self.channel = channel
        self.channel_key = channel.key
        self.tag = tag
        self.queue_id = 0
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.unacked = 0
        self.reserved = 0

    def credit(self) -> int:
        return self.channel.credit_for(self)

    def deliver(self, messages: list[ClaimedMessage]) -> bool:
        return self.channel.deliver(self, messages)

    def cancel_by_server(self) -> None:
        self.channel.cancel_by_server(self)

    def reserve(self, n: int) -> None:
        self.reserved += n
        if not self.no_ack:
            self.channel.global_reserved += n

    def release(self, n: int) -> None:
        self.reserved -= n
        if not self.no_ack:
            self.channel.global_reserved -= n


class Channel:
    """Frames in, in order, through one task; deliveries and confirms out."""

    def __init__(self, link: Link, number: int) -> None:
        self.link = link
        self.broker = link.broker
        self.number = number
        self.key = link.broker.next_id()
        self.state = ChannelState.OPEN
        self.consumers: dict[str, Consumer] = {}
        self._lingering: list[Consumer] = []  # cancelled, still holding unacked messages
        self._held_cancels: list[str] | None = None  # server cancels waiting for delete-ok
        self._last_stored: asyncio.Future[int] | None = None  # last publish owing a reply
        self.unacked: dict[int, Unacked] = {}
        self.next_tag = 0
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.global_unacked = 0
        self.global_reserved = 0
        self._wake_turn = -1  # which consumer's queue is woken first (global credit)
        self.confirm = False
        self.publish_seq = 0
        self._confirm_upto = 0
        self._confirm_sent = 0
        self._confirm_scheduled = False
        self.tx = False
        self._tx_publishes: list[tuple[commands.Basic.Publish, Properties, bytes]] = []
        self._tx_acks: list[tuple[int, Unacked]] = []
        self._tx_rejects: list[tuple[int, Unacked, bool]] = []
        self.last_queue = ""
        self.reply_to: str | None = None  # our direct reply-to queue, once consumed
        self._reply_tag: str | None = None
        self._method: commands.Basic.Publish | None = None
        self._props = b""
        self._body_size = 0
        self._body: list[bytes] = []
        self._body_got = 0
        self._inbox: asyncio.Queue[tuple[Frame | _Fail, tuple[bytes, bytes] | None]] = (
            asyncio.Queue()
        )
        self._reading_paused = False
        self._discarding = False
        self._handlers: dict[type, Callable[[Any, Any], Awaitable[None]]] = {
            commands.Channel.Close: self.on_channel_close,
            commands.Channel.Flow: self.on_channel_flow,
            commands.Exchange.Declare: self.on_exchange_declare,
            commands.Exchange.Delete: self.on_exchange_delete,
            commands.Exchange.Bind: self.on_exchange_bind,
            commands.Exchange.Unbind: self.on_exchange_unbind,
            commands.Queue.Declare: self.on_queue_declare,
            commands.Queue.Bind: self.on_queue_bind,
            commands.Queue.Unbind: self.on_queue_unbind,
            commands.Queue.Purge: self.on_queue_purge,
            commands.Queue.Delete: self.on_queue_delete,
            commands.Basic.Qos: self.on_basic_qos,
            commands.Basic.Consume: self.on_basic_consume,
            commands.Basic.Cancel: self.on_basic_cancel,
            commands.Basic.Publish: self.on_basic_publish,
            commands.Basic.Get: self.on_basic_get,
            commands.Basic.Ack: self.on_basic_ack,
            commands.Basic.Reject: self.on_basic_reject,
            commands.Basic.Nack: self.on_basic_nack,
            commands.Basic.Recover: self.on_basic_recover,
            commands.Basic.RecoverAsync: self.on_basic_recover,
            commands.Confirm.Select: self.on_confirm_select,
            commands.Tx.Select: self.on_tx_select,
            commands.Tx.Commit: self.on_tx_commit,
            commands.Tx.Rollback: self.on_tx_rollback,
        }
        self._frame_handlers: dict[int, Callable[[RawFrame], None]] = {
            FRAME_METHOD: self._on_method_frame,
            FRAME_HEADER: self._on_header_frame,
            FRAME_BODY: self._on_body_frame,
        }
        self._task = asyncio.create_task(self._run(), name=f"channel-{number}")

    # -- as the connection sees it ------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ChannelState.OPEN

    @property
    def _torn_down(self) -> bool:
        return self.state is ChannelState.CLOSED

    @property
    def needs_teardown(self) -> bool:
        """Open, or still holding consumers or unacked deliveries."""
        return self.state is ChannelState.OPEN or bool(self.consumers) or bool(self.unacked)

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed (confirm mode), for the statistics."""
        return max(0, self.publish_seq - self._confirm_sent) if self.confirm else 0

    def wake_queues(self) -> None:
        """The socket takes writes again: let every consumer's queue deliver."""
        for c in self.consumers.values():
            self.broker.wake(c.queue_id)

    def fail(self, exc: BaseException) -> None:
        """Close this channel (soft error) or, through the link, the connection (hard)."""
        if self.link.closed:
            return
        closing = close_frame(self.broker.amqp_error(exc), self.number)
        if closing.closes_connection:
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

    # -- frames in (synchronous, from data_received) ---------------------------

    def on_frame(self, f: RawFrame) -> None:
        if self.state is not ChannelState.OPEN:
            self._on_frame_while_closing(f)
            return
        handler = self._frame_handlers.get(f.type)
        if handler is not None:
            handler(f)

    def _on_method_frame(self, f: RawFrame) -> None:
        if self._method is not None:
            raise UnexpectedFrame(
                "expected content header for class 60, got non content header frame instead",
                60,
                40,
            )
        method = decode_method(f.payload)
        if isinstance(method, commands.Basic.Publish):
            self._method = method
            self.link.mark_publisher()
            return
        if isinstance(method, commands.Channel.CloseOk):
            return
        self._enqueue(method, None)

    def _on_header_frame(self, f: RawFrame) -> None:
        if self._method is None:
            raise UnexpectedFrame("expected method frame, got non method frame instead")
        class_id, size, props = parse_content_header(f.payload)
        if class_id != 60:
            raise UnexpectedFrame(
                f"expected content header for class 60, got one for class {class_id} instead",
                60,
                40,
            )
        limit = self.link.max_message_size
        if size > limit:
            self._method = None
            self._discarding = True
            self._fail_soon(
                PreconditionFailed(
                    f"message size {size} is larger than configured max size {limit}",
                    60,
                    40,
                )
            )
            return
        self._props, self._body_size, self._body, self._body_got = props, size, [], 0
        if size == 0:
            self._complete_publish()
        else:
            self._body_size = size

    def _on_body_frame(self, f: RawFrame) -> None:
        if self._discarding:
            return  # the body of a refused message: the channel is about to close
        if self._method is None:
            raise UnexpectedFrame("expected method frame, got non method frame instead")
        if self._body_size == 0:
            raise UnexpectedFrame(
                "expected content header for class 60, got non content header frame instead",
                60,
                40,
            )
        self._body.append(f.payload)
        self._body_got += len(f.payload)
        if self._body_got >= self._body_size:
            if self._body_got > self._body_size:
                raise UnexpectedFrame("content body larger than announced in its header")
            self._complete_publish()

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

    def _complete_publish(self) -> None:
        method = self._method
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._method, self._body, self._body_size, self._body_got = None, [], 0, 0
        assert method is not None
        self._enqueue(method, (self._props, body))

    def _enqueue(self, method: Frame, content: tuple[bytes, bytes] | None) -> None:
        self._inbox.put_nowait((method, content))
        if not self._reading_paused and self._inbox.qsize() > INBOX_HIGH:
            self._reading_paused = True
            self.link.pause_reading(self.number)

    def _fail_soon(self, exc: AMQPError) -> None:
        """A soft error found while framing: close the channel once earlier work is done."""
        self._inbox.put_nowait((_Fail(exc), None))

    # -- the channel task ------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slice_end = 0.0
        while True:
            if self._inbox.empty():
                method, content = await self._inbox.get()
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
            if self.state is not ChannelState.OPEN:
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
                if self._last_stored is not None and not isinstance(method, _ASYNC_METHODS):
                    await self._settle_publishes()
                if not isinstance(method, _ASYNC_METHODS):
                    _strip_cr_lf(method)
                await self._handle(handler, method, content)
                if self._torn_down:
                    return
            except asyncio.CancelledError:
                raise
            except AMQPError as exc:
                if not exc.class_id and not isinstance(method, _Fail):
                    exc.class_id, exc.method_id = _ids(method)
                self.fail(exc)
            except Exception as exc:  # never take the node down
                log.exception("channel %s: %s failed", self.number, type(method).__name__)
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
        entries = list(self.unacked.values())
        entries += [e for _, e in self._tx_acks] + [e for _, e, _ in self._tx_rejects]
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
        consumers = list(self.consumers.values()) + self._lingering
        self.consumers.clear()
        self._lingering.clear()
        pending = self._held()
        self.unacked.clear()
        self._tx_acks.clear()
        self._tx_rejects.clear()
        self._tx_publishes.clear()
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

    async def on_channel_flow(self, m: commands.Channel.Flow, _: None) -> None:
        if not m.active:
            raise NotImplemented_("active=false", 20, 20)  # as RabbitMQ
        self.link.send_method(self.number, commands.Channel.FlowOk(active=m.active))

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

    def _queue_name(self, name: str) -> str:
        if name:
            return name
        if not self.last_queue:
            raise NotFound("no previously declared queue")
        return self.last_queue

    def _binding_key(self, queue: str, routing_key: str) -> str:
        """No queue and no key: the last declared queue, with its name as the key."""
        return self.last_queue if not queue and not routing_key else routing_key

    async def on_queue_declare(self, m: commands.Queue.Declare, _: None) -> None:
        name = m.queue
        if m.passive and not name:
            name = self._queue_name(name)
        result = await self.broker.declare_queue(
            self.link.session,
            name,
            m.passive,
            m.durable,
            m.exclusive,
            m.auto_delete,
            dict(m.arguments or {}),
        )
        self.last_queue = result.name
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
            self._queue_name(m.queue),
            m.exchange,
            self._binding_key(m.queue, m.routing_key),
            dict(m.arguments or {}),
        )
        if not m.nowait:
            self.link.send_method(self.number, commands.Queue.BindOk())

    async def on_queue_unbind(self, m: commands.Queue.Unbind, _: None) -> None:
        await self.broker.bind_queue(
            self.link.session,
            self._queue_name(m.queue),
            m.exchange,
            self._binding_key(m.queue, m.routing_key),
            dict(m.arguments or {}),
            unbind=True,
        )
        self.link.send_method(self.number, commands.Queue.UnbindOk())

    async def on_queue_purge(self, m: commands.Queue.Purge, _: None) -> None:
        count = await self.broker.purge_queue(self.link.session, self._queue_name(m.queue))
        if not m.nowait:
            self.link.send_method(self.number, commands.Queue.PurgeOk(message_count=count))

    async def on_queue_delete(self, m: commands.Queue.Delete, _: None) -> None:
        # As on RabbitMQ, delete-ok comes before the basic.cancel of our own consumers.
        self._held_cancels = []
        try:
            count = await self.broker.delete_queue(
                self.link.session, self._queue_name(m.queue), m.if_unused, m.if_empty
            )
            if not m.nowait:
                self.link.send_method(self.number, commands.Queue.DeleteOk(message_count=count))
        finally:
            held, self._held_cancels = self._held_cancels, None
            for tag in held:
                self._send_cancel(tag)

    # -- publish ----------------------------------------------------------------

    async def on_basic_publish(
        self, m: commands.Basic.Publish, content: tuple[bytes, bytes]
    ) -> None:
        if m.immediate:
            raise NotImplemented_("immediate=true", 60, 40)
        raw, body = content
        try:
            props = parse_properties(raw)
        except MalformedProperties as exc:
            raise SyntaxError_(f"malformed content header properties: {exc}", 60, 40) from exc
        session = self.link.session
        if props.reply_to == DIRECT_REPLY_TO:
            if self.reply_to is None:
                raise PreconditionFailed("fast reply consumer does not exist", 60, 40)
            raw = rewrite_properties(raw, None, False, reply_to=self.reply_to)
            props = parse_properties(raw)
        if props.user_id is not None and props.user_id != session.user:
            raise PreconditionFailed(
                f"user_id property set to '{props.user_id}' but authenticated user was "
                f"'{session.user}'",
                60,
                40,
            )
        self.broker.check_publish(session, m.exchange)
        await self.broker.check_exchange(session, m.exchange)
        self.broker.check_message(props)
        if self.tx:
            self._tx_publishes.append((m, props, body))
            return
        fut = self.broker.publish(session, m.exchange, m.routing_key, props, body)
        seq = 0
        if self.confirm:
            self.publish_seq += 1
            seq = self.publish_seq
        if m.mandatory or seq:
            fut.add_done_callback(partial(self._on_stored, m, props.raw, body, seq))
            self._last_stored = fut

    async def _settle_publishes(self) -> None:
        """Before answering a synchronous method, send the returns and confirms of every
        earlier publish on this channel (RabbitMQ's order, which pika relies on)."""
        fut, self._last_stored = self._last_stored, None
        if fut is not None and not fut.done():
            await asyncio.wait([fut])  # batches commit in order: all earlier ones are done
        self._send_confirms()

    def _on_stored(
        self,
        m: commands.Basic.Publish,
        raw: bytes,
        body: bytes,
        seq: int,
        fut: asyncio.Future[int],
    ) -> None:
        """A publish was routed and committed: basic.return if it reached no queue and
        was mandatory, then (in confirm mode) its basic.ack or basic.nack."""
        if self.state is not ChannelState.OPEN:
            return
        stored = not fut.cancelled() and fut.exception() is None
        if stored and m.mandatory and fut.result() == 0:
            self.link.write_frames(
                content_frames(
                    self.number,
                    return_payload(312, "NO_ROUTE", m.exchange, m.routing_key),
                    raw,
                    body,
                    self.link.frame_max,
                )
            )
        if seq:
            self._on_committed(seq, fut)

    def _on_committed(self, seq: int, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            # Not stored: confirm what came before, then nack this one (in order).
            self._send_confirms()
            self._confirm_upto = self._confirm_sent = seq
            self.link.send_method(
                self.number, commands.Basic.Nack(delivery_tag=seq, multiple=False, requeue=False)
            )
            return
        if seq > self._confirm_upto:
            self._confirm_upto = seq
        if not self._confirm_scheduled:
            self._confirm_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_confirms)

    def _send_confirms(self) -> None:
        self._confirm_scheduled = False
        if self.state is not ChannelState.OPEN or self._confirm_upto <= self._confirm_sent:
            return
        multiple = self._confirm_upto - self._confirm_sent > 1
        self.broker.stats.confirmed(self._confirm_upto - self._confirm_sent)
        self._confirm_sent = self._confirm_upto
        self.link.send_method(
            self.number, commands.Basic.Ack(delivery_tag=self._confirm_upto, multiple=multiple)
        )

    # -- consume ----------------------------------------------------------------

    def credit_for(self, c: Consumer) -> int:
        if not self.is_open or self.link.write_paused or c.tag not in self.consumers:
            return 0
        if c.no_ack:
            # As RabbitMQ's limiter: no-ack deliveries do not count against the channel's
            # (global) prefetch, but wait while it is used up by ack-mode consumers.
            if self.global_prefetch and self.global_unacked >= self.global_prefetch:
                return 0
            return CLAIM_CAP
        credit = CLAIM_CAP
        if self.consumer_prefetch:
            credit = min(credit, self.consumer_prefetch - c.unacked - c.reserved)
        if self.global_prefetch:
            credit = min(credit, self.global_prefetch - self.global_unacked - self.global_reserved)
        return max(credit, 0)

    def deliver(self, c: Consumer, messages: list[ClaimedMessage]) -> bool:
        if not self.is_open or self.consumers.get(c.tag) is not c or self.link.closed:
            return False
        frames: list[bytes] = []
        fmax = self.link.frame_max
        for msg in messages:
            self.next_tag += 1
            tag = self.next_tag
            if not c.no_ack:
                self.unacked[tag] = (msg.id, msg.queue_id, c)
                c.unacked += 1
                self.global_unacked += 1
            frames += content_frames(
                self.number,
                deliver_payload(c.tag, tag, msg.redelivered, msg.exchange, msg.routing_key),
                msg.properties,
                msg.body,
                fmax,
            )
        self.link.write_frames(frames)
        return True

    def cancel_by_server(self, c: Consumer) -> None:
        """The queue went away: tell the client (if it understands basic.cancel)."""
        if self.consumers.get(c.tag) is c:
            del self.consumers[c.tag]
            if self._held_cancels is not None:
                self._held_cancels.append(c.tag)
            else:
                self._send_cancel(c.tag)

    def _send_cancel(self, tag: str) -> None:
        if self.state is ChannelState.OPEN and self.link.cancel_notify:
            self.link.send_method(self.number, commands.Basic.Cancel(consumer_tag=tag, nowait=True))

    async def on_basic_qos(self, m: commands.Basic.Qos, _: None) -> None:
        if m.prefetch_size:
            raise NotImplemented_(f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.consumer_prefetch = m.prefetch_count
        self._wake_consumers()
        self.link.send_method(self.number, commands.Basic.QosOk())

    def _wake_consumers(self) -> None:
        """Wake the queues of every consumer, starting one further each time: the first
        woken takes a freed channel-wide (global) credit, so the queues take turns (the
        round-robin RabbitMQ's limiter gives)."""
        consumers = list(self.consumers.values())
        if not consumers:
            return
        self._wake_turn = (self._wake_turn + 1) % len(consumers)
        for c in consumers[self._wake_turn :] + consumers[: self._wake_turn]:
            self.broker.wake(c.queue_id)

    async def on_basic_consume(self, m: commands.Basic.Consume, _: None) -> None:
        tag = m.consumer_tag or server_generated_name("amq.ctag-")
        if tag in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'", 60, 20)
        queue = self._queue_name(m.queue)
        if queue == DIRECT_REPLY_TO:
            if not m.no_ack:
                raise PreconditionFailed("reply consumer cannot acknowledge", 60, 20)
            if self.reply_to is not None:
                raise PreconditionFailed("reply consumer already set", 60, 20)
            queue = self.reply_to = await self.broker.reply_queue(self.link.session)
            self._reply_tag = tag
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
        self.consumers[tag] = c
        try:
            c.queue_id = await self.broker.consume(self.link.session, queue, c, m.exclusive)
        except BaseException:
            self.consumers.pop(tag, None)
            raise
        if not m.nowait:
            self.link.send_method(self.number, commands.Basic.ConsumeOk(consumer_tag=tag))

    async def on_basic_cancel(self, m: commands.Basic.Cancel, _: None) -> None:
        if m.consumer_tag == self._reply_tag:
            self.reply_to = self._reply_tag = None
        c = self.consumers.get(m.consumer_tag or "")
        if c is not None:
            # The consumer stays registered until the broker has stopped dispatching to
            # it: deliveries of a claim in flight reach it (and are tracked) first.
            if c.unacked and self.broker.is_single_active(self.link.session, c.queue_id):
                # As on RabbitMQ, a single active consumer stays active until what it
                # holds is settled: the next one must not overtake those messages.
                await self.broker.detach(c.queue_id, c)
                self._forget_consumer(c)
                self._lingering.append(c)
            else:
                await self.broker.detach(c.queue_id, c)
                self._forget_consumer(c)
                await self.broker.cancel(self.link.session, c.queue_id, c)
        if not m.nowait:
            self.link.send_method(self.number, commands.Basic.CancelOk(consumer_tag=m.consumer_tag))

    def _forget_consumer(self, c: Consumer) -> None:
        if self.consumers.get(c.tag) is c:
            del self.consumers[c.tag]

    async def on_basic_get(self, m: commands.Basic.Get, _: None) -> None:
        result = await self.broker.get(
            self.link.session, self._queue_name(m.queue), m.no_ack, self.key
        )
        if result is None:
            self.link.send_method(self.number, commands.Basic.GetEmpty())
            return
        msg, remaining = result
        self.next_tag += 1
        tag = self.next_tag
        if not m.no_ack:
            self.unacked[tag] = (msg.id, msg.queue_id, None)
        self.link.write_frames(
            content_frames(
                self.number,
                get_ok_payload(tag, msg.redelivered, msg.exchange, msg.routing_key, remaining),
                msg.properties,
                msg.body,
                self.link.frame_max,
            )
        )

    # -- settling deliveries ----------------------------------------------------

    def _take(self, tag: int, multiple: bool, method_id: int) -> list[tuple[int, Unacked]]:
        if multiple:
            if tag == 0:
                taken = list(self.unacked.items())
            else:
                taken = [(t, e) for t, e in self.unacked.items() if t <= tag]
                if not taken and tag not in self.unacked:
                    raise PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
            for t, _ in taken:
                del self.unacked[t]
        else:
            entry = self.unacked.pop(tag, None)
            if entry is None:
                raise PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
            taken = [(tag, entry)]
        queues: set[int] = set()
        for _, (_, qid, c) in taken:
            if c is not None:
                c.unacked -= 1
                self.global_unacked -= 1
                queues.add(qid)
        if self.global_prefetch and queues:
            self._wake_consumers()  # no-ack consumers wait on the channel's limit too
        else:
            for qid in queues:
                self.broker.wake(qid)
        return taken

    async def on_basic_ack(self, m: commands.Basic.Ack, _: None) -> None:
        taken = self._take(m.delivery_tag, m.multiple, 80)
        if self.tx:
            self._tx_acks.extend(taken)
        else:
            self.broker.ack([e[0] for _, e in taken], [e[1] for _, e in taken])
        await self._release_lingering()

    async def _release_lingering(self) -> None:
        """Cancelled consumers that hold nothing any more are removed for good."""
        done = [c for c in self._lingering if c.unacked <= 0]
        if not done:
            return
        self._lingering = [c for c in self._lingering if c.unacked > 0]
        await self.broker.flush()
        for c in done:
            await self.broker.cancel(self.link.session, c.queue_id, c)

    async def on_basic_reject(self, m: commands.Basic.Reject, _: None) -> None:
        await self._settle_negative(self._take(m.delivery_tag or 0, False, 90), m.requeue)

    async def on_basic_nack(self, m: commands.Basic.Nack, _: None) -> None:
        await self._settle_negative(self._take(m.delivery_tag, m.multiple, 120), m.requeue)

    async def _settle_negative(self, taken: list[tuple[int, Unacked]], requeue: bool) -> None:
        if self.tx:
            self._tx_rejects.extend((t, e, requeue) for t, e in taken)
        elif requeue:
            self.broker.requeue([(e[1], e[0]) for _, e in taken])
        else:
            self.broker.discard([(e[1], e[0]) for _, e in taken])
        await self._release_lingering()

    async def on_basic_recover(self, m: commands.Basic.Recover, _: None) -> None:
        if not m.requeue:
            raise NotImplemented_(
                "requeue=false", 60, 110 if isinstance(m, commands.Basic.Recover) else 100
            )
        taken = self._take(0, True, 110)
        self.broker.requeue([(e[1], e[0]) for _, e in taken])
        if isinstance(m, commands.Basic.Recover):
            self.link.send_method(self.number, commands.Basic.RecoverOk())

    # -- confirms and transactions -----------------------------------------------

    async def on_confirm_select(self, m: commands.Confirm.Select, _: None) -> None:
        if self.tx:
            raise PreconditionFailed("cannot switch from tx to confirm mode", 85, 10)
        self.confirm = True
        if not m.nowait:
            self.link.send_method(self.number, commands.Confirm.SelectOk())

    async def on_tx_select(self, m: commands.Tx.Select, _: None) -> None:
        if self.confirm:
            raise PreconditionFailed("cannot switch from confirm to tx mode", 90, 10)
        self.tx = True
        self.link.send_method(self.number, commands.Tx.SelectOk())

    async def on_tx_commit(self, m: commands.Tx.Commit, _: None) -> None:
        if not self.tx:
            raise PreconditionFailed("channel is not transactional", 90, 20)
        publishes, acks, rejects = self._tx_publishes, self._tx_acks, self._tx_rejects
        self._tx_publishes, self._tx_acks, self._tx_rejects = [], [], []
        session = self.link.session
        futures = []
        for pm, props, body in publishes:
            fut = self.broker.publish(session, pm.exchange, pm.routing_key, props, body)
            if pm.mandatory:
                fut.add_done_callback(partial(self._on_stored, pm, props.raw, body, 0))
            futures.append(fut)
        # Everything is queued before the first await: it commits in one batch.
        self.broker.ack([e[0] for _, e in acks], [e[1] for _, e in acks])
        self.broker.requeue([(e[1], e[0]) for _, e, r in rejects if r])
        self.broker.discard([(e[1], e[0]) for _, e, r in rejects if not r])
        await self.broker.flush()
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)
        self.link.send_method(self.number, commands.Tx.CommitOk())

    async def on_tx_rollback(self, m: commands.Tx.Rollback, _: None) -> None:
        if not self.tx:
            raise PreconditionFailed("channel is not transactional", 90, 30)
        self._tx_publishes.clear()
        for tag, entry in self._tx_acks + [(t, e) for t, e, _ in self._tx_rejects]:
            self.unacked[tag] = entry
            c = entry[2]
            if c is not None:
                c.unacked += 1
                self.global_unacked += 1
        self.unacked = dict(sorted(self.unacked.items()))
        self._tx_acks.clear()
        self._tx_rejects.clear()
        self.link.send_method(self.number, commands.Tx.RollbackOk())


# Client methods that expect no reply: they need not wait for earlier publishes' replies.
_ASYNC_METHODS = (
    commands.Basic.Publish,
    commands.Basic.Ack,
    commands.Basic.Nack,
    commands.Basic.Reject,
)


class _Fail:
    """An inbox item that raises a framing-time error in order."""

    __slots__ = ("exc",)

    def __init__(self, exc: AMQPError) -> None:
        self.exc = exc


_NAME_FIELDS = ("queue", "exchange", "source", "destination")


def _strip_cr_lf(method: Any) -> None:
    """RabbitMQ drops CR and LF from queue and exchange names (the client then uses
    the stripped name, e.g. from declare-ok)."""
    for name in _NAME_FIELDS:
        value = getattr(method, name, None)
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            setattr(method, name, value.replace("\r", "").replace("\n", ""))


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


def _ids(method: Any) -> tuple[int, int]:
    index = getattr(method, "index", 0) or 0
    return (index >> 16) & 0xFFFF, index & 0xFFFF
