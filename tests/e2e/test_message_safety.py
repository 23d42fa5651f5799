"""Nothing is lost or duplicated when a consumer with thousands in flight goes away.

The Java client's ``RequeueOnChannelClose`` / ``RequeueOnConnectionClose`` scenario:
2,000 messages are published, a consumer without prefetch limit (so most of them are
in flight) takes 20 (acking them, or not), then its channel or connection goes, by
every path a client can take. All the others come back, each exactly once.

For a no-ack consumer RabbitMQ returns nothing it has handed to the channel: the
messages the client saw, plus those still in the queue, never exceed what was
published, and none comes twice.
"""

from __future__ import annotations

import time

import pika
import pytest
from pamqp import body as pbody
from pamqp import commands, frame, header

from .conftest import OP_TIMEOUT, RawClient, RawClosed, get_all, wait_queue_count

pytestmark = pytest.mark.timeout(90)

TOTAL = 2000
TAKE = 20
CLOSE_PATHS = ["channel.close", "connection.close", "eof", "heartbeat", "cancel+close"]


def _publish_numbered(conn: pika.BlockingConnection, queue: str, n: int) -> None:
    ch = conn.channel()
    for i in range(n):
        ch.basic_publish("", queue, str(i).encode())
    assert wait_queue_count(ch, queue, n, timeout=30) == n
    ch.close()


def _read_deliveries(c: RawClient, n: int) -> list[tuple[int, bytes]]:
    """The next ``n`` deliveries (delivery tag, body), other frames skipped."""
    out = []
    while len(out) < n:
        _, value = c.recv()
        if isinstance(value, commands.Basic.Deliver):
            _, body = c.recv_content()
            out.append((value.delivery_tag, body))
    return out


def _read_until(c: RawClient, reply: type) -> list[bytes]:
    """Bodies of the deliveries received before ``reply`` (which is consumed too)."""
    bodies = []
    while True:
        _, value = c.recv()
        if isinstance(value, reply):
            return bodies
        if isinstance(value, commands.Basic.Deliver):
            _, body = c.recv_content()
            bodies.append(body)
        elif isinstance(value, header.ContentHeader | pbody.ContentBody):
            raise AssertionError(f"stray content frame {value!r}")


