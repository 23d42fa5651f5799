"""RabbitMQ queue features: x-expires, message TTL, dead-lettering, length limits,
priorities, single active consumer, consumer priorities, alternate exchanges and the
delivery limit of quorum queues.

Every expectation here was checked against RabbitMQ 3.10. Waits are short polls with
deadlines; the only fixed sleeps are "let a TTL pass" (a few hundred ms).
"""

from __future__ import annotations

import asyncio
import datetime
import struct
import time
from typing import Any

import pika
import pika.compat
import pika.exceptions
import pytest
from pamqp import commands

from tests.waiting import wait_until

from .conftest import (
    OP_TIMEOUT,
    RawClient,
    aiormq_connect,
    drain,
    get_all,
    parse_url,
    settle,
)

pytestmark = pytest.mark.timeout(30)

FIRST_DEATH = ("x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


class Recorder:
    def __init__(self) -> None:
        self.deliveries: list[tuple[Any, Any, bytes]] = []

    def __call__(self, ch, method, props, body) -> None:
        self.deliveries.append((method, props, body))

    def __len__(self) -> int:
        return len(self.deliveries)

    @property
    def bodies(self) -> list[bytes]:
        return [b for _, _, b in self.deliveries]


def poll_get(ch, queue: str, timeout: float = OP_TIMEOUT, auto_ack: bool = True):
    """basic.get until a message comes (or the deadline): (method, props, body)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None or time.monotonic() > deadline:
            return method, props, body
        time.sleep(0.02)


def poll_get_n(ch, queue: str, n: int, timeout: float = OP_TIMEOUT) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        got = get_all(ch, queue)
        out += got
        if not got:
            time.sleep(0.02)
    return out


def count(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def dlx_fanout(ch, resources) -> tuple[str, str]:
    """A fanout dead-letter exchange and the queue bound to it."""
    dlx = resources.exchange("dlx")
    dq = resources.queue("dead")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dq)
    ch.queue_bind(dq, dlx)
    return dlx, dq


class Probe:
    """Tells whether a queue exists without *using* it (which would renew its
    x-expires lease): a mandatory publish through the default exchange is returned
    once the queue is gone. RabbitMQ does not count a publish as use."""

    def __init__(self, conn: pika.BlockingConnection) -> None:
        self.ch = conn.channel()
        self.ch.confirm_delivery()

    def exists(self, queue: str) -> bool:
        try:
            self.ch.basic_publish("", queue, b"probe", mandatory=True)
        except pika.exceptions.UnroutableError:
            return False
        return True

    def wait_gone(self, queue: str, timeout: float = OP_TIMEOUT) -> float | None:
        """Seconds until the queue disappeared, or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.exists(queue):
                return time.monotonic() - start
            time.sleep(0.02)
        return None


def rich_properties(**overrides: Any) -> pika.BasicProperties:
    values: dict[str, Any] = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"str": "v", "int": 7, "big": 2**40, "flag": True, "list": [1, "a"]},
        "delivery_mode": 2,
        "priority": 3,
        "correlation_id": "corr",
        "reply_to": "reply",
        "expiration": "60000",
        "message_id": "msg-1",
        "timestamp": 1_700_000_000,
        "type": "kind",
        "user_id": "guest",
        "app_id": "app",
    }
    values.update(overrides)
    return pika.BasicProperties(**values)


PLAIN_FIELDS = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def assert_x_death_entry(
    entry: dict,
    *,
    reason: str,
    queue: str,
    exchange: str,
    routing_keys: list[str],
    count_: int = 1,
    original_expiration: str | None = None,
) -> None:
    keys = {"count", "reason", "queue", "time", "exchange", "routing-keys"}
    if original_expiration is not None:
        keys.add("original-expiration")
    assert set(entry) == keys
    assert entry["count"] == count_
    assert type(entry["count"]) is pika.compat.long  # long-long ('l') on the wire
    assert entry["reason"] == reason
    assert entry["queue"] == queue
    assert entry["exchange"] == exchange
    assert entry["routing-keys"] == routing_keys
    assert isinstance(entry["time"], datetime.datetime)  # timestamp ('T')
    if original_expiration is not None:
        assert entry["original-expiration"] == original_expiration


def assert_first_death(headers: dict, *, reason: str, queue: str, exchange: str) -> None:
    assert headers["x-first-death-reason"] == reason
    assert headers["x-first-death-queue"] == queue
    assert headers["x-first-death-exchange"] == exchange
    # 3.10 writes no x-last-death-* headers (those came with 3.13).
    assert not [k for k in headers if k.startswith("x-last-death")]


# --------------------------------------------------------------------------- #
# x-expires
# --------------------------------------------------------------------------- #


def test_expires_unused_queue_is_deleted(conn, resources):
    q = resources.queue("expires")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-expires": 400})
    probe = Probe(conn)
    # Probing publishes into the queue: publishes (and ready messages) are no use.
    gone = probe.wait_gone(q)
    assert gone is not None, "queue with x-expires=400 still there after 5 s"
    assert gone > 0.3


