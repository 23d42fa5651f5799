"""Unacked deliveries come back, redelivered and in order, whenever their
channel, connection or socket goes away."""

from __future__ import annotations

import asyncio
import time

import pytest
from pamqp import body as pbody
from pamqp import commands, header

from .conftest import (
    OP_TIMEOUT,
    RawClosed,
    aiormq_connect,
    connect,
    drain,
    wait_queue_count,
)

pytestmark = pytest.mark.timeout(60)

TEN = [str(i).encode() for i in range(1, 11)]


def publish_confirmed(conn, q: str, bodies: list[bytes]) -> None:
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", q, b)
    ch.close()


def consume_all(conn, q: str, n: int, timeout: float = OP_TIMEOUT) -> list[tuple[bytes, bool]]:
    """Consume exactly n messages (acking them) and return (body, redelivered)."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=200)
    got: list[tuple[bytes, bool]] = []

    def on_message(c, method, props, body):
        got.append((body, method.redelivered))
        c.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_message)
    assert drain(conn, lambda: len(got) >= n, timeout=timeout), f"got {len(got)} of {n}"
    ch.basic_cancel(tag)
    ch.close()
    return got


def hold_unacked(conn, q: str, n: int):
    """A channel with a consumer holding n unacked deliveries."""
    ch = conn.channel()
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
    assert drain(conn, lambda: len(got) >= n)
    assert [b for _, b in got] == TEN[:n]
    assert not any(m.redelivered for m, _ in got)
    return ch, got


def test_channel_close_requeues_in_order(conn, resources):
    q = resources.queue("redeliver-channel")
    publish_confirmed(conn, q, TEN)
    ch, _ = hold_unacked(conn, q, 10)
    ch.close()
    assert consume_all(conn, q, 10) == [(b, True) for b in TEN]


def test_connection_close_requeues_in_order(conn, open_conn, resources):
    q = resources.queue("redeliver-conn")
    publish_confirmed(conn, q, TEN)
    consumer_conn = open_conn()
    hold_unacked(consumer_conn, q, 10)
    consumer_conn.close()
    assert consume_all(conn, q, 10) == [(b, True) for b in TEN]


def test_socket_drop_requeues_in_order(conn, raw, resources):
    q = resources.queue("redeliver-drop")
    publish_confirmed(conn, q, TEN)
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.rpc(commands.Basic.Consume(queue=q, consumer_tag="raw"), commands.Basic.ConsumeOk)
    for expected in TEN:
        d = c.expect(commands.Basic.Deliver, channel=1)
        assert d.redelivered is False
        assert c.recv_content()[1] == expected
    c.sock.close()  # no connection.close, no channel.close
    assert consume_all(conn, q, 10) == [(b, True) for b in TEN]


def test_partial_ack_then_close(conn, resources):
    q = resources.queue("redeliver-partial")
    publish_confirmed(conn, q, TEN)
    ch, got = hold_unacked(conn, q, 10)
    tags = {b: m.delivery_tag for m, b in got}
    ch.basic_ack(tags[b"3"], multiple=True)  # 1..3
    ch.basic_ack(tags[b"5"])
    ch.close()
    expected = [b"4", b"6", b"7", b"8", b"9", b"10"]
    assert consume_all(conn, q, 6) == [(b, True) for b in expected]


def test_unacked_go_to_a_waiting_consumer(conn, open_conn, resources):
    q = resources.queue("redeliver-waiting")
    publish_confirmed(conn, q, TEN[:3])
    first_conn = open_conn()
    hold_unacked(first_conn, q, 3)

    waiting = []
    ch = conn.channel()
    ch.basic_consume(q, lambda c, m, p, b: waiting.append((b, m.redelivered)), auto_ack=True)
    first_conn.close()
    assert drain(conn, lambda: len(waiting) == 3)
    assert waiting == [(b, True) for b in TEN[:3]]


def test_cancel_keeps_unacked_until_channel_closes(conn, resources):
    q = resources.queue("redeliver-cancel")
    publish_confirmed(conn, q, TEN[:3])
    ch, got = hold_unacked(conn, q, 3)
    ch.basic_cancel(got[0][0].consumer_tag)
    # Still unacked (and ackable) after the cancel.
    ch.basic_ack(got[0][0].delivery_tag)
    ch.close()
    assert consume_all(conn, q, 2) == [(b"2", True), (b"3", True)]


def test_requeue_goes_to_head_of_queue(conn, resources):
    q = resources.queue("redeliver-head")
    publish_confirmed(conn, q, TEN[:4])
    ch = conn.channel()
    m1, _, b1 = ch.basic_get(q)
    m2, _, b2 = ch.basic_get(q)
    assert (b1, b2) == (b"1", b"2")
    ch.basic_nack(m2.delivery_tag, requeue=True)
    ch.basic_nack(m1.delivery_tag, requeue=True)
    got = consume_all(conn, q, 4)
    assert got == [(b"1", True), (b"2", True), (b"3", False), (b"4", False)]


def test_dead_heartbeat_requeues(conn, raw, resources):
    """A client that stops sending heartbeats is dropped and its unacked
    deliveries come back."""
    q = resources.queue("redeliver-heartbeat")
    publish_confirmed(conn, q, TEN[:2])
    c = raw()
    c.handshake(heartbeat_=1)
    c.open_channel(1)
    c.rpc(commands.Basic.Consume(queue=q), commands.Basic.ConsumeOk)
    with pytest.raises(RawClosed):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, value = c.recv(timeout=15)
            if isinstance(value, commands.Connection.Close):
                c.send(commands.Connection.CloseOk())
    assert consume_all(conn, q, 2) == [(b"1", True), (b"2", True)]


def test_incomplete_publish_on_dropped_socket_is_discarded(conn, raw, resources):
    q = resources.queue("partial-publish")
    ch = conn.channel()
    ch.queue_declare(q)
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Publish(exchange="", routing_key=q), 1)
    c.send(header.ContentHeader(0, 10, commands.Basic.Properties()), 1)
    c.send(pbody.ContentBody(b"12345"), 1)  # half the body
    c.sock.close()
    time.sleep(0.3)
    assert wait_queue_count(ch, q, 0, timeout=0.5) == 0
    assert ch.basic_get(q)[0] is None


async def test_aiormq_connection_close_requeues(amqp_url, resources):
    q = resources.queue("redeliver-aiormq")
    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(q)
        for b in TEN[:5]:
            await ch.basic_publish(b, routing_key=q)
        consumer = await aiormq_connect(amqp_url)
        cch = await consumer.channel()
        got = []
        all_in = asyncio.Event()

        def on_message(message):
            got.append(message.body)
            if len(got) == 5:
                all_in.set()

        await cch.basic_consume(q, on_message)
        await asyncio.wait_for(all_in.wait(), OP_TIMEOUT)
        await consumer.close()

        again = []
        for _ in range(5):
            msg = await asyncio.wait_for(ch.basic_get(q, no_ack=True), OP_TIMEOUT)
            again.append((msg.body, msg.delivery.redelivered))
        assert again == [(b, True) for b in TEN[:5]]
    finally:
        await conn.close()


def test_fifo_1000_messages(amqp_url, resources):
    c = connect(amqp_url)
    try:
        q = resources.queue("fifo")
        bodies = [f"{i:04d}".encode() for i in range(1000)]
        publish_confirmed(c, q, bodies)
        got = consume_all(c, q, 1000, timeout=30)
        assert [b for b, _ in got] == bodies
        assert not any(r for _, r in got)
    finally:
        c.close()


def test_fifo_1000_messages_unacked_then_redelivered(amqp_url, resources):
    c = connect(amqp_url)
    try:
        q = resources.queue("fifo-redeliver")
        bodies = [f"{i:04d}".encode() for i in range(1000)]
        publish_confirmed(c, q, bodies)
        ch = c.channel()
        got = []
        ch.basic_consume(q, lambda _c, m, p, b: got.append(b))
        assert drain(c, lambda: len(got) == 1000, timeout=30)
        assert got == bodies
        ch.close()
        again = consume_all(c, q, 1000, timeout=30)
        assert again == [(b, True) for b in bodies]
    finally:
        c.close()