def _close(c: RawClient, path: str, tag: str) -> list[bytes]:
    """Make the consumer go away by ``path``; the bodies it still received."""
    seen: list[bytes] = []
    if path == "cancel+close":
        c.send(commands.Basic.Cancel(consumer_tag=tag), 1)
        seen += _read_until(c, commands.Basic.CancelOk)
        path = "channel.close"
    if path == "channel.close":
        c.send(commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), 1)
        seen += _read_until(c, commands.Channel.CloseOk)
        c.send(commands.Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
        seen += _read_until(c, commands.Connection.CloseOk)
    elif path == "connection.close":
        c.send(commands.Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
        seen += _read_until(c, commands.Connection.CloseOk)
    elif path == "eof":
        c.close()
    elif path == "heartbeat":
        # Stop reading and sending: the broker must notice the silence and let go.
        deadline = time.monotonic() + 30
        c.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if not c.sock.recv(1 << 20):
                    break  # the broker closed the socket
            except TimeoutError:
                time.sleep(0.5)  # read slowly, never answer
            except OSError:
                break
        c.close()
    return seen


def _consumer(address, heartbeat: int, no_ack: bool) -> tuple[RawClient, str]:
    c = RawClient(address, OP_TIMEOUT)
    c.handshake(heartbeat_=heartbeat)
    c.open_channel(1)
    return c, ""


@pytest.mark.parametrize("path", CLOSE_PATHS)
@pytest.mark.parametrize("acking", [True, False], ids=["acks-20", "acks-none"])
def test_requeue_on_close_loses_nothing(conn, address, resources, path, acking):
    q = resources.queue("safety")
    conn.channel().queue_declare(q)
    _publish_numbered(conn, q, TOTAL)
    c, _ = _consumer(address, heartbeat=1 if path == "heartbeat" else 0, no_ack=False)
    try:
        ok = c.rpc(commands.Basic.Consume(queue=q, consumer_tag="safety"), commands.Basic.ConsumeOk)
        first = _read_deliveries(c, TAKE)
        if acking:
            for tag, _ in first:
                c.send(commands.Basic.Ack(delivery_tag=tag), 1)
            # A round trip: the acks are taken before the consumer goes.
            c.send(commands.Exchange.Declare(exchange="amq.direct", passive=True), 1)
            _read_until(c, commands.Exchange.DeclareOk)
        _close(c, path, ok.consumer_tag)
    finally:
        c.close()
    expected = TOTAL - TAKE if acking else TOTAL
    ch = conn.channel()
    assert wait_queue_count(ch, q, expected, timeout=30) == expected
    bodies = [int(b) for _, _, b in get_all(ch, q, TOTAL + 10)]
    assert len(bodies) == len(set(bodies)) == expected
    taken = {int(b) for _, b in first}
    if acking:
        assert set(bodies) == set(range(TOTAL)) - taken
    else:
        assert set(bodies) == set(range(TOTAL))
    # Requeued messages keep their place: still in publish order.
    assert bodies == sorted(bodies)


@pytest.mark.parametrize("path", ["channel.close", "connection.close", "cancel+close"])
def test_no_ack_consumer_close_returns_nothing_delivered(conn, address, resources, path):
    q = resources.queue("safety-noack")
    conn.channel().queue_declare(q)
    _publish_numbered(conn, q, TOTAL)
    c, _ = _consumer(address, heartbeat=0, no_ack=True)
    try:
        ok = c.rpc(
            commands.Basic.Consume(queue=q, consumer_tag="safety", no_ack=True),
            commands.Basic.ConsumeOk,
        )
        seen = [b for _, b in _read_deliveries(c, TAKE)]
        try:
            seen += _close(c, path, ok.consumer_tag)
        except RawClosed:
            pass
    finally:
        c.close()
    ch = conn.channel()
    remaining = [int(b) for _, _, b in get_all(ch, q, TOTAL + 10)]
    got = [int(b) for b in seen]
    assert len(got) == len(set(got)), "a no-ack delivery came twice"
    assert not set(got) & set(remaining), "a delivered no-ack message came back"
    assert len(got) + len(remaining) <= TOTAL
    # Whatever stayed in the queue is its tail, in order.
    assert remaining == sorted(remaining)


# --------------------------------------------------------------------------- #
# One message, one copy per queue
# --------------------------------------------------------------------------- #


def _routes(ch, q: str, x: str, resources, how: str) -> tuple[str, str, dict | None]:
    """Bind ``q`` to ``x`` by several routes; (exchange, routing key, headers) to publish."""
    if how == "bindings":
        ch.exchange_declare(x, "direct")
        ch.queue_bind(q, x, "k")
        ch.queue_bind(q, x, "k", arguments={"other": 1})
        return x, "k", None
    if how == "topic-overlap":
        ch.exchange_declare(x, "topic")
        for key in ("a.*", "#", "a.b", "*.b"):
            ch.queue_bind(q, x, key)
        return x, "a.b", None
    if how == "exchange-paths":
        ch.exchange_declare(x, "direct")
        x2, x3 = resources.exchange("mid"), resources.exchange("mid")
        ch.exchange_declare(x2, "fanout")
        ch.exchange_declare(x3, "topic")
        ch.exchange_bind(x2, x, "k")
        ch.exchange_bind(x3, x, "k")
        ch.exchange_bind(x3, x2, "")
        ch.exchange_bind(x, x3, "#")  # a loop back to the start
        for source, key in ((x, "k"), (x2, ""), (x3, "k")):
            ch.queue_bind(q, source, key)
        return x, "k", None
    if how == "cc":
        ch.exchange_declare(x, "direct")
        for key in ("k", "c1", "c2"):
            ch.queue_bind(q, x, key)
        return x, "k", {"CC": ["c1", "k"], "BCC": ["c2", "c1"]}
    if how == "cc-default-exchange":
        return "", q, {"CC": [q, q]}
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["bindings", "topic-overlap", "exchange-paths", "cc", "cc-default-exchange"]
)
def test_one_copy_per_queue_across_routes(conn, resources, how):
    ch = conn.channel()
    q, other = resources.queue("once"), resources.queue("once-other")
    ch.queue_declare(q)
    ch.queue_declare(other)
    exchange, key, headers = _routes(ch, q, resources.exchange("once"), resources, how)
    if exchange:
        ch.queue_bind(other, exchange, key)
    ch.confirm_delivery()
    ch.basic_publish(exchange, key, b"once", pika.BasicProperties(headers=headers))
    assert [b for _, _, b in get_all(ch, q)] == [b"once"]
    if exchange:
        assert [b for _, _, b in get_all(ch, other)] == [b"once"]


# --------------------------------------------------------------------------- #
# Body frames of frame_max octets
# --------------------------------------------------------------------------- #


def _publish_in_frames(c: RawClient, queue: str, body: bytes, step: int) -> None:
    parts = [
        frame.marshal(commands.Basic.Publish(exchange="", routing_key=queue), 1),
        frame.marshal(header.ContentHeader(0, len(body), commands.Basic.Properties()), 1),
    ]
    for i in range(0, len(body), step):
        parts.append(frame.marshal(pbody.ContentBody(body[i : i + step]), 1))
    c.send_raw(b"".join(parts))


def test_body_frames_of_frame_max_octets_are_accepted(conn, raw, resources):
    """py-amqp-style clients cut bodies at frame_max: 8 over the spec's limit, and
    RabbitMQ takes them (it allows that much slack)."""
    q = resources.queue("framemax")
    conn.channel().queue_declare(q)
    c = raw()
    c.handshake()
    c.open_channel(1)
    body = bytes(range(256)) * (3 * c.frame_max // 256 + 7)
    _publish_in_frames(c, q, body, c.frame_max)
    c.rpc(commands.Basic.Get(queue=q, no_ack=True), commands.Basic.GetOk)
    _, got = c.recv_content()
    assert got == body


def test_body_frame_past_the_slack_is_a_frame_error(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    _publish_in_frames(c, "nowhere", b"x" * (c.frame_max + 1), c.frame_max + 1)
    _, close = c.recv()
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 501
    assert "frame_too_large" in close.reply_text