@pytest.mark.parametrize("use", ["redeclare", "passive_declare", "basic_get"])
def test_expires_use_renews_the_lease(conn, resources, use):
    q = resources.queue("expires-used")
    ch = conn.channel()
    args = {"x-expires": 500}
    ch.queue_declare(q, arguments=args)
    probe = Probe(conn)
    actions = {
        "redeclare": lambda: ch.queue_declare(q, arguments=args),
        "passive_declare": lambda: ch.queue_declare(q, passive=True),
        "basic_get": lambda: ch.basic_get(q, auto_ack=True),
    }
    start = time.monotonic()
    while time.monotonic() - start < 1.3:  # well past the 500 ms lease
        actions[use]()
        time.sleep(0.1)
    assert probe.exists(q), f"{use} every 100 ms did not keep the queue alive"
    gone = probe.wait_gone(q)
    assert gone is not None, "queue not deleted once it was no longer used"
    assert gone > 0.35


def test_expires_queue_with_consumer_never_expires(conn, resources):
    q = resources.queue("expires-consumer")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-expires": 300})
    probe = Probe(conn)
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    settle(conn, 1.0)
    assert probe.exists(q)
    ch.basic_cancel(tag)
    gone = probe.wait_gone(q)
    assert gone is not None, "queue not deleted after its only consumer cancelled"
    assert gone > 0.2


def test_expires_counts_from_consumer_connection_close(conn, open_conn, resources):
    q = resources.queue("expires-consumer-conn")
    conn.channel().queue_declare(q, arguments={"x-expires": 300})
    probe = Probe(conn)
    other = open_conn()
    other.channel().basic_consume(q, lambda *a: None, auto_ack=True)
    settle(other, 0.8)
    assert probe.exists(q)
    other.close()
    gone = probe.wait_gone(q)
    assert gone is not None
    assert gone > 0.2


# --------------------------------------------------------------------------- #
# Message TTL (x-message-ttl and expiration)
# --------------------------------------------------------------------------- #


def test_queue_ttl_expired_message_is_not_delivered_by_get(conn, resources):
    q = resources.queue("ttl")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    ch.basic_publish("", q, b"old")
    time.sleep(0.35)
    assert ch.basic_get(q, auto_ack=True)[0] is None
    ch.basic_publish("", q, b"fresh")
    assert ch.basic_get(q, auto_ack=True)[2] == b"fresh"


def test_queue_ttl_consumer_attached_later_gets_only_unexpired(conn, resources):
    q = resources.queue("ttl-consumer")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-message-ttl": 250})
    ch.basic_publish("", q, b"old-1")
    ch.basic_publish("", q, b"old-2")
    time.sleep(0.4)
    ch.basic_publish("", q, b"new")
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    assert drain(conn, lambda: len(rec) >= 1)
    settle(conn)
    assert rec.bodies == [b"new"]


def test_per_message_expiration_skips_expired_anywhere_in_the_queue(conn, resources):
    q = resources.queue("expiration")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"head-short", pika.BasicProperties(expiration="200"))
    ch.basic_publish("", q, b"plain")
    ch.basic_publish("", q, b"middle-short", pika.BasicProperties(expiration="200"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    time.sleep(0.35)
    got = get_all(ch, q)
    assert [b for _, _, b in got] == [b"plain", b"long"]
    # A message delivered before its TTL keeps its expiration property as sent.
    assert got[0][1].expiration is None
    assert got[1][1].expiration == "60000"


def test_per_message_expiration_consumer_attached_later(conn, resources):
    q = resources.queue("expiration-consumer")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"keep-1")
    ch.basic_publish("", q, b"gone", pika.BasicProperties(expiration="150"))
    ch.basic_publish("", q, b"keep-2", pika.BasicProperties(expiration="60000"))
    time.sleep(0.3)
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    assert drain(conn, lambda: len(rec) >= 2)
    settle(conn)
    assert rec.bodies == [b"keep-1", b"keep-2"]
    assert rec.deliveries[1][1].expiration == "60000"


def test_expiration_zero_without_consumer_is_dropped(conn, resources):
    q = resources.queue("expiration-zero")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"now-or-never", pika.BasicProperties(expiration="0"))
    assert ch.basic_get(q, auto_ack=True)[0] is None


@pytest.mark.parametrize(
    ("queue_ttl", "expiration"),
    [(60000, "200"), (200, "60000")],
    ids=["per-message-lower", "queue-lower"],
)
def test_lower_of_queue_ttl_and_expiration_wins(conn, resources, queue_ttl, expiration):
    q = resources.queue("ttl-min")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-message-ttl": queue_ttl})
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration=expiration))
    time.sleep(0.35)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_queue_ttl_does_not_touch_the_expiration_property(conn, resources):
    q = resources.queue("ttl-prop")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", q, b"a", pika.BasicProperties(expiration="50000"))
    ch.basic_publish("", q, b"b")
    got = get_all(ch, q)
    assert [(b, p.expiration) for _, p, b in got] == [(b"a", "50000"), (b"b", None)]


