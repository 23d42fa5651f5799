"""Direct reply-to (``amq.rabbitmq.reply-to``): RPC replies without declaring a queue."""

from __future__ import annotations

import pika

from tests.waiting import wait_until

from .conftest import channel_error, connect, drain, safe_close

REPLY_TO = "amq.rabbitmq.reply-to"


def test_rpc_round_trip(conn, resources):
    q = resources.queue("rpc-server")
    server = conn.channel()
    server.queue_declare(q)
    client = conn.channel()
    replies: list[tuple[bytes, str | None]] = []
    client.basic_consume(
        REPLY_TO, lambda ch, m, p, b: replies.append((b, p.correlation_id)), auto_ack=True
    )
    client.basic_publish(
        "", q, b"ping", pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c1")
    )

    def request() -> tuple | None:
        got = server.basic_get(q, auto_ack=True)
        return got if got[0] is not None else None

    method, props, body = wait_until(request, 2.5, "the request")
    assert body == b"ping"
    assert props.reply_to.startswith(REPLY_TO + ".")
    server.basic_publish(
        "", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id)
    )
    assert drain(conn, lambda: len(replies) == 1)
    assert replies == [(b"pong", "c1")]


def test_reply_consumer_must_be_no_ack(amqp_url):
    c = connect(amqp_url)
    try:
        ch = c.channel()
        err = channel_error(ch, ch.basic_consume, REPLY_TO, lambda *a: None, auto_ack=False)
        assert err.reply_code == 406
    finally:
        safe_close(c)


def test_publish_with_reply_to_needs_a_reply_consumer(amqp_url, resources):
    c = connect(amqp_url)
    try:
        ch = c.channel()
        q = resources.queue("rpc-noconsumer")
        ch.queue_declare(q)
        err = channel_error(
            ch, ch.basic_publish, "", q, b"x", pika.BasicProperties(reply_to=REPLY_TO)
        )
        assert err.reply_code == 406
        assert err.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"
    finally:
        safe_close(c)


def test_passive_declare_of_the_pseudo_queue(channel):
    ok = channel.queue_declare(REPLY_TO, passive=True)
    assert ok.method.queue == REPLY_TO and ok.method.message_count == 0
