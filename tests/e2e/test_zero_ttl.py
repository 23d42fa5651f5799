"""A zero TTL: delivered to a consumer waiting at publish time, dropped otherwise.

RabbitMQ 3.10 (classic queues) with ``x-message-ttl: 0``, ``expiration: "0"`` or both
(the lower of the two counts, so a zero on either side is enough) hands the message
to a consumer that has credit when it arrives, and otherwise expires it at once:
``basic.get`` never sees it, a dead-letter exchange gets it with reason ``expired``,
a consumer whose prefetch is full misses it for good (also once it acks), and a
delivered one that is requeued (reject, recover, channel close) expires then instead
of being delivered again. Every scenario runs on Cavalcade and on RabbitMQ; the
cross-node ones on Cavalcade only.
"""

from __future__ import annotations

import time

import pika
import pytest

from .conftest import connect, drain, settle, unique

pytestmark = pytest.mark.timeout(60)

# Cavalcade dead-letters a zero-TTL message its queue's consumers could not take once
# it is no longer fresh (2 s), RabbitMQ at once: waits for the DLX allow for that.
DEAD_LETTER_WAIT = 6.0

FORMS = {
    "queue": ({"x-message-ttl": 0}, {}),
    "message": ({}, {"expiration": "0"}),
    "both": ({"x-message-ttl": 0}, {"expiration": "0"}),
    "queue-zero-message-long": ({"x-message-ttl": 0}, {"expiration": "60000"}),
    "queue-long-message-zero": ({"x-message-ttl": 60000}, {"expiration": "0"}),
}


@pytest.fixture(params=list(FORMS))
def form(request: pytest.FixtureRequest) -> tuple[dict, dict]:
    """(queue arguments, message properties) giving a zero TTL."""
    return FORMS[request.param]


class Recorder:
    def __init__(self) -> None:
        self.deliveries: list[tuple[pika.spec.Basic.Deliver, pika.BasicProperties, bytes]] = []

    def __call__(self, ch, method, props, body) -> None:
        self.deliveries.append((method, props, body))

    def __len__(self) -> int:
        return len(self.deliveries)

    @property
    def bodies(self) -> list[bytes]:
        return [b for _, _, b in self.deliveries]


def _declare(ch, resources, qargs: dict, dlx: bool = False) -> tuple[str, str | None]:
    """A queue with the form's arguments (and a dead-letter queue behind it)."""
    q = resources.queue("zttl")
    dlq = None
    args = dict(qargs)
    if dlx:
        dlq = resources.queue("zttl-dl")
        ch.queue_declare(dlq)
        args.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.queue_declare(q, arguments=args)
    return q, dlq


def _dead_lettered(conn, ch, dlq: str) -> tuple[pika.BasicProperties, bytes]:
    deadline = time.monotonic() + DEAD_LETTER_WAIT
    while True:
        method, props, body = ch.basic_get(dlq, auto_ack=True)
        if method is not None:
            return props, body
        assert time.monotonic() < deadline, "nothing was dead-lettered"
        conn.process_data_events(time_limit=0.05)


def _death(props: pika.BasicProperties) -> dict:
    return props.headers["x-death"][0]


