"""basic.consume/cancel/qos/get/ack/nack/reject/recover."""

from __future__ import annotations

import asyncio

import pika
import pika.exceptions
import pytest
from pamqp import commands

from .conftest import (
    OP_TIMEOUT,
    aiormq_connect,
    channel_error,
    connection_error,
    drain,
    get_all,
    settle,
    unique,
    wait_queue_count,
)

pytestmark = pytest.mark.timeout(30)


def filled_queue(conn, resources, n: int, name: str = "q") -> str:
    """A queue holding messages b"0".."n-1" (published with confirms)."""
    q = resources.queue(name)
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())
    ch.close()
    return q


class Recorder:
    def __init__(self) -> None:
        self.deliveries: list[tuple[pika.spec.Basic.Deliver, bytes]] = []

    def __call__(self, ch, method, props, body) -> None:
        self.deliveries.append((method, body))

    def __len__(self) -> int:
        return len(self.deliveries)

    @property
    def bodies(self) -> list[bytes]:
        return [b for _, b in self.deliveries]

    @property
    def tags(self) -> list[int]:
        return [m.delivery_tag for m, _ in self.deliveries]


# --------------------------------------------------------------------------- #
# Consumer tags
# --------------------------------------------------------------------------- #


def test_client_chosen_consumer_tag(conn, resources):
    q = filled_queue(conn, resources, 2)
    ch = conn.channel()
    rec = Recorder()
    tag = ch.basic_consume(q, rec, auto_ack=True, consumer_tag="None1")
    assert tag == "None1"
    assert drain(conn, lambda: len(rec) == 2)
    assert {m.consumer_tag for m, _ in rec.deliveries} == {"None1"}
    assert rec.bodies == [b"0", b"1"]
    assert [m.redelivered for m, _ in rec.deliveries] == [False, False]


