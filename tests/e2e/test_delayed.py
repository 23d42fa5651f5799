"""The ``x-delayed-message`` exchange type (rabbitmq-delayed-message-exchange plugin).

Debian's RabbitMQ ships without the plugin, so these run against Cavalcade only.
That the delay survives a broker restart is covered elsewhere.
"""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from tests.waiting import wait_until

from .conftest import drain, settle

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _cavalcade_only(broker_name: str) -> None:
    if broker_name == "rabbitmq":
        pytest.skip("the x-delayed-message plugin is not in Debian's RabbitMQ 3.10")


class Recorder:
    def __init__(self) -> None:
        self.deliveries: list[tuple[float, pika.spec.Basic.Deliver, bytes]] = []

    def __call__(self, ch, method, props, body) -> None:
        self.deliveries.append((time.monotonic(), method, body))

    def __len__(self) -> int:
        return len(self.deliveries)

    @property
    def bodies(self) -> list[bytes]:
        return [b for _, _, b in self.deliveries]


def delayed_setup(ch, resources, key: str = "k") -> tuple[str, str]:
    x = resources.exchange("delayed")
    ch.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    q = resources.queue("delayed")
    ch.queue_declare(q)
    ch.queue_bind(q, x, key)
    return x, q


def delay(ms: int, **headers) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-delay": ms, **headers})


def test_delayed_message_waits_for_its_delay(conn, resources):
    ch = conn.channel()
    x, q = delayed_setup(ch, resources)
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    start = time.monotonic()
    ch.basic_publish(x, "k", b"later", delay(800, h="v"))
    assert not drain(conn, lambda: len(rec) > 0, timeout=0.6), "delivered before its delay"
    assert drain(conn, lambda: len(rec) == 1, timeout=4.0), "not delivered after its delay"
    at, method, body = rec.deliveries[0]
    assert body == b"later"
    assert 0.75 <= at - start < 3.0
    assert (method.exchange, method.routing_key) == (x, "k")


def test_delayed_message_not_in_queue_before_delay(conn, resources):
    ch = conn.channel()
    x, q = delayed_setup(ch, resources)
    ch.basic_publish(x, "k", b"later", delay(700))
    settle(conn, 0.3)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None
    got = wait_until(lambda: ch.basic_get(q, auto_ack=True)[2], 4.0, "the delayed message", 0.02)
    assert got == b"later"


def test_delayed_messages_come_out_in_delay_order(conn, resources):
    ch = conn.channel()
    x, q = delayed_setup(ch, resources)
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    for ms in (900, 300, 600):
        ch.basic_publish(x, "k", str(ms).encode(), delay(ms))
    assert drain(conn, lambda: len(rec) == 3, timeout=5.0)
    assert rec.bodies == [b"300", b"600", b"900"]


@pytest.mark.parametrize("headers", [None, {"other": 1}, {"x-delay": 0}])
def test_no_delay_is_immediate(conn, resources, headers):
    ch = conn.channel()
    x, q = delayed_setup(ch, resources)
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    start = time.monotonic()
    ch.basic_publish(x, "k", b"now", pika.BasicProperties(headers=headers))
    assert drain(conn, lambda: len(rec) == 1, timeout=2.0)
    assert rec.deliveries[0][0] - start < 0.5


def test_delayed_type_routes_like_direct(conn, resources):
    ch = conn.channel()
    x, q = delayed_setup(ch, resources, key="match")
    ch.confirm_delivery()
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    ch.basic_publish(x, "other", b"dropped", delay(200))
    ch.basic_publish(x, "match", b"kept", delay(200))
    assert drain(conn, lambda: len(rec) == 1, timeout=3.0)
    settle(conn, 0.3)
    assert rec.bodies == [b"kept"]