def test_no_consumer_drops_and_get_never_sees_it(conn, resources, form):
    qargs, props = form
    ch = conn.channel()
    ch.confirm_delivery()
    q, dlq = _declare(ch, resources, qargs, dlx=True)
    ch.basic_publish("", q, b"nobody", pika.BasicProperties(**props))
    assert ch.basic_get(q, auto_ack=True)[0] is None
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    dprops, body = _dead_lettered(conn, ch, dlq)
    assert body == b"nobody"
    assert _death(dprops)["reason"] == "expired"
    assert dprops.headers["x-first-death-reason"] == "expired"
    assert dprops.expiration is None
    assert _death(dprops).get("original-expiration") == props.get("expiration")
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_waiting_consumer_gets_it(conn, resources, form):
    qargs, props = form
    ch = conn.channel()
    q, _ = _declare(ch, resources, qargs)
    ch.basic_qos(prefetch_count=1)
    rec = Recorder()
    ch.basic_consume(q, rec)
    ch.basic_publish("", q, b"waited-for", pika.BasicProperties(**props))
    assert drain(conn, lambda: len(rec) == 1)
    method, got_props, body = rec.deliveries[0]
    assert body == b"waited-for"
    assert not method.redelivered
    assert got_props.expiration == props.get("expiration")  # as sent
    ch.basic_ack(method.delivery_tag)
    settle(conn)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_published_before_the_consumer_came_is_not_delivered(conn, resources):
    """The Java client's TTLHandling.zeroTTLDelivery: only the second one arrives, and
    once rejected with requeue it expires instead of coming back."""
    ch = conn.channel()
    q, _ = _declare(ch, resources, {"x-message-ttl": 0})
    ch.basic_publish("", q, b"early")
    assert ch.basic_get(q, auto_ack=True)[0] is None
    rec = Recorder()
    ch.basic_consume(q, rec)
    ch.basic_publish("", q, b"in-time")
    assert drain(conn, lambda: len(rec) == 1)
    settle(conn)
    assert rec.bodies == [b"in-time"]
    ch.basic_reject(rec.deliveries[0][0].delivery_tag, requeue=True)
    settle(conn, 0.5)
    assert rec.bodies == [b"in-time"]


def test_prefetch_full_drops_it_for_good(conn, resources, form):
    qargs, props = form
    ch = conn.channel()
    ch.confirm_delivery()
    q, dlq = _declare(ch, resources, qargs, dlx=True)
    ch.basic_qos(prefetch_count=1)
    rec = Recorder()
    ch.basic_consume(q, rec)
    ch.basic_publish("", q, b"first", pika.BasicProperties(**props))
    assert drain(conn, lambda: len(rec) == 1)
    ch.basic_publish("", q, b"no-room", pika.BasicProperties(**props))
    settle(conn)  # published while the prefetch is full
    assert ch.basic_get(q, auto_ack=True)[0] is None
    ch.basic_ack(rec.deliveries[0][0].delivery_tag)  # room again: too late for it
    dprops, body = _dead_lettered(conn, ch, dlq)
    assert (body, _death(dprops)["reason"]) == (b"no-room", "expired")
    ch.basic_publish("", q, b"later", pika.BasicProperties(**props))
    assert drain(conn, lambda: len(rec) == 2)
    settle(conn)
    assert rec.bodies == [b"first", b"later"]


def test_a_burst_fills_the_prefetch_and_the_rest_is_dropped(conn, resources):
    ch = conn.channel()
    q, _ = _declare(ch, resources, {"x-message-ttl": 0})
    ch.basic_qos(prefetch_count=3)
    rec = Recorder()
    ch.basic_consume(q, rec)
    conn.process_data_events(time_limit=0.1)
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i)
    assert drain(conn, lambda: len(rec) == 3)
    settle(conn, 0.3)
    for method, _, _ in rec.deliveries:
        ch.basic_ack(method.delivery_tag)
    settle(conn, 0.5)
    assert rec.bodies == [b"0", b"1", b"2"]


def test_no_ack_consumer_gets_every_one_of_a_burst(conn, resources):
    ch = conn.channel()
    q, _ = _declare(ch, resources, {"x-message-ttl": 0})
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    conn.process_data_events(time_limit=0.1)
    for i in range(200):
        ch.basic_publish("", q, b"%d" % i)
    assert drain(conn, lambda: len(rec) == 200, timeout=10)
    assert rec.bodies == [b"%d" % i for i in range(200)]


@pytest.mark.parametrize("how", ["reject", "nack", "recover"])
def test_requeued_delivery_expires(conn, resources, form, how):
    qargs, props = form
    ch = conn.channel()
    q, dlq = _declare(ch, resources, qargs, dlx=True)
    rec = Recorder()
    ch.basic_consume(q, rec)
    ch.basic_publish("", q, b"once", pika.BasicProperties(**props))
    assert drain(conn, lambda: len(rec) == 1)
    tag = rec.deliveries[0][0].delivery_tag
    if how == "reject":
        ch.basic_reject(tag, requeue=True)
    elif how == "nack":
        ch.basic_nack(tag, requeue=True)
    else:
        ch.basic_recover(requeue=True)
    dprops, body = _dead_lettered(conn, ch, dlq)  # the consumer, still waiting, misses it
    assert (body, _death(dprops)["reason"]) == (b"once", "expired")
    settle(conn)
    assert rec.bodies == [b"once"]