# --------------------------------------------------------------------------- #
# Dead-lettering
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("how", ["reject", "nack", "nack_multiple", "consumer_reject"])
def test_dead_letter_on_reject(conn, resources, how):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    src = resources.exchange("src")
    ch.exchange_declare(src, "direct")
    q = resources.queue("rejecting")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, src, "orig.key")
    props = rich_properties()
    ch.basic_publish(src, "orig.key", b"payload", props)

    if how == "consumer_reject":
        rec = Recorder()
        ch.basic_consume(q, rec)
        assert drain(conn, lambda: len(rec) == 1)
        tag = rec.deliveries[0][0].delivery_tag
        ch.basic_reject(tag, requeue=False)
    else:
        method, _, _ = poll_get(ch, q, auto_ack=False)
        assert method is not None
        if how == "reject":
            ch.basic_reject(method.delivery_tag, requeue=False)
        elif how == "nack":
            ch.basic_nack(method.delivery_tag, requeue=False)
        else:
            ch.basic_nack(0, multiple=True, requeue=False)

    method, got, body = poll_get(ch, dq)
    assert method is not None, "nothing dead-lettered"
    assert body == b"payload"
    assert method.exchange == dlx
    assert method.routing_key == "orig.key"  # no x-dead-letter-routing-key: original key
    assert method.redelivered is False
    # Every property survives, except expiration, which is removed.
    for name in PLAIN_FIELDS:
        assert getattr(got, name) == getattr(props, name), name
    assert got.expiration is None
    headers = dict(got.headers)
    death = headers.pop("x-death")
    for name in FIRST_DEATH:
        headers.pop(name)
    assert headers == props.headers  # other headers untouched
    assert type(headers["big"]) is pika.compat.long
    assert headers["flag"] is True
    assert len(death) == 1
    assert_x_death_entry(
        death[0],
        reason="rejected",
        queue=q,
        exchange=src,
        routing_keys=["orig.key"],
        original_expiration="60000",  # written for any reason, not only expiry
    )
    assert_first_death(got.headers, reason="rejected", queue=q, exchange=src)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_dead_letter_routing_key_override(conn, resources):
    ch = conn.channel()
    dlx = resources.exchange("dlx-direct")
    ch.exchange_declare(dlx, "direct")
    dq = resources.queue("dead")
    ch.queue_declare(dq)
    ch.queue_bind(dq, dlx, "dl.key")
    q = resources.queue("rejecting")
    ch.queue_declare(
        q, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dl.key"}
    )
    ch.basic_publish("", q, b"m", pika.BasicProperties(headers={"h": "v"}))
    method, _, _ = poll_get(ch, q, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)

    method, props, body = poll_get(ch, dq)
    assert body == b"m"
    assert (method.exchange, method.routing_key) == (dlx, "dl.key")
    assert props.headers["h"] == "v"
    (entry,) = props.headers["x-death"]
    # x-death keeps the key the message was published with.
    assert_x_death_entry(entry, reason="rejected", queue=q, exchange="", routing_keys=[q])
    assert_first_death(props.headers, reason="rejected", queue=q, exchange="")


def test_dead_letter_through_default_exchange(conn, resources):
    ch = conn.channel()
    dq = resources.queue("dead")
    ch.queue_declare(dq)
    q = resources.queue("rejecting")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dq})
    ch.basic_publish("", q, b"m")
    method, _, _ = poll_get(ch, q, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, props, body = poll_get(ch, dq)
    assert body == b"m"
    assert (method.exchange, method.routing_key) == ("", dq)
    assert props.headers["x-death"][0]["queue"] == q


def test_dead_letter_to_missing_exchange_drops(conn, resources):
    ch = conn.channel()
    q = resources.queue("rejecting")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": resources.exchange("never")})
    ch.basic_publish("", q, b"m")
    method, _, _ = poll_get(ch, q, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    settle(conn)
    assert count(ch, q) == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_requeue_true_does_not_dead_letter(conn, resources):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("requeue")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m")
    method, _, _ = poll_get(ch, q, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, body = poll_get(ch, q)
    assert (body, method.redelivered) == (b"m", True)
    assert props.headers is None
    settle(conn)
    assert ch.basic_get(dq, auto_ack=True)[0] is None


def test_dead_letter_expired_per_message(conn, resources):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("expiring")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    props = rich_properties(expiration="200")
    ch.basic_publish("", q, b"late", props)
    method, got, body = poll_get(ch, dq)
    assert method is not None, "expired message not dead-lettered"
    assert body == b"late"
    assert (method.exchange, method.routing_key) == (dlx, q)
    assert got.expiration is None
    for name in PLAIN_FIELDS:
        assert getattr(got, name) == getattr(props, name), name
    (entry,) = got.headers["x-death"]
    assert_x_death_entry(
        entry,
        reason="expired",
        queue=q,
        exchange="",
        routing_keys=[q],
        original_expiration="200",
    )
    assert_first_death(got.headers, reason="expired", queue=q, exchange="")
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_dead_letter_expired_queue_ttl(conn, resources):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("expiring")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 200})
    ch.basic_publish("", q, b"a", pika.BasicProperties(headers={"k": 1}))
    ch.basic_publish("", q, b"b")
    got = poll_get_n(ch, dq, 2)
    assert [b for _, _, b in got] == [b"a", b"b"]
    for (_, props, _), headers in zip(got, ({"k": 1}, {}), strict=True):
        (entry,) = props.headers["x-death"]
        # Queue TTL only: no original-expiration, and no expiration property.
        assert_x_death_entry(entry, reason="expired", queue=q, exchange="", routing_keys=[q])
        assert props.expiration is None
        assert {k: v for k, v in props.headers.items() if not k.startswith("x-")} == headers


def test_dead_letter_max_length_drop_head(conn, resources):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("bounded")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-max-length": 2})
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())  # all acked: drop-head
    assert [b for _, _, b in get_all(ch, q)] == [b"2", b"3"]
    dead = poll_get_n(ch, dq, 2)
    assert [b for _, _, b in dead] == [b"0", b"1"]
    for method, props, _ in dead:
        assert method.routing_key == q
        (entry,) = props.headers["x-death"]
        assert_x_death_entry(entry, reason="maxlen", queue=q, exchange="", routing_keys=[q])
        assert_first_death(props.headers, reason="maxlen", queue=q, exchange="")


