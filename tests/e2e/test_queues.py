"""queue.declare/bind/unbind/purge/delete."""

from __future__ import annotations

import asyncio
import time

import pika
import pika.exceptions
import pytest
from pamqp import commands

from .conftest import OP_TIMEOUT, aiormq_connect, channel_error, drain, get_all, unique

pytestmark = pytest.mark.timeout(30)

LOCKED_TEXT = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'."


def wait_until_gone(conn, queue: str, timeout: float = OP_TIMEOUT) -> bool:
    """Poll a passive declare on fresh channels until it answers 404."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ch = conn.channel()
        try:
            ch.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return True
            raise
        ch.close()
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- #
# declare
# --------------------------------------------------------------------------- #


def test_declare_ok_fields(channel, resources):
    q = resources.queue("decl")
    ok = channel.queue_declare(q, durable=True)
    assert ok.method.queue == q
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    # Re-declaring with identical flags is idempotent.
    channel.queue_declare(q, durable=True)


def test_declare_ok_counts(conn, resources):
    ch = conn.channel()
    # Confirms make the publishes visible before we count (RabbitMQ answers
    # queue.declare ahead of deliveries still in flight to the queue).
    ch.confirm_delivery()
    q = resources.queue("counts")
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    ok = ch.queue_declare(q)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)

    # One consumer holding all three unacked: ready count drops to 0.
    cch = conn.channel()
    got = []
    cch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    assert drain(conn, lambda: len(got) == 3)
    ok = ch.queue_declare(q, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 1)

    cch2 = conn.channel()
    cch2.basic_consume(q, lambda *a: None)
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.consumer_count == 2

    cch.close()  # the three come back as ready
    deadline = time.monotonic() + OP_TIMEOUT
    while True:
        ok = ch.queue_declare(q, passive=True)
        if ok.method.consumer_count == 1 or time.monotonic() > deadline:
            break
    assert ok.method.consumer_count == 1


def _counts(ch, q: str, arguments: dict) -> tuple[int, int]:
    ok = ch.queue_declare(q, arguments=arguments).method
    return ok.message_count, ok.consumer_count


def test_declare_ok_counts_around_a_waiting_consumer(conn, open_conn, resources):
    """Celery's rpc client redeclares the reply queue it consumes before every task
    (with x-expires): the queue of a waiting consumer counts (0, 1); what its prefetch
    holds back shows as ready, and a second consumer counts at once."""
    q = resources.queue("waiting")
    args = {"x-expires": 60_000}
    ch = conn.channel()
    ch.queue_declare(q, arguments=args)
    ch.basic_qos(prefetch_count=1)
    got: list[int] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    conn.process_data_events(time_limit=0.3)  # the consumer waits on an empty queue
    other = open_conn()
    och = other.channel()
    assert [_counts(och, q, args) for _ in range(3)] == [(0, 1)] * 3
    och.confirm_delivery()
    for i in range(3):
        och.basic_publish("", q, b"%d" % i)
    assert drain(conn, lambda: len(got) == 1)
    assert _counts(och, q, args) == (2, 1)  # one unacked, two held back by the prefetch
    for n in (2, 3):
        ch.basic_ack(got[-1])
        assert drain(conn, lambda n=n: len(got) == n)
    ch.basic_ack(got[-1])
    deadline = time.monotonic() + OP_TIMEOUT
    while _counts(och, q, args) != (0, 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _counts(och, q, args) == (0, 1)
    och.basic_consume(q, lambda *a: None)
    assert _counts(ch, q, args) == (0, 2)


def test_server_named_queue(conn):
    ch = conn.channel()
    ok = ch.queue_declare("", exclusive=True)
    name = ok.method.queue
    assert name.startswith("amq.gen-")
    assert len(name) > len("amq.gen-")
    ch.queue_declare(name, passive=True)
    ok2 = ch.queue_declare("", exclusive=True)
    assert ok2.method.queue != name


def test_server_named_queue_can_be_routed_to(channel):
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(name, "amq.direct", name)
    channel.basic_publish("amq.direct", name, b"via-amq.direct")
    channel.basic_publish("", name, b"via-default")
    assert [b for _, _, b in get_all(channel, name)] == [b"via-amq.direct", b"via-default"]


def test_passive_declare_missing_queue_404(conn):
    ch = conn.channel()
    name = unique("missing")
    err = channel_error(ch, ch.queue_declare, name, passive=True)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"
    # Connection still fine.
    conn.channel().queue_declare("", exclusive=True)


def test_passive_declare_ignores_other_flags(channel, resources):
    """kombu's qsize and celery migrate send passive with junk flags."""
    q = resources.queue("passive")
    channel.queue_declare(q, durable=True)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"x")
    ok = channel.queue_declare(q, passive=True, durable=False, auto_delete=True, exclusive=False)
    assert ok.method.message_count == 1
    ok = channel.queue_declare(q, passive=True, arguments={"x-message-ttl": 5}, exclusive=True)
    assert ok.method.queue == q