def test_server_generated_consumer_tag(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    ok1 = c.rpc(commands.Basic.Consume(queue=q, consumer_tag=""), commands.Basic.ConsumeOk)
    ok2 = c.rpc(commands.Basic.Consume(queue=q, consumer_tag=""), commands.Basic.ConsumeOk)
    assert ok1.consumer_tag.startswith("amq.ctag-")
    assert ok2.consumer_tag.startswith("amq.ctag-")
    assert ok1.consumer_tag != ok2.consumer_tag


def test_same_tag_on_different_channels_is_fine(raw):
    """kombu uses tags None1, None2, ... on every channel and connection."""
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.open_channel(2)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    for ch in (1, 2):
        ok = c.rpc(
            commands.Basic.Consume(queue=q, consumer_tag="None1"), commands.Basic.ConsumeOk, ch
        )
        assert ok.consumer_tag == "None1"


def test_duplicate_tag_on_one_channel_530(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    c.rpc(commands.Basic.Consume(queue=q, consumer_tag="dup"), commands.Basic.ConsumeOk)
    c.send(commands.Basic.Consume(queue=q, consumer_tag="dup"), 1)
    close = c.expect(commands.Connection.Close, channel=0)
    assert close.reply_code == 530
    assert close.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
    assert (close.class_id, close.method_id) == (60, 20)


def test_consume_missing_queue_404(conn):
    ch = conn.channel()
    name = unique("missing")
    err = channel_error(ch, ch.basic_consume, name, lambda *a: None)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"


# --------------------------------------------------------------------------- #
# Exclusive consumers
# --------------------------------------------------------------------------- #


def test_exclusive_consumer_blocks_others(conn, open_conn, resources):
    q = resources.queue("excl-consumer")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    for other in (conn.channel(), open_conn().channel()):
        err = channel_error(other, other.basic_consume, q, lambda *a: None)
        assert err.reply_code == 403
        assert err.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


def test_exclusive_consume_refused_when_consumers_exist(conn, open_conn, resources):
    q = resources.queue("excl-consumer2")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    other = open_conn().channel()
    err = channel_error(other, other.basic_consume, q, lambda *a: None, exclusive=True)
    assert err.reply_code == 403
    assert err.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


def test_exclusive_consumer_released_on_cancel(conn, resources):
    q = resources.queue("excl-release")
    ch = conn.channel()
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
    ch.basic_cancel(tag)
    conn.channel().basic_consume(q, lambda *a: None)


# --------------------------------------------------------------------------- #
# nowait and cancel
# --------------------------------------------------------------------------- #


def test_consume_and_cancel_nowait(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    c.send(commands.Basic.Consume(queue=q, consumer_tag="nw", no_ack=True, nowait=True), 1)
    c.publish(1, "", q, b"first")
    d = c.expect(commands.Basic.Deliver, channel=1)
    assert d.consumer_tag == "nw"
    assert c.recv_content()[1] == b"first"
    c.send(commands.Basic.Cancel(consumer_tag="nw", nowait=True), 1)
    c.publish(1, "", q, b"second")
    # No cancel-ok and no delivery: the next frame answers the get.
    c.send(commands.Basic.Get(queue=q, no_ack=True), 1)
    ok = c.expect(commands.Basic.GetOk, channel=1)
    assert ok.message_count == 0
    assert c.recv_content()[1] == b"second"


def test_cancel_stops_deliveries(conn, resources):
    q = resources.queue("cancel")
    ch = conn.channel()
    ch.queue_declare(q)
    rec = Recorder()
    tag = ch.basic_consume(q, rec, auto_ack=True)
    ch.basic_publish("", q, b"1")
    assert drain(conn, lambda: len(rec) == 1)
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"2")
    settle(conn)
    assert rec.bodies == [b"1"]
    assert ch.basic_get(q, auto_ack=True)[2] == b"2"


def test_cancel_unknown_tag_is_ok(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    ok = c.rpc(commands.Basic.Cancel(consumer_tag="never-used"), commands.Basic.CancelOk)
    assert ok.consumer_tag == "never-used"


# --------------------------------------------------------------------------- #
# QoS
# --------------------------------------------------------------------------- #


def test_prefetch_per_consumer(conn, resources):
    q = filled_queue(conn, resources, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2, global_qos=False)
    rec = Recorder()
    ch.basic_consume(q, rec)
    assert drain(conn, lambda: len(rec) >= 2)
    settle(conn)
    assert rec.bodies == [b"0", b"1"]
    ch.basic_ack(rec.tags[0])
    assert drain(conn, lambda: len(rec) >= 3)
    settle(conn)
    assert rec.bodies == [b"0", b"1", b"2"]
    ch.basic_ack(rec.tags[2], multiple=True)
    assert drain(conn, lambda: len(rec) == 5)


def test_prefetch_per_consumer_applies_to_each_consumer(conn, resources):
    q1 = filled_queue(conn, resources, 4, "a")
    q2 = filled_queue(conn, resources, 4, "b")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2, global_qos=False)
    r1, r2 = Recorder(), Recorder()
    ch.basic_consume(q1, r1)
    ch.basic_consume(q2, r2)
    assert drain(conn, lambda: len(r1) >= 2 and len(r2) >= 2)
    settle(conn)
    assert (len(r1), len(r2)) == (2, 2)


def test_prefetch_global_shared_by_channel(conn, resources):
    q1 = filled_queue(conn, resources, 3, "a")
    q2 = filled_queue(conn, resources, 3, "b")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2, global_qos=True)
    r1, r2 = Recorder(), Recorder()
    ch.basic_consume(q1, r1)
    ch.basic_consume(q2, r2)
    assert drain(conn, lambda: len(r1) + len(r2) >= 2)
    settle(conn)
    assert len(r1) + len(r2) == 2
    first = (r1.deliveries + r2.deliveries)[0][0]
    ch.basic_ack(first.delivery_tag)
    assert drain(conn, lambda: len(r1) + len(r2) >= 3)
    settle(conn)
    assert len(r1) + len(r2) == 3


def test_raising_global_prefetch_releases_more(conn, resources):
    """Celery sends basic.qos(global=True) to RabbitMQ 3.x and changes it at
    runtime (ETA tasks); a raised limit must release deliveries at once."""
    q = filled_queue(conn, resources, 6)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    rec = Recorder()
    ch.basic_consume(q, rec)
    assert drain(conn, lambda: len(rec) >= 1)
    settle(conn)
    assert len(rec) == 1
    ch.basic_qos(prefetch_count=4, global_qos=True)
    assert drain(conn, lambda: len(rec) >= 4)
    settle(conn)
    assert rec.bodies == [b"0", b"1", b"2", b"3"]


def test_new_per_consumer_prefetch_applies_to_new_consumers(conn, resources):
    q1 = filled_queue(conn, resources, 5, "a")
    q2 = filled_queue(conn, resources, 5, "b")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    r1 = Recorder()
    ch.basic_consume(q1, r1)
    assert drain(conn, lambda: len(r1) >= 1)
    ch.basic_qos(prefetch_count=3)
    r2 = Recorder()
    ch.basic_consume(q2, r2)
    assert drain(conn, lambda: len(r2) >= 3)
    settle(conn)
    assert len(r2) == 3
    # Whether an *existing* global=False consumer picks up a changed limit
    # differs (RabbitMQ 3.x: it does not), so it is not asserted here.


def test_prefetch_zero_means_unlimited(conn, resources):
    q = filled_queue(conn, resources, 20)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=0)
    rec = Recorder()
    ch.basic_consume(q, rec)
    assert drain(conn, lambda: len(rec) == 20)