def test_dead_letter_reject_publish_dlx(conn, resources):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("bounded")
    ch.queue_declare(
        q,
        arguments={
            "x-dead-letter-exchange": dlx,
            "x-max-length": 2,
            "x-overflow": "reject-publish-dlx",
        },
    )
    ch.confirm_delivery()
    outcome = []
    for i in range(4):
        try:
            ch.basic_publish("", q, str(i).encode())
            outcome.append("ack")
        except pika.exceptions.NackError:
            outcome.append("nack")
    assert outcome == ["ack", "ack", "nack", "nack"]  # refused AND dead-lettered
    assert [b for _, _, b in get_all(ch, q)] == [b"0", b"1"]
    dead = poll_get_n(ch, dq, 2)
    assert [b for _, _, b in dead] == [b"2", b"3"]
    for _, props, _ in dead:
        (entry,) = props.headers["x-death"]
        assert_x_death_entry(entry, reason="maxlen", queue=q, exchange="", routing_keys=[q])


def test_dead_letter_cycle_with_reject_increments_count(conn, resources):
    ch = conn.channel()
    x = resources.exchange("cycle")
    ch.exchange_declare(x, "fanout")
    q = resources.queue("cycle")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": x})
    ch.queue_bind(q, x)
    ch.basic_publish("", q, b"again", pika.BasicProperties(headers={"h": "v"}))
    seen = []
    for _ in range(4):
        method, props, body = poll_get(ch, q, auto_ack=False)
        assert body == b"again"
        seen.append((method.exchange, method.routing_key, props.headers))
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert seen[0] == ("", q, {"h": "v"})
    for n, (exchange, routing_key, headers) in enumerate(seen[1:], start=1):
        assert (exchange, routing_key) == (x, q)
        assert headers["h"] == "v"
        (entry,) = headers["x-death"]  # same queue + reason: one entry, counted
        # The entry keeps the exchange and routing keys of the *first* death.
        assert_x_death_entry(
            entry, reason="rejected", queue=q, exchange="", routing_keys=[q], count_=n
        )
        assert_first_death(headers, reason="rejected", queue=q, exchange="")


