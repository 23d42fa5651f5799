"""A consumer behind its publisher (a full prefetch while messages keep coming), or one
that starts on a backlog: the node holds the next rows for it and hands them out as its
acks free credit, with no claim (a backlog's are claimed ahead, hundreds at a time). To
a client they are ready messages, as on RabbitMQ: counted as ready, taken in order by
basic.get, purged, and never flagged redelivered when they go back to the queue."""

from __future__ import annotations

import time

import pika
import pytest
import requests

from tests.conftest import free_port

from .conftest import connect, drain, safe_close, settle, unique
from .test_direct_hand_off import _claims

pytestmark = pytest.mark.timeout(90)


class _Behind:
    """A consumer with prefetch ``prefetch`` on a fresh durable queue, waiting (the
    queue drained), and ``n`` persistent messages published with confirms from another
    connection (``backlog``: before it starts); nothing is acked until told."""

    def __init__(self, url: str, prefetch: int, n: int, backlog: bool = False) -> None:
        self.conn, self.publisher = connect(url), connect(url)
        self.q = unique("held")
        self.ch = self.conn.channel()
        self.ch.queue_declare(self.q, durable=True)
        self.ch.basic_qos(prefetch_count=prefetch)
        self.pch = self.publisher.channel()
        self.pch.confirm_delivery()
        if backlog:
            self._publish(n)
        self.got: list[tuple[pika.spec.Basic.Deliver, bytes]] = []
        self.tag = self.ch.basic_consume(self.q, lambda _c, m, _p, body: self.got.append((m, body)))
        if not backlog:
            settle(self.conn, 0.3)  # its first claim finds the queue empty
            self._publish(n)
        assert drain(self.conn, lambda: len(self.got) >= prefetch)
        settle(self.conn, 0.2)
        assert len(self.got) == prefetch  # nothing more until an ack

    def _publish(self, n: int) -> None:
        for i in range(n):
            self.pch.basic_publish("", self.q, b"m%02d" % i, pika.BasicProperties(delivery_mode=2))

    def ready(self) -> int:
        return self.pch.queue_declare(self.q, passive=True).method.message_count

    def bodies(self) -> list[bytes]:
        return [body for _, body in self.got]

    def close(self) -> None:
        try:
            if self.pch.is_open:
                self.pch.queue_delete(self.q)
        finally:
            safe_close(self.publisher)
            safe_close(self.conn)


@pytest.mark.parametrize("backlog", [False, True], ids=["behind", "backlog"])
def test_a_consumer_behind_gets_everything_in_order_as_it_acks(
    amqp_url: str, backlog: bool
) -> None:
    b = _Behind(amqp_url, prefetch=5, n=40, backlog=backlog)
    try:
        assert b.ready() == 35
        acked = 0
        while acked < 40:
            assert drain(b.conn, lambda acked=acked: len(b.got) > acked)
            b.ch.basic_ack(b.got[acked][0].delivery_tag)
            acked += 1
        assert b.bodies() == [b"m%02d" % i for i in range(40)]
        assert not any(m.redelivered for m, _ in b.got)
        settle(b.conn, 0.2)
        assert b.ready() == 0
    finally:
        b.close()


@pytest.mark.parametrize("backlog", [False, True], ids=["behind", "backlog"])
def test_what_waits_for_a_consumer_is_got_cancelled_and_purged_as_ready(
    amqp_url: str, backlog: bool
) -> None:
    b = _Behind(amqp_url, prefetch=2, n=10, backlog=backlog)
    try:
        method, _props, body = b.pch.basic_get(b.q, auto_ack=True)
        assert (body, method.redelivered, method.message_count) == (b"m02", False, 7)
        b.ch.basic_cancel(b.tag)  # its two deliveries stay unacked on its channel
        assert b.ready() == 7
        method, _props, body = b.pch.basic_get(b.q, auto_ack=True)
        assert (body, method.redelivered) == (b"m03", False)
        other = b.publisher.channel()
        other.basic_qos(prefetch_count=3)
        later: list[tuple[pika.spec.Basic.Deliver, bytes]] = []
        other.basic_consume(b.q, lambda _c, m, _p, body: later.append((m, body)))
        assert drain(b.publisher, lambda: len(later) == 3)
        assert [(body, m.redelivered) for m, body in later] == [
            (b"m04", False),
            (b"m05", False),
            (b"m06", False),
        ]
        assert b.pch.queue_purge(b.q).method.message_count == 3  # m07 to m09
        b.ch.close()  # its unacked m00 and m01 go back, redelivered, at the head
        time.sleep(0.3)
        method, _props, body = b.pch.basic_get(b.q, auto_ack=True)
        assert (body, method.redelivered) == (b"m00", True)
    finally:
        b.close()


def test_a_consumer_behind_needs_no_claim_and_the_api_counts_its_rows_as_ready(
    database_url, start_broker
) -> None:
    port = free_port()
    node = start_broker(database_url, management_port=port)
    before = _claims(port)
    b = _Behind(node.url, prefetch=5, n=40)
    try:
        deadline = time.monotonic() + 20
        while True:  # the API's statistics are read, not cached
            info = requests.get(
                f"http://127.0.0.1:{port}/api/queues/%2F/{b.q}", auth=("guest", "guest"), timeout=5
            ).json()
            if (info.get("messages_ready"), info.get("messages_unacknowledged")) == (35, 5):
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        for i in range(40):
            assert drain(b.conn, lambda i=i: len(b.got) > i)
            b.ch.basic_ack(b.got[i][0].delivery_tag)
        assert b.bodies() == [b"m%02d" % i for i in range(40)]
        assert _claims(port) - before <= 2  # the consumer's first (empty) claim, maybe one more
    finally:
        b.close()


def test_a_backlog_is_claimed_ahead_not_once_per_ack(database_url, start_broker) -> None:
    """A consumer with a small prefetch on a backlog (a Celery worker after an outage):
    its next rows are claimed hundreds at a time and handed out from memory, not one
    claim for every ack."""
    port = free_port()
    node = start_broker(database_url, management_port=port)
    b = _Behind(node.url, prefetch=2, n=300, backlog=True)
    try:
        before = _claims(port)
        for i in range(300):
            assert drain(b.conn, lambda i=i: len(b.got) > i)
            b.ch.basic_ack(b.got[i][0].delivery_tag)
        assert [body for _, body in b.got] == [b"m%02d" % i for i in range(300)]
        assert not any(m.redelivered for m, _ in b.got)
        assert _claims(port) - before <= 3  # (was 150: one per ack of each free slot)
    finally:
        b.close()
