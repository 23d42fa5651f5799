"""kombu (py-amqp transport), used the way Celery uses it."""

from __future__ import annotations

import time

import amqp.exceptions
import kombu
import pytest
from kombu import Consumer, Exchange, Producer, Queue

from tests.waiting import wait_until

from .conftest import OP_TIMEOUT

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def kconn(amqp_url):
    c = kombu.Connection(amqp_url, connect_timeout=OP_TIMEOUT)
    c.connect()
    try:
        yield c
    finally:
        c.release()


def drain_until(conn: kombu.Connection, predicate, timeout: float = OP_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            conn.drain_events(timeout=min(left, 0.2))
        except TimeoutError:
            pass
    return True


def test_producer_consumer_roundtrip(kconn, resources):
    exchange = Exchange(resources.exchange("kx"), type="direct", durable=True)
    queue = Queue(resources.queue("kq"), exchange, routing_key="task", durable=True)
    received = []

    def on_message(body, message):
        received.append((body, message.headers, message.properties.get("correlation_id")))
        message.ack()

    with Consumer(kconn, [queue], callbacks=[on_message], accept=["json"]):
        producer = Producer(kconn)
        producer.publish(
            {"task": "add", "args": [1, 2]},
            exchange=exchange,
            routing_key="task",
            declare=[queue],
            serializer="json",
            headers={"id": "abc", "retries": 0, "eta": None},
            correlation_id="abc",
        )
        assert drain_until(kconn, lambda: received)
    body, headers, corr = received[0]
    assert body == {"task": "add", "args": [1, 2]}
    assert headers == {"id": "abc", "retries": 0, "eta": None}
    assert corr == "abc"


def test_consumer_on_several_queues_uses_nowait(kconn, resources):
    """kombu consumes every queue but the last with nowait=True."""
    exchange = Exchange(resources.exchange("multi"), type="topic", durable=False)
    queues = [
        Queue(resources.queue(f"m{i}"), exchange, routing_key=f"k{i}.#", durable=False)
        for i in range(3)
    ]
    got = []

    def on_message(body, message):
        got.append(body)
        message.ack()

    with Consumer(kconn, queues, callbacks=[on_message], accept=["json"]):
        producer = Producer(kconn, exchange=exchange)
        for i in range(3):
            producer.publish({"n": i}, routing_key=f"k{i}.x", serializer="json")
        assert drain_until(kconn, lambda: len(got) == 3)
    assert sorted(b["n"] for b in got) == [0, 1, 2]


def test_simple_queue(kconn, resources):
    name = resources.queue("simple")
    resources.exchanges.append(name)  # SimpleQueue declares an exchange of the same name
    sq = kconn.SimpleQueue(name)
    try:
        for i in range(3):
            sq.put({"i": i})
        wait_until(lambda: sq.qsize() >= 3, OP_TIMEOUT, "3 messages in the queue", 0.02)
        assert sq.qsize() == 3  # passive declare with junk flags
        msgs = [sq.get(block=True, timeout=OP_TIMEOUT) for _ in range(3)]
        assert [m.payload for m in msgs] == [{"i": 0}, {"i": 1}, {"i": 2}]
        for m in msgs:
            m.ack()
        with pytest.raises(sq.Empty):
            sq.get(block=True, timeout=0.3)
    finally:
        sq.close()


def test_requeue_and_reject(kconn, resources):
    name = resources.queue("requeue")
    resources.exchanges.append(name)
    sq = kconn.SimpleQueue(name)
    try:
        sq.put("first")
        m = sq.get(block=True, timeout=OP_TIMEOUT)
        assert m.delivery_info["redelivered"] is False
        m.requeue()
        m = sq.get(block=True, timeout=OP_TIMEOUT)
        assert m.payload == "first"
        assert m.delivery_info["redelivered"] is True
        m.reject(requeue=False)
        with pytest.raises(sq.Empty):
            sq.get(block=True, timeout=0.3)
    finally:
        sq.close()


CELERY_LIKE = [
    # pidbox queue
    dict(
        exchange=("fanout", False),
        durable=False,
        exclusive=True,
        auto_delete=True,
        queue_arguments={"x-expires": 10000, "x-message-ttl": 300000},
    ),
    # celeryev queue
    dict(
        exchange=("topic", True),
        durable=False,
        exclusive=True,
        auto_delete=True,
        queue_arguments={"x-expires": 60000, "x-message-ttl": 5000},
    ),
    # rpc reply queue
    dict(
        exchange=("direct", True),
        durable=True,
        exclusive=False,
        auto_delete=True,
        queue_arguments={"x-expires": 86400000},
    ),
]


@pytest.mark.parametrize("spec", CELERY_LIKE, ids=["pidbox", "celeryev", "rpc"])
def test_celery_like_queue_arguments_accepted(kconn, resources, spec):
    kind, xdurable = spec["exchange"]
    exchange = Exchange(resources.exchange("cx"), type=kind, durable=xdurable)
    queue = Queue(
        resources.queue("cq"),
        exchange,
        routing_key="#" if kind == "topic" else "",
        durable=spec["durable"],
        exclusive=spec["exclusive"],
        auto_delete=spec["auto_delete"],
        queue_arguments=spec["queue_arguments"],
    )
    ch = kconn.channel()
    bound = queue(ch)
    bound.declare()
    bound.declare()  # Celery re-declares; equivalent arguments are fine
    name, messages, consumers = bound.queue_declare(passive=True)
    assert (name, messages, consumers) == (queue.name, 0, 0)
    Producer(ch, exchange=exchange).publish("ping", routing_key="", serializer="json")
    msg = None
    deadline = time.monotonic() + OP_TIMEOUT
    while msg is None and time.monotonic() < deadline:
        msg = bound.get(no_ack=True)
    assert msg is not None and msg.payload == "ping"


def test_passive_declare_missing_queue_raises_not_found(kconn):
    ch = kconn.channel()
    q = Queue("e2e.kombu-missing-queue-0", no_declare=True)(ch)
    with pytest.raises(amqp.exceptions.NotFound) as ei:
        q.queue_declare(passive=True)
    assert ei.value.code == 404
    assert "NOT_FOUND - no queue 'e2e.kombu-missing-queue-0' in vhost '/'" in str(ei.value)
    # py-amqp revives the channel with the same id; it must work.
    ch.queue_declare("", exclusive=True)


def test_confirm_publish_transport_option(amqp_url, resources):
    with kombu.Connection(
        amqp_url, connect_timeout=OP_TIMEOUT, transport_options={"confirm_publish": True}
    ) as c:
        name = resources.queue("confirm")
        resources.exchanges.append(name)
        sq = c.SimpleQueue(name)
        try:
            for i in range(5):
                sq.put(i)  # each waits for the broker's basic.ack
            got = [sq.get(block=True, timeout=OP_TIMEOUT) for _ in range(5)]
            assert [m.payload for m in got] == [0, 1, 2, 3, 4]
            for m in got:
                m.ack()
        finally:
            sq.close()


def test_qos_global_like_celery_on_rabbitmq(kconn, resources):
    """Celery's consumer: basic.qos(prefetch, global) before consuming."""
    exchange = Exchange(resources.exchange("qos"), type="direct")
    queue = Queue(resources.queue("qos"), exchange, routing_key="t")
    producer = Producer(kconn)
    for i in range(5):
        producer.publish(i, exchange=exchange, routing_key="t", declare=[queue], serializer="json")
    pending = []
    consumer = Consumer(kconn, [queue], callbacks=[lambda b, m: pending.append(m)], accept=["json"])
    consumer.qos(prefetch_count=2, apply_global=True)
    with consumer:
        assert drain_until(kconn, lambda: len(pending) >= 2)
        drain_until(kconn, lambda: False, timeout=0.3)
        assert len(pending) == 2
        pending[0].ack()
        assert drain_until(kconn, lambda: len(pending) >= 3)
        for m in pending[1:]:
            m.ack()
        assert drain_until(kconn, lambda: len(pending) == 5)
        for m in pending[3:]:
            m.ack()