def test_dead_letter_through_two_queues_prepends_x_death(conn, resources):
    ch = conn.channel()
    x = resources.exchange("chain")
    ch.exchange_declare(x, "direct")
    qa, qb, qc = resources.queue("a"), resources.queue("b"), resources.queue("c")
    ch.queue_declare(qa, arguments={"x-dead-letter-exchange": x, "x-dead-letter-routing-key": "b"})
    ch.queue_declare(qb, arguments={"x-dead-letter-exchange": x, "x-dead-letter-routing-key": "c"})
    ch.queue_declare(qc)
    ch.queue_bind(qb, x, "b")
    ch.queue_bind(qc, x, "c")
    ch.basic_publish("", qa, b"m")
    method, _, _ = poll_get(ch, qa, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, _ = poll_get(ch, qb, auto_ack=False)
    assert method is not None
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, props, body = poll_get(ch, qc)
    assert (method.exchange, method.routing_key, body) == (x, "c", b"m")
    newest, oldest = props.headers["x-death"]  # most recent death first
    assert_x_death_entry(newest, reason="rejected", queue=qb, exchange=x, routing_keys=["b"])
    assert_x_death_entry(oldest, reason="rejected", queue=qa, exchange="", routing_keys=[qa])
    assert_first_death(props.headers, reason="rejected", queue=qa, exchange="")


# -- the x-death header on the wire ------------------------------------------ #


def _decode_value(buf: bytes, pos: int) -> tuple[tuple[str, Any], int]:
    kind = chr(buf[pos])
    pos += 1
    if kind == "S":
        (n,) = struct.unpack_from(">I", buf, pos)
        return (kind, buf[pos + 4 : pos + 4 + n].decode()), pos + 4 + n
    if kind in "lT":
        fmt = ">q" if kind == "l" else ">Q"
        return (kind, struct.unpack_from(fmt, buf, pos)[0]), pos + 8
    if kind == "I":
        return (kind, struct.unpack_from(">i", buf, pos)[0]), pos + 4
    if kind == "t":
        return (kind, buf[pos]), pos + 1
    if kind == "F":
        table, pos = _decode_table(buf, pos)
        return (kind, table), pos
    if kind == "A":
        (n,) = struct.unpack_from(">I", buf, pos)
        pos += 4
        end, items = pos + n, []
        while pos < end:
            item, pos = _decode_value(buf, pos)
            items.append(item)
        return (kind, items), pos
    raise AssertionError(f"unexpected field type {kind!r}")


def _decode_table(buf: bytes, pos: int) -> tuple[list[tuple[str, Any]], int]:
    """A field table as an ordered list of (key, (type tag, value))."""
    (n,) = struct.unpack_from(">I", buf, pos)
    pos += 4
    end, out = pos + n, []
    while pos < end:
        klen = buf[pos]
        key = buf[pos + 1 : pos + 1 + klen].decode()
        value, pos = _decode_value(buf, pos + 1 + klen)
        out.append((key, value))
    return out, pos


def _raw_get_headers(c: RawClient, queue: str) -> list[tuple[str, Any]]:
    c.send(commands.Basic.Get(queue=queue, no_ack=True), 1)
    c.expect(commands.Basic.GetOk, channel=1)
    _, _, payload = c.recv_raw_frame()
    flags, pos = struct.unpack_from(">H", payload, 12)[0], 14
    for bit in (0x8000, 0x4000):  # content-type, content-encoding
        if flags & bit:
            pos += 1 + payload[pos]
    assert flags & 0x2000, "no headers"
    headers, _ = _decode_table(payload, pos)
    while c.recv_raw_frame()[0] != 3:  # the body frame
        pass
    return headers


def test_dead_letter_x_death_wire_types(conn, resources, amqp_url):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("wire")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    props = pika.BasicProperties(headers={"zed": 1, "alpha": "s", "flag": True}, expiration="300")
    ch.basic_publish("", q, b"w", props)
    c = RawClient(parse_url(amqp_url))
    try:
        c.handshake()
        c.open_channel(1)
        wait_until(lambda: count(ch, dq), OP_TIMEOUT, "the dead-lettered copy", 0.02)
        headers = dict(_raw_get_headers(c, dq))
    finally:
        c.close()
    assert headers["zed"] == ("I", 1)
    assert headers["alpha"] == ("S", "s")
    assert headers["flag"] == ("t", 1)
    for name, value in (
        ("x-first-death-exchange", ""),
        ("x-first-death-queue", q),
        ("x-first-death-reason", "expired"),
    ):
        assert headers[name] == ("S", value)
    kind, deaths = headers["x-death"]
    assert kind == "A"
    assert len(deaths) == 1
    assert deaths[0][0] == "F"
    entry = dict(deaths[0][1])
    assert {k: v[0] for k, v in entry.items()} == {
        "count": "l",
        "reason": "S",
        "queue": "S",
        "time": "T",
        "exchange": "S",
        "routing-keys": "A",
        "original-expiration": "S",
    }
    assert entry["count"][1] == 1
    assert entry["routing-keys"][1] == [("S", q)]
    assert entry["original-expiration"][1] == "300"
    assert abs(entry["time"][1] - time.time()) < 120  # seconds since the epoch


def test_dead_letter_wire_field_order(conn, resources, amqp_url):
    """RabbitMQ 3.10 re-encodes the headers of a dead-lettered message sorted by key;
    a new x-death entry is written count, reason, queue, time, exchange, routing-keys
    [, original-expiration], but an entry it updates (count + 1), or one it prepends
    to an existing x-death, comes out sorted by key."""
    ch = conn.channel()
    x = resources.exchange("cycle")
    ch.exchange_declare(x, "fanout")
    q = resources.queue("cycle")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": x})
    ch.queue_bind(q, x)
    ch.basic_publish("", q, b"o", pika.BasicProperties(headers={"zed": 1, "alpha": "s"}))
    c = RawClient(parse_url(amqp_url))
    try:
        c.handshake()
        c.open_channel(1)
        orders = []
        for _ in range(2):
            method, _, _ = poll_get(ch, q, auto_ack=False)
            ch.basic_reject(method.delivery_tag, requeue=False)
            wait_until(lambda: count(ch, q), OP_TIMEOUT, "the dead-lettered message back", 0.02)
            c.send(commands.Basic.Get(queue=q, no_ack=False), 1)
            ok = c.expect(commands.Basic.GetOk, channel=1)
            _, _, payload = c.recv_raw_frame()
            headers, _ = _decode_table(payload, 14)
            c.recv_raw_frame()
            c.send(commands.Basic.Reject(delivery_tag=ok.delivery_tag, requeue=True), 1)
            orders.append(headers)
            assert [k for k, _ in headers] == [
                "alpha",
                "x-death",
                "x-first-death-exchange",
                "x-first-death-queue",
                "x-first-death-reason",
                "zed",
            ]
    finally:
        c.close()
    first = dict(orders[0])["x-death"][1][0][1]
    assert [k for k, _ in first] == ["count", "reason", "queue", "time", "exchange", "routing-keys"]
    second = dict(orders[1])["x-death"][1][0][1]
    assert [k for k, _ in second] == [
        "count",
        "exchange",
        "queue",
        "reason",
        "routing-keys",
        "time",
    ]
    assert dict(second)["count"] == ("l", 2)


# --------------------------------------------------------------------------- #
# x-max-length / x-max-length-bytes / x-overflow
# --------------------------------------------------------------------------- #


def test_max_length_drop_head_keeps_newest(conn, resources):
    q = resources.queue("maxlen")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length": 3})
    ch.confirm_delivery()
    for i in range(7):
        ch.basic_publish("", q, str(i).encode())
        assert count(ch, q) == min(i + 1, 3)
    assert [b for _, _, b in get_all(ch, q)] == [b"4", b"5", b"6"]


def test_max_length_bytes_drop_head_counts_body_bytes(conn, resources):
    q = resources.queue("maxbytes")
    ch = conn.channel()
    # Two 10-byte bodies fit exactly: the limit counts body bytes only, not properties.
    ch.queue_declare(q, arguments={"x-max-length-bytes": 20})
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish(
            "", q, str(i).encode() * 10, pika.BasicProperties(headers={"pad": "x" * 50})
        )
        assert count(ch, q) <= 2
    assert [b for _, _, b in get_all(ch, q)] == [b"2" * 10, b"3" * 10]


def test_max_length_and_bytes_both_apply(conn, resources):
    q = resources.queue("maxboth")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 20, "x-max-length": 1})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode() * 10)
    assert [b for _, _, b in get_all(ch, q)] == [b"2" * 10]