@pytest.mark.parametrize(
    "second,arg,received,current",
    [
        ({"durable": True}, "durable", "true", "false"),
        ({"auto_delete": True}, "auto_delete", "true", "false"),
    ],
)
def test_inequivalent_redeclare_406(conn, resources, second, arg, received, current):
    ch = conn.channel()
    q = resources.queue("ineq")
    ch.queue_declare(q)
    err = channel_error(ch, ch.queue_declare, q, **second)
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': "
        f"received '{received}' but current is '{current}'"
    )


def test_inequivalent_arguments_406(conn, resources):
    ch = conn.channel()
    q = resources.queue("ineq-args")
    ch.queue_declare(q, arguments={"x-message-ttl": 60000})
    ch.queue_declare(q, arguments={"x-message-ttl": 60000})  # same: fine
    err = channel_error(ch, ch.queue_declare, q, arguments={"x-message-ttl": 1000})
    assert err.reply_code == 406
    assert err.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/'"
    )
    ch = conn.channel()
    q2 = resources.queue("ineq-args2")
    ch.queue_declare(q2)
    err = channel_error(ch, ch.queue_declare, q2, arguments={"x-expires": 100000})
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue '{q2}' in vhost '/': "
        "received the value '100000' of type 'signedint' but current is none"
    )


def test_reserved_queue_name_403(conn):
    ch = conn.channel()
    err = channel_error(ch, ch.queue_declare, "amq.e2e-queue")
    assert err.reply_code == 403
    assert err.reply_text == (
        "ACCESS_REFUSED - queue name 'amq.e2e-queue' contains reserved prefix 'amq.*'"
    )


# --------------------------------------------------------------------------- #
# exclusive / auto-delete
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("op", ["declare", "passive", "consume", "delete", "bind", "purge", "get"])
def test_exclusive_queue_locked_for_other_connections(conn, open_conn, op):
    owner = conn.channel()
    q = unique("excl")
    owner.queue_declare(q, exclusive=True)
    other_conn = open_conn()
    other = other_conn.channel()
    ops = {
        "declare": lambda: other.queue_declare(q),
        "passive": lambda: other.queue_declare(q, passive=True),
        "consume": lambda: other.basic_consume(q, lambda *a: None),
        "delete": lambda: other.queue_delete(q),
        "bind": lambda: other.queue_bind(q, "amq.direct", "k"),
        "purge": lambda: other.queue_purge(q),
        "get": lambda: other.basic_get(q),
    }
    err = channel_error(other, ops[op])
    assert err.reply_code == 405
    assert err.reply_text.startswith(LOCKED_TEXT.format(q=q))
    # The owner can use it freely, also from another channel.
    owner2 = conn.channel()
    owner2.queue_declare(q, exclusive=True)
    owner2.basic_publish("", q, b"mine")
    assert owner2.basic_get(q, auto_ack=True)[2] == b"mine"


def test_exclusive_queue_deleted_when_owner_closes(amqp_url, conn, open_conn):
    owner_conn = open_conn()
    q = unique("excl-gone")
    owner_conn.channel().queue_declare(q, exclusive=True, durable=False)
    owner_conn.close()
    assert wait_until_gone(conn, q)
    # The name is free again for anybody.
    ch = conn.channel()
    ch.queue_declare(q, exclusive=True)


