"""A channel's publishes: basic.publish, returns, publisher confirms, and tx buffering."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from pamqp import commands

from cavalcade.broker.api import DIRECT_REPLY_TO
from cavalcade.domain.properties import MalformedProperties, Properties, parse_properties
from cavalcade.errors import NotImplemented_, PreconditionFailed, SyntaxError_

from .deliveries import Deliveries, Taken, Unacked, pairs
from .framing import content_frames, return_payload
from .link import Link
from .reply_to import DirectReplyTo


class Transaction:
    """tx.select mode: publishes and settlements wait here for tx.commit."""

    def __init__(self) -> None:
        self.active = False
        self.publishes: list[tuple[commands.Basic.Publish, Properties, bytes]] = []
        self.acks: Taken = []
        self.rejects: list[tuple[int, Unacked, bool]] = []

    def held(self) -> list[Unacked]:
        """Entries of settlements waiting for tx.commit (the messages are still ours)."""
        return [e for _, e in self.acks] + [e for _, e, _ in self.rejects]

    def clear(self) -> None:
        self.publishes.clear()
        self.acks.clear()
        self.rejects.clear()


class Publisher:
    """basic.publish in; basic.return and (confirm mode) basic.ack/nack out, in order."""

    def __init__(
        self,
        link: Link,
        number: int,
        is_open: Callable[[], bool],
        reply_to: DirectReplyTo,
        tx: Transaction,
        deliveries: Deliveries,
    ) -> None:
        self.link = link
        self.broker = link.broker
        self.number = number
        self._is_open = is_open
        self.reply_to = reply_to
        self.tx = tx
        self.deliveries = deliveries
        self._last_stored: asyncio.Future[int] | None = None  # last publish owing a reply
        self._last_publish: asyncio.Future[int] | None = None  # last publish, for ordering
        self.confirm = False
        self.publish_seq = 0
        self._confirm_upto = 0
        self._confirm_sent = 0
        self._confirm_scheduled = False

    @property
    def unconfirmed(self) -> int:
        """Publishes not yet confirmed (confirm mode), for the statistics."""
        return max(0, self.publish_seq - self._confirm_sent) if self.confirm else 0

    # -- publish ----------------------------------------------------------------

    async def on_basic_publish(
        self, m: commands.Basic.Publish, content: tuple[bytes, bytes]
    ) -> None:
        props, body = self._accepted(m, content)
        await self.broker.check_exchange(self.link.session, m.exchange)
        self._hand_over(m, props, body)

    def publish_now(self, m: commands.Basic.Publish, content: tuple[bytes, bytes]) -> bool:
        """:meth:`on_basic_publish` at once, from the frames, when no check needs the
        database (the usual publish: it skips the channel task). False: nothing was
        done; the channel task takes it."""
        props, body = self._accepted(m, content)
        if not self.broker.check_exchange_cached(self.link.session, m.exchange):
            return False
        self._hand_over(m, props, body)
        return True

    def _accepted(
        self, m: commands.Basic.Publish, content: tuple[bytes, bytes]
    ) -> tuple[Properties, bytes]:
        """The checks of a publish before its exchange's, which change nothing."""
        if m.immediate:
            raise NotImplemented_("immediate=true", 60, 40)
        raw, body = content
        try:
            props = parse_properties(raw)
        except MalformedProperties as exc:
            raise SyntaxError_(f"malformed content header properties: {exc}", 60, 40) from exc
        session = self.link.session
        if props.reply_to == DIRECT_REPLY_TO:
            raw, props = self.reply_to.rewrite(raw)
        if props.user_id is not None and props.user_id != session.user:
            raise PreconditionFailed(
                f"user_id property set to '{props.user_id}' but authenticated user was "
                f"'{session.user}'",
                60,
                40,
            )
        self.broker.check_publish(session, m.exchange)
        return props, body

    def _hand_over(self, m: commands.Basic.Publish, props: Properties, body: bytes) -> None:
        """The message checks, then the publish goes to the transaction or the broker."""
        session = self.link.session
        self.broker.check_message(props)
        if self.tx.active:
            self.tx.publishes.append((m, props, body))
            return
        seq = 0
        if self.confirm:
            self.publish_seq += 1
            seq = self.publish_seq
        waited = bool(m.mandatory or seq)
        fut = self.broker.publish(session, m.exchange, m.routing_key, props, body, waited)
        if waited:
            fut.add_done_callback(partial(self._on_stored, m, props.raw, body, seq))
            self._last_stored = fut
        self._last_publish = fut

    async def before_synchronous(self, sees_publishes: bool) -> None:
        """Before a synchronous method takes effect: send the returns and confirms of every
        earlier publish on this channel (RabbitMQ's order, which pika relies on) and, when
        the method ``sees_publishes`` (an unbind, purge, delete or get), wait until every
        earlier publish is stored, since RabbitMQ routes a publish before the channel's
        next method. Other methods do not wait for unconfirmed publishes: a declare after
        each publish, as kombu sends, would pay a commit each."""
        owes_replies = self._last_stored is not None
        fut = self._last_publish if sees_publishes else self._last_stored
        self._last_stored = None
        if sees_publishes:
            self._last_publish = None
        if fut is not None and not fut.done():
            self.broker.hurry()  # a publish nobody waited for: now the client does
            await asyncio.wait([fut])  # batches commit in order: all earlier ones are done
        if owes_replies:
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
        if not self._is_open():
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
        if not self._is_open() or self._confirm_upto <= self._confirm_sent:
            return
        multiple = self._confirm_upto - self._confirm_sent > 1
        self.broker.stats.confirmed(self._confirm_upto - self._confirm_sent)
        self._confirm_sent = self._confirm_upto
        self.link.send_method(
            self.number, commands.Basic.Ack(delivery_tag=self._confirm_upto, multiple=multiple)
        )

    # -- confirms and transactions -----------------------------------------------

    async def on_confirm_select(self, m: commands.Confirm.Select, _: None) -> None:
        if self.tx.active:
            raise PreconditionFailed("cannot switch from tx to confirm mode", 85, 10)
        self.confirm = True
        if not m.nowait:
            self.link.send_method(self.number, commands.Confirm.SelectOk())

    async def on_tx_select(self, m: commands.Tx.Select, _: None) -> None:
        if self.confirm:
            raise PreconditionFailed("cannot switch from confirm to tx mode", 90, 10)
        self.tx.active = True
        self.link.send_method(self.number, commands.Tx.SelectOk())

    async def on_tx_commit(self, m: commands.Tx.Commit, _: None) -> None:
        tx = self.tx
        if not tx.active:
            raise PreconditionFailed("channel is not transactional", 90, 20)
        publishes, acks, rejects = tx.publishes, tx.acks, tx.rejects
        tx.publishes, tx.acks, tx.rejects = [], [], []
        session = self.link.session
        futures = []
        for pm, props, body in publishes:
            fut = self.broker.publish(session, pm.exchange, pm.routing_key, props, body)
            if pm.mandatory:
                fut.add_done_callback(partial(self._on_stored, pm, props.raw, body, 0))
            futures.append(fut)
        # Everything is queued before the first await: it commits in one batch.
        self.broker.ack([e[0] for _, e in acks], [e[1] for _, e in acks])
        self.broker.requeue(pairs([(t, e) for t, e, r in rejects if r]))
        self.broker.discard(pairs([(t, e) for t, e, r in rejects if not r]))
        await self.broker.flush()
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)
        self.link.send_method(self.number, commands.Tx.CommitOk())

    async def on_tx_rollback(self, m: commands.Tx.Rollback, _: None) -> None:
        tx = self.tx
        if not tx.active:
            raise PreconditionFailed("channel is not transactional", 90, 30)
        tx.publishes.clear()
        self.deliveries.restore(tx.acks + [(t, e) for t, e, _ in tx.rejects])
        tx.acks.clear()
        tx.rejects.clear()
        self.link.send_method(self.number, commands.Tx.RollbackOk())