def test_max_length_zero_keeps_nothing(conn, resources):
    q = resources.queue("maxzero")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length": 0})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")  # acked, then dropped
    assert count(ch, q) == 0


@pytest.mark.parametrize(
    "limit", [{"x-max-length": 2}, {"x-max-length-bytes": 25}], ids=["length", "bytes"]
)
def test_reject_publish_nacks_refused_messages(conn, resources, limit):
    q = resources.queue("reject-publish")
    ch = conn.channel()
    ch.queue_declare(q, arguments={**limit, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    outcome = []
    for i in range(5):
        try:
            ch.basic_publish("", q, str(i).encode() * 10)
            outcome.append("ack")
        except pika.exceptions.NackError:
            outcome.append("nack")
        assert count(ch, q) <= 2
    assert outcome == ["ack", "ack", "nack", "nack", "nack"]
    assert [b for _, _, b in get_all(ch, q)] == [b"0" * 10, b"1" * 10]


def test_reject_publish_space_freed_by_get_and_unacked_do_not_count(conn, resources):
    q = resources.queue("reject-publish-free")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"a")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"b")
    method, _, body = ch.basic_get(q, auto_ack=False)  # a: unacked, no longer ready
    assert body == b"a"
    ch.basic_publish("", q, b"c")  # the limit counts ready messages only
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"d")
    ch.basic_ack(method.delivery_tag)
    assert [b for _, _, b in get_all(ch, q)] == [b"c"]


def test_reject_publish_zero_refuses_everything(conn, resources):
    q = resources.queue("reject-zero")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"x")


def test_reject_publish_mandatory_is_nack_not_return(raw, resources, conn):
    q = resources.queue("reject-publish-mandatory")
    conn.channel().queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    for body in (b"kept", b"refused-1", b"refused-2"):
        c.publish(1, "", q, body, mandatory=True)
    confirms = []
    while not confirms or confirms[-1].delivery_tag < 3:
        _, value = c.recv()
        assert not isinstance(value, commands.Basic.Return), "refused publish was returned"
        if isinstance(value, commands.Basic.Ack | commands.Basic.Nack):
            confirms.append(value)
    # The broker may fold confirms with multiple=True; expand them.
    acked, nacked = set(), set()
    last = 0
    for conf in confirms:
        tags = range(last + 1, conf.delivery_tag + 1) if conf.multiple else [conf.delivery_tag]
        (acked if isinstance(conf, commands.Basic.Ack) else nacked).update(tags)
        last = max(last, conf.delivery_tag)
    assert (acked, nacked) == ({1}, {2, 3})
    with pytest.raises(TimeoutError):
        c.recv(timeout=0.3)  # and no basic.return afterwards either


async def test_reject_publish_aiormq_delivery_error(amqp_url, resources):
    import aiormq
    import aiormq.exceptions

    q = resources.queue("reject-publish-aiormq")
    connection = await aiormq_connect(amqp_url)
    try:
        ch = await connection.channel(publisher_confirms=True)
        await ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        confirm = await asyncio.wait_for(ch.basic_publish(b"a", routing_key=q), OP_TIMEOUT)
        assert isinstance(confirm, aiormq.spec.Basic.Ack)
        with pytest.raises(aiormq.exceptions.DeliveryError) as ei:
            await asyncio.wait_for(ch.basic_publish(b"b", routing_key=q), OP_TIMEOUT)
        assert isinstance(ei.value.frame, aiormq.spec.Basic.Nack)
        declared = await ch.queue_declare(q, passive=True)
        assert declared.message_count == 1
    finally:
        await connection.close()


# --------------------------------------------------------------------------- #
# x-max-priority
# --------------------------------------------------------------------------- #


def test_priority_queue_order(conn, resources):
    q = resources.queue("prio")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    priorities = [1, None, 5, 3, 5, 0, 1, 9, 7, 5]
    for i, p in enumerate(priorities):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(priority=p))
    got = [(b.decode(), props.priority) for _, props, b in get_all(ch, q)]
    # Highest first, FIFO within a level; 9 and 7 count as 5 (the max) but keep their
    # property; no priority counts as 0.
    assert got == [
        ("2", 5),
        ("4", 5),
        ("7", 9),
        ("8", 7),
        ("9", 5),
        ("3", 3),
        ("0", 1),
        ("6", 1),
        ("1", None),
        ("5", 0),
    ]


def test_priority_queue_order_to_consumer(conn, resources):
    q = resources.queue("prio-consume")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    for i, p in enumerate([0, 2, 10, 2, 4]):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(priority=p))
    rec = Recorder()
    ch.basic_consume(q, rec, auto_ack=True)
    assert drain(conn, lambda: len(rec) == 5)
    assert rec.bodies == [b"2", b"4", b"1", b"3", b"0"]