def test_requeued_on_channel_close_expires(conn, resources, form):
    qargs, props = form
    ch = conn.channel()
    q, dlq = _declare(ch, resources, qargs, dlx=True)
    holder, waiter = conn.channel(), conn.channel()
    held, waiting = Recorder(), Recorder()
    holder.basic_consume(q, held)
    holder.basic_publish("", q, b"held", pika.BasicProperties(**props))
    assert drain(conn, lambda: len(held) == 1)
    waiter.basic_consume(q, waiting)
    holder.close()
    dprops, body = _dead_lettered(conn, ch, dlq)
    assert (body, _death(dprops)["reason"]) == (b"held", "expired")
    settle(conn)
    assert waiting.bodies == []


def test_rejected_without_requeue_is_dead_lettered_as_rejected(conn, resources):
    ch = conn.channel()
    q, dlq = _declare(ch, resources, {"x-message-ttl": 0}, dlx=True)
    rec = Recorder()
    ch.basic_consume(q, rec)
    ch.basic_publish("", q, b"refused")
    assert drain(conn, lambda: len(rec) == 1)
    ch.basic_nack(rec.deliveries[0][0].delivery_tag, requeue=False)
    dprops, body = _dead_lettered(conn, ch, dlq)
    assert (body, _death(dprops)["reason"]) == (b"refused", "rejected")


def test_transaction_commit_delivers_to_a_waiting_consumer(conn, resources):
    ch = conn.channel()
    q, _ = _declare(ch, resources, {"x-message-ttl": 0})
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"committed")
    settle(conn, 0.2)
    assert rec.bodies == []
    tx.tx_commit()
    assert drain(conn, lambda: len(rec) == 1)
    assert rec.bodies == [b"committed"]


def test_dead_lettered_into_a_zero_ttl_queue_reaches_its_waiting_consumer(conn, resources):
    ch = conn.channel()
    target = resources.queue("zttl-target")
    ch.queue_declare(target, arguments={"x-message-ttl": 0})
    source = resources.queue("zttl-source")
    ch.queue_declare(
        source,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target},
    )
    rec = Recorder()
    ch.basic_consume(target, rec, auto_ack=True)
    ch.basic_publish("", source, b"via-dlx")
    method, _, _ = ch.basic_get(source)
    ch.basic_nack(method.delivery_tag, requeue=False)
    assert drain(conn, lambda: len(rec) == 1)
    assert rec.bodies == [b"via-dlx"]


# --------------------------------------------------------------------------- #
# Cavalcade only: the consumer on another node
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("notify", ["listen", "poll"])
def test_consumer_on_another_node(start_broker, database_url, notify):
    a = start_broker(database_url, notify=notify, poll_interval=0.2)
    b = start_broker(database_url, notify=notify, poll_interval=0.2)
    q, dlq = unique("zttl-xnode"), unique("zttl-xnode-dl")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.confirm_delivery()
        ch_a.queue_declare(dlq)
        ch_a.queue_declare(
            q,
            arguments={
                "x-message-ttl": 0,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dlq,
            },
        )
        ch_b = conn_b.channel()
        ch_b.basic_qos(prefetch_count=1)
        rec = Recorder()
        ch_b.basic_consume(q, rec)
        conn_b.process_data_events(time_limit=0.1)
        ch_a.basic_publish("", q, b"across")
        assert drain(conn_b, lambda: len(rec) == 1)
        ch_a.basic_publish("", q, b"no-room")  # B's consumer holds one: prefetch full
        settle(conn_b, 0.5)
        ch_b.basic_ack(rec.deliveries[0][0].delivery_tag)
        props, body = _dead_lettered(conn_a, ch_a, dlq)
        assert (body, _death(props)["reason"]) == (b"no-room", "expired")
        settle(conn_b)
        assert rec.bodies == [b"across"]
    finally:
        conn_a.close()
        conn_b.close()