def test_no_ack_consumer_ignores_prefetch(conn, resources):
    q = filled_queue(conn, resources, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    assert drain(conn, lambda: len(rec) == 5)


def test_two_consumers_prefetch_one_each(conn, resources):
    q = filled_queue(conn, resources, 6)
    ch1, ch2 = conn.channel(), conn.channel()
    ch1.basic_qos(prefetch_count=1)
    ch2.basic_qos(prefetch_count=1)
    r1, r2 = Recorder(), Recorder()
    ch1.basic_consume(q, r1)
    ch2.basic_consume(q, r2)
    assert drain(conn, lambda: len(r1) == 1 and len(r2) == 1)
    settle(conn)
    assert sorted(r1.bodies + r2.bodies) == [b"0", b"1"]


def test_prefetch_size_not_implemented_540(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Qos(prefetch_size=10), 1)
    close = c.expect(commands.Connection.Close, channel=0)
    assert close.reply_code == 540
    assert close.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (10)"
    assert (close.class_id, close.method_id) == (60, 10)


# --------------------------------------------------------------------------- #
# basic.get
# --------------------------------------------------------------------------- #


def test_basic_get_message_count_and_empty(conn, resources):
    q = filled_queue(conn, resources, 3)
    ch = conn.channel()
    counts = []
    for expected in (b"0", b"1", b"2"):
        method, _, body = ch.basic_get(q)
        assert body == expected
        assert method.redelivered is False
        counts.append(method.message_count)
        ch.basic_ack(method.delivery_tag)
    assert counts == [2, 1, 0]
    assert ch.basic_get(q) == (None, None, None)


def test_basic_get_empty_raw(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    c.send(commands.Basic.Get(queue=q), 1)
    c.expect(commands.Basic.GetEmpty, channel=1)


def test_basic_get_missing_queue_404(conn):
    ch = conn.channel()
    name = unique("missing")
    err = channel_error(ch, ch.basic_get, name)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"


def test_delivery_tags_are_per_channel(conn, resources):
    q = filled_queue(conn, resources, 6)
    ch1, ch2 = conn.channel(), conn.channel()
    tags1 = [ch1.basic_get(q)[0].delivery_tag for _ in range(3)]
    tags2 = [ch2.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags1 == [1, 2, 3]
    assert tags2 == [1, 2, 3]


# --------------------------------------------------------------------------- #
# ack / nack / reject
# --------------------------------------------------------------------------- #


def _unacked(conn, q: str, n: int):
    ch = conn.channel()
    methods = []
    for _ in range(n):
        method, _, _ = ch.basic_get(q)
        assert method is not None
        methods.append(method)
    return ch, methods


def _remaining(conn, q: str, ready: int) -> list[tuple[bytes, bool]]:
    """Every ready message of q as (body, redelivered), once ``ready`` are there.

    Acks, nacks and channel closes act asynchronously with respect to other
    channels, on RabbitMQ too, so wait for the expected ready count first.
    """
    ch = conn.channel()
    if ready:
        wait_queue_count(ch, q, ready)
    settle(conn, 0.2)  # anything wrongly requeued has time to show up
    return [(b, m.redelivered) for m, _, b in get_all(ch, q)]


def test_ack_multiple(conn, resources):
    q = filled_queue(conn, resources, 5)
    ch, methods = _unacked(conn, q, 5)
    ch.basic_ack(methods[2].delivery_tag, multiple=True)  # 1..3
    ch.close()  # 4 and 5 come back
    assert _remaining(conn, q, 2) == [(b"3", True), (b"4", True)]


def test_ack_zero_multiple_acks_everything(conn, resources):
    q = filled_queue(conn, resources, 4)
    ch, _ = _unacked(conn, q, 4)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert _remaining(conn, q, 0) == []


def test_nack_multiple_requeue_keeps_order(conn, resources):
    q = filled_queue(conn, resources, 4)
    ch, methods = _unacked(conn, q, 3)
    ch.basic_nack(methods[-1].delivery_tag, multiple=True, requeue=True)
    assert _remaining(conn, q, 4) == [(b"0", True), (b"1", True), (b"2", True), (b"3", False)]


def test_nack_zero_multiple_requeues_everything(conn, resources):
    q = filled_queue(conn, resources, 3)
    ch, _ = _unacked(conn, q, 3)
    ch.basic_nack(0, multiple=True, requeue=True)
    assert _remaining(conn, q, 3) == [(b"0", True), (b"1", True), (b"2", True)]


def test_nack_without_requeue_drops(conn, resources):
    q = filled_queue(conn, resources, 3)
    ch, methods = _unacked(conn, q, 2)
    ch.basic_nack(methods[1].delivery_tag, multiple=True, requeue=False)
    assert _remaining(conn, q, 1) == [(b"2", False)]


def test_reject(conn, resources):
    q = filled_queue(conn, resources, 3)
    ch, methods = _unacked(conn, q, 2)
    ch.basic_reject(methods[0].delivery_tag, requeue=False)  # dropped
    ch.basic_reject(methods[1].delivery_tag, requeue=True)  # back, redelivered
    assert _remaining(conn, q, 2) == [(b"1", True), (b"2", False)]


def test_ack_via_consumer(conn, resources):
    q = filled_queue(conn, resources, 3)
    ch = conn.channel()
    rec = Recorder()
    ch.basic_consume(q, rec)
    assert drain(conn, lambda: len(rec) == 3)
    assert rec.tags == [1, 2, 3]
    for tag in rec.tags:
        ch.basic_ack(tag)
    ch.close()
    assert _remaining(conn, q, 0) == []


@pytest.mark.parametrize(
    "action",
    ["ack", "nack", "reject"],
)
def test_unknown_delivery_tag_406(conn, action):
    ch = conn.channel()
    fn = {
        "ack": lambda: ch.basic_ack(99),
        "nack": lambda: ch.basic_nack(99),
        "reject": lambda: ch.basic_reject(99),
    }[action]
    err = channel_error(ch, fn)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"
    conn.channel().queue_declare("", exclusive=True)  # connection still fine


def test_ack_zero_without_multiple_406(conn):
    ch = conn.channel()
    err = channel_error(ch, ch.basic_ack, 0)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - unknown delivery tag 0"


def test_ack_zero_multiple_with_nothing_outstanding_is_ok(channel):
    channel.basic_ack(0, multiple=True)
    channel.exchange_declare("amq.direct", passive=True)


def test_double_ack_406(conn, resources):
    q = filled_queue(conn, resources, 1)
    ch = conn.channel()
    method, _, _ = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    err = channel_error(ch, ch.basic_ack, method.delivery_tag)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}"
    assert _remaining(conn, q, 0) == []


def test_ack_of_no_ack_delivery_406(conn, resources):
    q = filled_queue(conn, resources, 1)
    ch = conn.channel()
    method, _, _ = ch.basic_get(q, auto_ack=True)
    err = channel_error(ch, ch.basic_ack, method.delivery_tag)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}"


def test_ack_on_other_channel_406(conn, resources):
    q = filled_queue(conn, resources, 1)
    ch = conn.channel()
    method, _, _ = ch.basic_get(q)
    other = conn.channel()
    err = channel_error(other, other.basic_ack, method.delivery_tag)
    assert err.reply_code == 406
    ch.basic_ack(method.delivery_tag)  # the right channel can still ack


# --------------------------------------------------------------------------- #
# recover
# --------------------------------------------------------------------------- #


def test_recover_requeues_unacked(conn, resources):
    q = filled_queue(conn, resources, 3)
    ch = conn.channel()
    rec = Recorder()
    ch.basic_consume(q, rec)
    assert drain(conn, lambda: len(rec) == 3)
    assert all(not m.redelivered for m, _ in rec.deliveries)
    ch.basic_recover(requeue=True)
    assert drain(conn, lambda: len(rec) == 6)
    again = rec.deliveries[3:]
    assert [b for _, b in again] == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _ in again)
    # Tags keep increasing; the old ones are gone.
    assert [m.delivery_tag for m, _ in again] == [4, 5, 6]
    ch.basic_ack(6, multiple=True)
    err = channel_error(ch, ch.basic_ack, 1)
    assert err.reply_code == 406