@pytest.mark.parametrize("args", [{}, {"x-max-priority": 0}], ids=["plain", "max-0"])
def test_queue_without_max_priority_is_fifo(conn, resources, args):
    q = resources.queue("fifo")
    ch = conn.channel()
    ch.queue_declare(q, arguments=args)
    ch.confirm_delivery()
    for i, p in enumerate([1, None, 5, 3]):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(priority=p))
    got = [(b, props.priority) for _, props, b in get_all(ch, q)]
    assert got == [(b"0", 1), (b"1", None), (b"2", 5), (b"3", 3)]


# --------------------------------------------------------------------------- #
# x-single-active-consumer
# --------------------------------------------------------------------------- #


def pump(*conns: pika.BlockingConnection, seconds: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def pump_until(*conns, until, timeout: float = OP_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            return False
        pump(*conns, seconds=0.05)
    return True


def test_single_active_consumer_only_first_receives(conn, open_conn, resources):
    q = resources.queue("sac")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    c1, c2 = open_conn(), open_conn()
    r1, r2 = Recorder(), Recorder()
    c1.channel().basic_consume(q, r1, auto_ack=True)
    c2.channel().basic_consume(q, r2, auto_ack=True)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())
    assert pump_until(c1, c2, until=lambda: len(r1) == 4)
    pump(c1, c2)
    assert r1.bodies == [b"0", b"1", b"2", b"3"]
    assert r2.bodies == []


def test_single_active_consumer_failover_on_connection_close(conn, open_conn, resources):
    q = resources.queue("sac-close")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    c1, c2 = open_conn(), open_conn()
    ch1 = c1.channel()
    ch1.basic_qos(prefetch_count=2)
    r1, r2 = Recorder(), Recorder()
    ch1.basic_consume(q, r1)
    c2.channel().basic_consume(q, r2, auto_ack=True)
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())
    assert pump_until(c1, c2, until=lambda: len(r1) == 2)
    pump(c1, c2)
    assert (r1.bodies, r2.bodies) == ([b"0", b"1"], [])
    c1.close()  # 0 and 1 are unacked: back to the queue, to the new active consumer
    assert pump_until(c2, until=lambda: len(r2) == 4)
    assert [(b, m.redelivered) for m, _, b in r2.deliveries] == [
        (b"0", True),
        (b"1", True),
        (b"2", False),
        (b"3", False),
    ]


def test_single_active_consumer_failover_on_cancel(conn, open_conn, resources):
    """(RabbitMQ 3.10.8 crashes the queue when the active consumer cancels with
    messages still unacked and another message arrives, so the first consumer here
    settles everything before it cancels.)"""
    q = resources.queue("sac-cancel")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    c1, c2 = open_conn(), open_conn()
    ch1 = c1.channel()
    r1, r2 = Recorder(), Recorder()
    tag = ch1.basic_consume(q, r1)
    c2.channel().basic_consume(q, r2, auto_ack=True)
    ch.basic_publish("", q, b"0")
    assert pump_until(c1, c2, until=lambda: len(r1) == 1)
    pump(c1, c2)
    assert r2.bodies == []
    ch1.basic_ack(r1.deliveries[0][0].delivery_tag)
    ch1.basic_cancel(tag)
    for i in (1, 2):
        ch.basic_publish("", q, str(i).encode())
    assert pump_until(c1, c2, until=lambda: len(r2) == 2)
    pump(c1, c2)
    assert r1.bodies == [b"0"]
    assert r2.bodies == [b"1", b"2"]
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1


# --------------------------------------------------------------------------- #
# Consumer priorities (x-priority)
# --------------------------------------------------------------------------- #


def test_consumer_priority_higher_first_while_it_has_credit(conn, resources):
    q = resources.queue("consumer-prio")
    ch = conn.channel()
    ch.queue_declare(q)
    low_ch, high_ch = conn.channel(), conn.channel()
    low_ch.basic_qos(prefetch_count=1)
    high_ch.basic_qos(prefetch_count=1)
    low, high = Recorder(), Recorder()
    low_ch.basic_consume(q, low, arguments={"x-priority": 1})
    high_ch.basic_consume(q, high, arguments={"x-priority": 10})

    ch.basic_publish("", q, b"0")
    assert drain(conn, lambda: len(high) == 1)
    settle(conn)
    assert (high.bodies, low.bodies) == ([b"0"], [])
    ch.basic_publish("", q, b"1")  # high is full (1 unacked): low gets it
    assert drain(conn, lambda: len(low) == 1)
    ch.basic_publish("", q, b"2")  # both full: stays ready
    settle(conn)
    assert (high.bodies, low.bodies) == ([b"0"], [b"1"])
    high_ch.basic_ack(high.deliveries[0][0].delivery_tag)
    assert drain(conn, lambda: len(high) == 2)
    settle(conn)
    assert (high.bodies, low.bodies) == ([b"0", b"2"], [b"1"])


def test_consumer_priority_with_backlog(conn, resources):
    q = resources.queue("consumer-prio-backlog")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, str(i).encode())
    high_ch, low_ch = conn.channel(), conn.channel()
    high_ch.basic_qos(prefetch_count=2)
    low_ch.basic_qos(prefetch_count=10)
    high, low = Recorder(), Recorder()
    # The high-priority consumer registers first so that it is not racing the backlog.
    high_ch.basic_consume(q, high, arguments={"x-priority": 5})
    low_ch.basic_consume(q, low, arguments={"x-priority": -1})
    assert drain(conn, lambda: len(high) + len(low) == 6)
    assert high.bodies == [b"0", b"1"]
    assert low.bodies == [b"2", b"3", b"4", b"5"]