def test_exclusive_queue_deleted_when_owner_socket_drops(conn, raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = unique("excl-drop")
    c.rpc(commands.Queue.Declare(queue=q, exclusive=True), commands.Queue.DeclareOk)
    c.close()  # no connection.close
    assert wait_until_gone(conn, q)


def test_auto_delete_queue_deleted_after_last_consumer_cancels(conn, resources):
    ch = conn.channel()
    q = resources.queue("autodel")
    ch.queue_declare(q, auto_delete=True)
    time.sleep(0.2)
    ch.queue_declare(q, passive=True)  # no consumer yet: still there
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    ok = ch.queue_declare(q, passive=True)  # one consumer left
    assert ok.method.consumer_count == 1
    ch.basic_cancel(t2)
    assert wait_until_gone(conn, q)


def test_auto_delete_queue_deleted_when_consumer_channel_closes(conn, resources):
    q = resources.queue("autodel-close")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_consume(q, lambda *a: None)
    ch.close()
    assert wait_until_gone(conn, q)


# --------------------------------------------------------------------------- #
# bind / purge / delete
# --------------------------------------------------------------------------- #


def test_bind_and_unbind(channel, resources):
    x = resources.exchange("bind")
    channel.exchange_declare(x, "topic")
    q = resources.queue("bind")
    channel.queue_declare(q)
    channel.queue_bind(q, x, "a.*")
    channel.basic_publish(x, "a.b", b"1")
    channel.queue_unbind(q, x, "a.*")
    channel.basic_publish(x, "a.b", b"2")
    assert [b for _, _, b in get_all(channel, q)] == [b"1"]


def test_purge_returns_count(channel, resources):
    q = resources.queue("purge")
    channel.queue_declare(q)
    for i in range(7):
        channel.basic_publish("", q, str(i).encode())
    ok = channel.queue_purge(q)
    assert ok.method.message_count == 7
    assert channel.queue_declare(q, passive=True).method.message_count == 0
    assert channel.queue_purge(q).method.message_count == 0


def test_purge_leaves_unacked_alone(conn, resources):
    ch = conn.channel()
    q = resources.queue("purge-unacked")
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    method, _, _ = ch.basic_get(q)  # 1 unacked
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_nack(method.delivery_tag, requeue=True)
    m2, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"0" and m2.redelivered


def test_purge_missing_queue_404(conn):
    ch = conn.channel()
    name = unique("missing")
    err = channel_error(ch, ch.queue_purge, name)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"


def test_delete_returns_message_count(channel, resources):
    q = resources.queue("delete")
    channel.queue_declare(q)
    for i in range(4):
        channel.basic_publish("", q, str(i).encode())
    ok = channel.queue_delete(q)
    assert ok.method.message_count == 4
    err = channel_error(channel, channel.queue_declare, q, passive=True)
    assert err.reply_code == 404


def test_delete_missing_queue_is_ok(channel):
    ok = channel.queue_delete(unique("never-declared"))
    assert ok.method.message_count == 0


def test_delete_if_empty_406(conn, resources):
    ch = conn.channel()
    q = resources.queue("ifempty")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    err = channel_error(ch, ch.queue_delete, q, if_empty=True)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.queue_purge(q)
    ch.queue_delete(q, if_empty=True)


def test_delete_if_unused_406(conn, resources):
    ch = conn.channel()
    q = resources.queue("ifunused")
    ch.queue_declare(q)
    cch = conn.channel()
    tag = cch.basic_consume(q, lambda *a: None)
    err = channel_error(ch, ch.queue_delete, q, if_unused=True)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"
    cch.basic_cancel(tag)
    conn.channel().queue_delete(q, if_unused=True)


def test_delete_consumed_queue_cancels_consumer_pika(conn, open_conn, resources):
    q = resources.queue("cancel-notify")
    ch = conn.channel()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda method: cancelled.append(method.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None, consumer_tag="e2e-ctag")
    assert tag == "e2e-ctag"
    other = open_conn().channel()
    assert other.queue_delete(q).method.message_count == 0
    assert drain(conn, lambda: cancelled == ["e2e-ctag"])
    # The channel stays open and usable.
    ch.queue_declare("", exclusive=True)


def test_delete_consumed_queue_sends_basic_cancel_raw(raw, resources):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = resources.queue("cancel-raw")
    c.rpc(commands.Queue.Declare(queue=q), commands.Queue.DeclareOk)
    c.rpc(commands.Basic.Consume(queue=q, consumer_tag="c1"), commands.Basic.ConsumeOk)
    c.rpc(commands.Channel.Open(), commands.Channel.OpenOk, channel=2)
    c.send(commands.Queue.Delete(queue=q), 2)
    frames = [c.recv(), c.recv()]
    by_type = {type(f).__name__: (ch, f) for ch, f in frames}
    assert set(by_type) == {"DeleteOk", "Cancel"}
    ch_cancel, cancel = by_type["Cancel"]
    assert ch_cancel == 1
    assert cancel.consumer_tag == "c1"
    assert by_type["DeleteOk"][0] == 2


async def test_delete_consumed_queue_cancels_consumer_aiormq(amqp_url, resources):
    q = resources.queue("cancel-aiormq")
    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(q)
        cancelled: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_cancel(frame):
            if not cancelled.done():
                cancelled.set_result(frame.consumer_tag)

        ch.on_consumer_cancel_callbacks.add(on_cancel)
        ok = await ch.basic_consume(q, lambda m: None)
        other = await conn.channel()
        await other.queue_delete(q)
        tag = await asyncio.wait_for(cancelled, OP_TIMEOUT)
        assert tag == ok.consumer_tag
        assert tag not in ch.consumers
        # Still usable.
        await ch.queue_declare(unique("after"), exclusive=True)
    finally:
        await conn.close()


async def test_aiormq_default_delete_if_unused_if_empty(amqp_url, resources):
    """aio-pika deletes with if_unused=True, if_empty=True by default."""
    import aiormq

    q = resources.queue("aio-delete")
    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(q)
        await ch.basic_publish(b"x", routing_key=q)
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await asyncio.wait_for(ch.queue_delete(q, if_unused=True, if_empty=True), OP_TIMEOUT)
        ch = await conn.channel()
        await ch.queue_purge(q)
        ok = await asyncio.wait_for(ch.queue_delete(q, if_unused=True, if_empty=True), OP_TIMEOUT)
        assert ok.message_count == 0
    finally:
        await conn.close()
