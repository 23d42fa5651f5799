"""A publish handed over from the frames (its channel task idle) keeps the channel's order
and errors, as one through the channel task would (protocol/channel.py ``_enqueue``)."""

from __future__ import annotations

import asyncio
from typing import Any

from pamqp import body, commands, header
from pamqp import frame as pamqp_frame

from cavalcade.broker.api import DeclaredQueue, Session

from .fakes import Client, FakeBroker, method_bytes, until


class _SlowBroker(FakeBroker):
    """queue.declare and the exchange "slow" wait for ``go`` (a database round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.exchanges.add("slow")

    async def declare_queue(self, s: Session, name: str, *args: Any) -> DeclaredQueue:
        await self.go.wait()
        return await super().declare_queue(s, name, *args)

    def check_exchange_cached(self, s: Session, exchange: str) -> bool:
        return exchange != "slow" and super().check_exchange_cached(s, exchange)

    async def check_exchange(self, s: Session, exchange: str) -> None:
        if exchange == "slow":
            await self.go.wait()
        await super().check_exchange(s, exchange)


def _publish(exchange: str, data: bytes, props: commands.Basic.Properties | None = None) -> bytes:
    out = method_bytes(1, commands.Basic.Publish(exchange=exchange, routing_key="q"))
    out += pamqp_frame.marshal(
        header.ContentHeader(0, len(data), props or commands.Basic.Properties()), 1
    )
    out += pamqp_frame.marshal(body.ContentBody(data), 1)
    return bytes(out)


async def _opened(broker: FakeBroker) -> Client:
    c = Client(broker=broker)
    await c.handshake()
    await c.open_channel(1)
    await asyncio.sleep(0)  # the channel task waits on its inbox
    return c


async def test_a_publish_behind_a_method_being_handled_waits_for_it() -> None:
    broker = _SlowBroker()
    c = await _opened(broker)
    c.send(method_bytes(1, commands.Queue.Declare(queue="q")) + _publish("", b"after"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert broker.published == []  # not ahead of the declare still in hand
    broker.go.set()
    await until(lambda: len(broker.published) == 1)
    assert broker.published[0][3] == b"after"
    await c.close()


async def test_publishes_behind_one_that_needs_the_database_keep_their_order() -> None:
    broker = _SlowBroker()
    c = await _opened(broker)
    c.send(_publish("slow", b"first") + _publish("", b"second") + _publish("", b"third"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert broker.published == []
    broker.go.set()
    await until(lambda: len(broker.published) == 3)
    assert [p[3] for p in broker.published] == [b"first", b"second", b"third"]
    await c.close()


async def test_an_error_of_a_publish_handed_over_at_once_closes_only_its_channel() -> None:
    broker = FakeBroker()
    c = await _opened(broker)
    c.send(_publish("", b"x", commands.Basic.Properties(user_id="mallory")) + _publish("", b"y"))
    text = (
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'"
    )
    assert await c.reply() == method_bytes(
        1, commands.Channel.Close(reply_code=406, reply_text=text, class_id=60, method_id=40)
    )
    assert broker.published == []  # the publish after it is dropped with the channel
    assert not c.transport.closing
    await c.close()


async def test_nothing_queued_after_an_error_that_closes_the_connection_is_carried_out() -> None:
    """As RabbitMQ: once it sends connection.close for an error, what followed is ignored
    (here a declare queued behind the failing publish gets no declare-ok)."""
    broker = _SlowBroker()
    c = await _opened(broker)
    c.send(
        method_bytes(1, commands.Queue.Declare(queue="a"))
        + method_bytes(1, commands.Basic.Publish(exchange="", routing_key="q", immediate=True))
        + bytes(pamqp_frame.marshal(header.ContentHeader(0, 0, commands.Basic.Properties()), 1))
        + method_bytes(1, commands.Queue.Declare(queue="b"))
    )
    broker.go.set()
    await until(lambda: c.transport.closing or b"\x00\x0a\x00\x32" in c.transport.written)
    for _ in range(10):
        await asyncio.sleep(0)
    out = c.transport.take()
    ok = commands.Queue.DeclareOk(queue="a", message_count=0, consumer_count=0)
    assert out.startswith(method_bytes(1, ok))
    assert b"NOT_IMPLEMENTED - immediate=true" in out
    assert "b" not in broker.queues
    await c.close()