# --------------------------------------------------------------------------- #
# Alternate exchange
# --------------------------------------------------------------------------- #


def test_alternate_exchange_gets_unroutable(conn, resources):
    ch = conn.channel()
    ae = resources.exchange("ae")
    ch.exchange_declare(ae, "fanout")
    aq = resources.queue("ae")
    ch.queue_declare(aq)
    ch.queue_bind(aq, ae)
    x = resources.exchange("main")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    nq = resources.queue("normal")
    ch.queue_declare(nq)
    ch.queue_bind(nq, x, "k")
    ch.confirm_delivery()
    ch.basic_publish(x, "k", b"routed", mandatory=True)
    # Routed via the AE: counts as routed, so no basic.return (no UnroutableError).
    ch.basic_publish(
        x, "other", b"unroutable", pika.BasicProperties(headers={"h": 1}), mandatory=True
    )
    method, props, body = poll_get(ch, aq)
    # The message keeps the exchange and routing key it was published to.
    assert (method.exchange, method.routing_key, body) == (x, "other", b"unroutable")
    assert props.headers == {"h": 1}
    assert ch.basic_get(aq, auto_ack=True)[0] is None
    assert [b for _, _, b in get_all(ch, nq)] == [b"routed"]


@pytest.mark.parametrize("ae_exists", [False, True], ids=["missing-ae", "ae-routes-nowhere"])
def test_alternate_exchange_that_routes_nowhere_returns(conn, resources, ae_exists):
    ch = conn.channel()
    ae = resources.exchange("ae")
    if ae_exists:
        ch.exchange_declare(ae, "direct")
    x = resources.exchange("main")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        ch.basic_publish(x, "k", b"lost", mandatory=True)
    returned = ei.value.messages[0].method
    assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
    assert (returned.exchange, returned.routing_key) == (x, "k")


# --------------------------------------------------------------------------- #
# x-delivery-limit (quorum queues)
# --------------------------------------------------------------------------- #


def quorum(ch, q: str, **args: Any) -> None:
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum", **args})


def requeue_until_gone(ch, q: str, limit: int = 10) -> list:
    seen = []
    for _ in range(limit):
        method, props, body = poll_get(ch, q, timeout=0.5, auto_ack=False)
        if method is None:
            break
        seen.append((method, props, body))
        ch.basic_nack(method.delivery_tag, requeue=True)
    return seen


def test_quorum_delivery_limit_drops(conn, resources):
    q = resources.queue("qq-limit")
    ch = conn.channel()
    quorum(ch, q, **{"x-delivery-limit": 2})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison")
    seen = requeue_until_gone(ch, q)
    # Delivered once plus two redeliveries; the third return drops it.
    assert [(b, m.redelivered) for m, _, b in seen] == [
        (b"poison", False),
        (b"poison", True),
        (b"poison", True),
    ]
    assert count(ch, q) == 0


def test_quorum_delivery_count_header(conn, resources):
    q = resources.queue("qq-count")
    ch = conn.channel()
    quorum(ch, q, **{"x-delivery-limit": 1})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(headers={"h": "v"}))
    seen = requeue_until_gone(ch, q)
    assert [p.headers for _, p, _ in seen] == [
        {"h": "v", "x-delivery-count": 0},
        {"h": "v", "x-delivery-count": 1},
    ]
    assert type(seen[0][1].headers["x-delivery-count"]) is pika.compat.long


def test_quorum_consumer_sees_delivery_count_from_the_first_redelivery(conn, resources):
    """A consumer's first delivery has no x-delivery-count (basic.get shows 0); the
    redelivery after a requeue carries 1."""
    q = resources.queue("qq-consume-count")
    ch = conn.channel()
    quorum(ch, q)
    got: list[tuple[bool, object]] = []

    def on(c, method, props, _body: bytes) -> None:
        got.append((method.redelivered, props.headers))
        if len(got) == 1:
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            c.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on)
    conn.process_data_events(0.3)  # waiting: the message may be handed straight over
    publisher = conn.channel()
    publisher.confirm_delivery()
    publisher.basic_publish("", q, b"m", pika.BasicProperties(headers={"h": "v"}))
    deadline = time.monotonic() + OP_TIMEOUT
    while len(got) < 2 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert got == [(False, {"h": "v"}), (True, {"h": "v", "x-delivery-count": 1})]


def test_quorum_delivery_limit_dead_letters(conn, resources):
    ch = conn.channel()
    dlx, dq = dlx_fanout(ch, resources)
    q = resources.queue("qq-limit-dlx")
    quorum(ch, q, **{"x-delivery-limit": 1, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison", pika.BasicProperties(headers={"h": "v"}))
    seen = requeue_until_gone(ch, q)
    assert len(seen) == 2
    method, props, body = poll_get(ch, dq)
    assert body == b"poison"
    assert (method.exchange, method.routing_key) == (dlx, q)
    assert props.headers["h"] == "v"
    assert "x-delivery-count" not in props.headers
    (entry,) = props.headers["x-death"]
    assert_x_death_entry(entry, reason="delivery_limit", queue=q, exchange="", routing_keys=[q])
    assert_first_death(props.headers, reason="delivery_limit", queue=q, exchange="")