def test_recover_raw_recover_ok(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    c.publish(1, "", q, b"r")
    c.send(commands.Basic.Get(queue=q), 1)
    c.expect(commands.Basic.GetOk)
    c.recv_content()
    c.rpc(commands.Basic.Recover(requeue=True), commands.Basic.RecoverOk)
    c.send(commands.Basic.Get(queue=q, no_ack=True), 1)
    ok = c.expect(commands.Basic.GetOk)
    assert ok.redelivered is True
    assert c.recv_content()[1] == b"r"


def test_recover_without_requeue_not_implemented(amqp_url, resources):
    from .conftest import connect, safe_close

    c = connect(amqp_url)
    try:
        ch = c.channel()
        err = connection_error(ch, ch.basic_recover, requeue=False)
        assert err.reply_code == 540
        assert err.reply_text == "NOT_IMPLEMENTED - requeue=false"
    finally:
        safe_close(c)


# --------------------------------------------------------------------------- #
# aiormq consumer
# --------------------------------------------------------------------------- #


async def test_aiormq_consume_and_ack(amqp_url, resources):
    q = resources.queue("aio-consume")
    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        await ch.basic_qos(prefetch_count=2)
        await ch.queue_declare(q)
        for i in range(5):
            await ch.basic_publish(str(i).encode(), routing_key=q)
        got: list[bytes] = []
        done = asyncio.Event()

        async def on_message(message):
            got.append(message.body)
            await message.channel.basic_ack(message.delivery.delivery_tag)
            if len(got) == 5:
                done.set()

        ok = await ch.basic_consume(q, on_message)
        await asyncio.wait_for(done.wait(), OP_TIMEOUT)
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        await ch.basic_cancel(ok.consumer_tag)
        res = await ch.queue_declare(q, passive=True)
        assert (res.message_count, res.consumer_count) == (0, 0)
    finally:
        await conn.close()
