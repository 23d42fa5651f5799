"""basic.publish: content framing, properties, mandatory/immediate, confirms, tx."""

from __future__ import annotations

import asyncio
import random
import struct
from datetime import UTC, datetime
from decimal import Decimal

import amqp
import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands, header

from .conftest import (
    OP_TIMEOUT,
    RawClosed,
    aiormq_connect,
    channel_error,
    drain,
    get_all,
    unique,
    wait_queue_count,
)

pytestmark = pytest.mark.timeout(60)


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


# --------------------------------------------------------------------------- #
# Bodies and framing
# --------------------------------------------------------------------------- #

BODY_SIZES = [0, 1, 131064, 131065, 300 * 1024, 1024 * 1024]


@pytest.mark.parametrize("size", BODY_SIZES, ids=lambda s: f"{s}B")
def test_body_roundtrip_basic_get(channel, resources, size):
    q = resources.queue("body")
    channel.queue_declare(q)
    data = payload(size)
    channel.basic_publish("", q, data)
    method, props, got = channel.basic_get(q, auto_ack=True)
    assert method is not None
    assert len(got) == size
    assert got == data


def test_bodies_roundtrip_consume(conn, resources):
    ch = conn.channel()
    q = resources.queue("bodies")
    ch.queue_declare(q)
    sent = [payload(s) for s in BODY_SIZES]
    for data in sent:
        ch.basic_publish("", q, data)
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert drain(conn, lambda: len(got) == len(sent), timeout=15)
    assert [len(b) for b in got] == [len(b) for b in sent]
    assert got == sent


def test_large_bodies_keep_their_place_among_small_ones(conn, resources):
    """Bodies of 1 MiB and more are inserted on their own (storage.batch.LARGE_BODY),
    outside the batch's arrays: FIFO, properties and TTL stay as for small ones."""
    ch = conn.channel()
    ch.confirm_delivery()
    q = resources.queue("large-order")
    ch.queue_declare(q, durable=True)
    sizes = [10, 2 * 1024 * 1024, 20, 1024 * 1024, 30, 1024 * 1024 + 1]
    sent = [payload(s) for s in sizes]
    for i, data in enumerate(sent):
        props = pika.BasicProperties(
            delivery_mode=2, message_id=f"m{i}", content_type="x/y", expiration="60000"
        )
        ch.basic_publish("", q, data, props)
    got: list[tuple[str | None, str | None, bytes]] = []
    ch.basic_consume(
        q, lambda c, m, p, b: got.append((p.message_id, p.content_type, b)), auto_ack=True
    )
    assert drain(conn, lambda: len(got) == len(sent), timeout=30)
    assert [g[0] for g in got] == [f"m{i}" for i in range(len(sent))]
    assert all(g[1] == "x/y" for g in got)
    assert [g[2] for g in got] == sent


def test_empty_body_has_no_body_frame(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    c.publish(1, "", q, b"")
    c.publish(1, "", q, b"x")
    c.rpc(commands.Basic.Consume(queue=q, no_ack=True), commands.Basic.ConsumeOk)
    c.expect(commands.Basic.Deliver, channel=1)
    hdr = c.expect(header.ContentHeader, channel=1)
    assert hdr.body_size == 0
    # No (empty) body frame may follow: the next frame is the second delivery.
    c.expect(commands.Basic.Deliver, channel=1)
    hdr = c.expect(header.ContentHeader, channel=1)
    assert hdr.body_size == 1
    assert c.expect(pbody.ContentBody, channel=1).value == b"x"


def test_multiframe_publish_raw_small_frames(raw):
    """A client that negotiated a small frame_max sends many body frames."""
    c = raw()
    c.handshake(frame_max=4096)
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    data = payload(50_000)
    c.publish(1, "", q, data)  # 13 body frames of <= 4088 bytes
    c.send(commands.Basic.Get(queue=q, no_ack=True), 1)
    c.expect(commands.Basic.GetOk, channel=1)
    _, got = c.recv_content()
    assert got == data


# --------------------------------------------------------------------------- #
# Properties and headers
# --------------------------------------------------------------------------- #

HEADERS = {
    "str": "text",
    "unicode": "h\u00e9llo \u2713",
    "empty": "",
    "int": 42,
    "negative": -7,
    "int32_max": 2**31 - 1,
    "big": 2**40,
    "big_negative": -(2**40),
    "true": True,
    "false": False,
    "none": None,
    "nested": {"a": 1, "b": {"c": "d", "e": [1, 2]}},
    "list": [1, "two", True, None, [3, "four"], {"k": "v"}],
    "empty_list": [],
    "empty_dict": {},
    "bytes": b"\x00\xffraw\x80",
    "decimal": Decimal("3.14"),
    "datetime": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
}


def full_properties(user: str) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=HEADERS,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-\u00e9-1",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="e2e.type",
        user_id=user,  # RabbitMQ rejects a user_id other than the login
        app_id="e2e-app",
        cluster_id="cluster-x",
    )


PROPERTY_FIELDS = [
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
]


def assert_same_properties(got: pika.BasicProperties, sent: pika.BasicProperties) -> None:
    for field in PROPERTY_FIELDS:
        assert getattr(got, field) == getattr(sent, field), field
    for key, value in sent.headers.items():
        assert key in got.headers, key
        assert got.headers[key] == value, key
        assert isinstance(got.headers[key], type(value)), key
    assert set(got.headers) == set(sent.headers)


def test_properties_roundtrip_pika_get(channel, resources, address):
    q = resources.queue("props")
    channel.queue_declare(q)
    sent = full_properties(address.user)
    channel.basic_publish("", q, b"{}", sent)
    method, got, body = channel.basic_get(q, auto_ack=True)
    assert body == b"{}"
    assert_same_properties(got, sent)


def test_properties_roundtrip_pika_consume(conn, resources, address):
    ch = conn.channel()
    q = resources.queue("props")
    ch.queue_declare(q)
    sent = full_properties(address.user)
    ch.basic_publish("", q, b"{}", sent)
    received = []
    ch.basic_consume(q, lambda c, m, p, b: received.append(p), auto_ack=True)
    assert drain(conn, lambda: received)
    assert_same_properties(received[0], sent)


def test_no_properties_stay_empty(channel, resources):
    q = resources.queue("noprops")
    channel.queue_declare(q)
    channel.basic_publish("", q, b"x", pika.BasicProperties())
    _, got, _ = channel.basic_get(q, auto_ack=True)
    for field in PROPERTY_FIELDS:
        assert getattr(got, field) is None, field


def test_float_and_big_int_headers_py_amqp(address, resources):
    """py-amqp writes floats as 'd' (double) and big ints as 'L'."""
    c = amqp.Connection(
        host=f"{address.host}:{address.port}",
        userid=address.user,
        password=address.password,
        virtual_host=address.vhost,
        connect_timeout=OP_TIMEOUT,
        read_timeout=OP_TIMEOUT,
        write_timeout=OP_TIMEOUT,
    )
    c.connect()
    try:
        ch = c.channel()
        q = resources.queue("pyamqp")
        ch.queue_declare(q, auto_delete=False)
        headers = {
            "float": 0.1,
            "huge_float": 1e300,
            "neg_float": -2.5,
            "big": 2**40,
            "neg_big": -(2**40),
            "int": 7,
            "decimal": Decimal("12.345"),
            "datetime": datetime(2020, 5, 6, 7, 8, 9),
            "list": [1.5, "x"],
            "table": {"f": 0.25},
        }
        ch.basic_publish(amqp.Message(b"body", application_headers=headers), "", q)
        msg = None
        for _ in range(100):
            msg = ch.basic_get(q, no_ack=True)
            if msg is not None:
                break
        assert msg is not None
        assert msg.body == b"body"
        assert msg.headers == headers
    finally:
        c.collect()


async def test_headers_roundtrip_aiormq(amqp_url, resources):
    from pamqp.commands import Basic

    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        q = resources.queue("aio-props")
        await ch.queue_declare(q)
        headers = {
            "bytearray": bytearray(b"\x00\x01\xfe"),
            "float": 0.5,
            "small": 3,
            "int16": 3000,
            "int32": 70000,
            "int64": 2**40,
            "str": "s",
            "bool": True,
            "none": None,
            "list": [1, "a"],
            "table": {"k": "v"},
        }
        props = Basic.Properties(
            content_type="text/plain",
            headers=headers,
            delivery_mode=1,
            message_id="aio-1",
            correlation_id="c",
            priority=1,
        )
        await ch.basic_publish(b"hi", routing_key=q, properties=props)
        msg = await ch.basic_get(q, no_ack=True)
        assert msg.body == b"hi"
        got = msg.header.properties
        assert got.content_type == "text/plain"
        assert got.message_id == "aio-1"
        assert got.correlation_id == "c"
        assert got.priority == 1
        assert got.headers == headers
    finally:
        await conn.close()


# Byte-exact property round trip ------------------------------------------- #


def _sstr(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def _lstr(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _table(entries: list[tuple[str, bytes]]) -> bytes:
    return _lstr(b"".join(_sstr(k) + v for k, v in entries))


# Every field type RabbitMQ accepts, in an order no encoder would sort into.
RAW_HEADER_ENTRIES = [
    ("zz-longstr", b"S" + _lstr("h\u00e9llo".encode())),
    ("bool", b"t\x01"),
    ("int8", b"b" + struct.pack(">b", -5)),
    ("uint8", b"B\xfa"),
    ("int16", b"s" + struct.pack(">h", -300)),
    ("uint16", b"u" + struct.pack(">H", 60000)),
    ("int32", b"I" + struct.pack(">i", -70000)),
    ("uint32", b"i" + struct.pack(">I", 4_000_000_000)),
    ("int64", b"l" + struct.pack(">q", -(2**40))),
    ("int64-L", b"L" + struct.pack(">q", 2**40)),
    ("float32", b"f" + struct.pack(">f", 1.5)),
    ("double", b"d" + struct.pack(">d", 0.1)),
    ("decimal", b"D\x02" + struct.pack(">i", 12345)),
    ("bytes", b"x" + _lstr(b"\x00\xff\x80")),
    ("non-utf8-S", b"S" + _lstr(b"\xff\xfe")),
    ("array", b"A" + _lstr(b"I" + struct.pack(">i", 1) + b"S" + _lstr(b"a") + b"V")),
    ("timestamp", b"T" + struct.pack(">Q", 1_700_000_000)),
    ("table", b"F" + _table([("k", b"t\x00"), ("a", b"d" + struct.pack(">d", 2.5))])),
    ("void", b"V"),
    ("a-last", b"S" + _lstr(b"")),
]


def raw_property_bytes(user: str) -> tuple[int, bytes]:
    fields = [
        (15, _sstr("application/x-e2e")),
        (14, _sstr("gzip")),
        (13, _table(RAW_HEADER_ENTRIES)),
        (12, b"\x02"),
        (11, b"\x03"),
        (10, _sstr("corr")),
        (9, _sstr("reply")),
        (8, _sstr("60000")),
        (7, _sstr("mid")),
        (6, struct.pack(">Q", 1_600_000_000)),
        (5, _sstr("type")),
        (4, _sstr(user)),
        (3, _sstr("app")),
        (2, _sstr("cluster")),
    ]
    flags = 0
    for bit, _ in fields:
        flags |= 1 << bit
    return flags, b"".join(v for _, v in fields)


def test_properties_are_byte_exact(raw, address):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    flags, props = raw_property_bytes(address.user)
    header_payload = struct.pack(">HHQH", 60, 0, 3, flags) + props
    c.send(commands.Basic.Publish(exchange="", routing_key=q), 1)
    c.send_raw(struct.pack(">BHI", 2, 1, len(header_payload)) + header_payload + b"\xce")
    c.send(pbody.ContentBody(b"abc"), 1)
    c.send(commands.Basic.Get(queue=q, no_ack=True), 1)
    c.expect(commands.Basic.GetOk, channel=1)
    ftype, channel, got = c.recv_raw_frame()
    assert (ftype, channel) == (2, 1)
    assert got == header_payload
    ftype, channel, got_body = c.recv_raw_frame()
    assert (ftype, channel, got_body) == (3, 1, b"abc")


# --------------------------------------------------------------------------- #
# mandatory / immediate / missing exchange
# --------------------------------------------------------------------------- #


def test_mandatory_unroutable_return_then_ack_raw(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    props = commands.Basic.Properties(message_id="m-1", content_type="text/plain")
    c.publish(1, "", unique("nowhere"), b"returned", props, mandatory=True)
    c.publish(1, "", q, b"routed", mandatory=True)
    c.publish(1, "amq.direct", unique("nokey"), b"dropped", mandatory=False)

    ret = c.expect(commands.Basic.Return, channel=1)
    assert (ret.reply_code, ret.reply_text) == (312, "NO_ROUTE")
    assert ret.exchange == ""
    rprops, rbody = c.recv_content()
    assert rbody == b"returned"
    assert rprops.message_id == "m-1"
    assert rprops.content_type == "text/plain"
    # Then the confirms, in order; the return came before the first ack.
    acked: set[int] = set()
    while acked != {1, 2, 3}:
        _, value = c.recv()
        assert isinstance(value, commands.Basic.Ack), value
        if value.multiple:
            acked |= set(range(1, value.delivery_tag + 1))
        else:
            acked.add(value.delivery_tag)
        assert 1 in acked  # the returned message is confirmed first
    c.send(commands.Basic.Get(queue=q, no_ack=True), 1)
    c.expect(commands.Basic.GetOk)
    assert c.recv_content()[1] == b"routed"


def test_mandatory_unroutable_without_confirms_raw(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.publish(1, "amq.topic", "no.binding.here", b"r", mandatory=True)
    ret = c.expect(commands.Basic.Return, channel=1)
    assert (ret.reply_code, ret.reply_text) == (312, "NO_ROUTE")
    assert (ret.exchange, ret.routing_key) == ("amq.topic", "no.binding.here")
    assert c.recv_content()[1] == b"r"


def test_mandatory_unroutable_pika_confirm(channel, resources):
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        channel.basic_publish("", unique("nowhere"), b"x", mandatory=True)
    assert len(ei.value.messages) == 1
    assert ei.value.messages[0].method.reply_code == 312
    # Routable and non-mandatory unroutable publishes just get acked.
    q = resources.queue("routable")
    channel.queue_declare(q)
    channel.basic_publish("", q, b"ok", mandatory=True)
    channel.basic_publish("", unique("nowhere"), b"dropped", mandatory=False)
    assert channel.basic_get(q, auto_ack=True)[2] == b"ok"


def test_mandatory_return_pika_callback(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m.reply_code, p.message_id, b)))
    ch.basic_publish(
        "", unique("nowhere"), b"back", pika.BasicProperties(message_id="r1"), mandatory=True
    )
    assert drain(conn, lambda: returned)
    assert returned == [(312, "r1", b"back")]


async def test_mandatory_unroutable_aiormq_return_before_ack(amqp_url):
    """aiormq resolves the publish with PublishError only if the return arrives
    before the ack for the same delivery tag (RabbitMQ's order)."""
    import aiormq

    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        assert ch.publisher_confirms
        with pytest.raises(aiormq.exceptions.PublishError) as ei:
            await asyncio.wait_for(
                ch.basic_publish(b"x", routing_key=unique("nowhere"), mandatory=True), OP_TIMEOUT
            )
        assert ei.value.frame.reply_code == 312
        # With on_return_raises=False the callback sees the message.
        ch2 = await conn.channel(on_return_raises=False)
        seen = []
        ch2.on_return_callbacks.add(lambda m: seen.append(m.body))
        result = await asyncio.wait_for(
            ch2.basic_publish(b"y", routing_key=unique("nowhere"), mandatory=True), OP_TIMEOUT
        )
        assert result.body == b"y"
        assert seen == [b"y"]
    finally:
        await conn.close()


def test_immediate_closes_connection_540(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Publish(exchange="", routing_key="x", immediate=True), 1)
    c.send(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
    c.send(pbody.ContentBody(b"x"), 1)
    close = c.expect(commands.Connection.Close, channel=0)
    assert close.reply_code == 540
    assert close.reply_text == "NOT_IMPLEMENTED - immediate=true"
    assert (close.class_id, close.method_id) == (60, 40)
    c.send(commands.Connection.CloseOk())
    with pytest.raises(RawClosed):
        c.recv()


def test_publish_to_missing_exchange_404(conn):
    ch = conn.channel()
    name = unique("no-exchange")
    err = channel_error(ch, ch.basic_publish, name, "k", b"x")
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{name}' in vhost '/'"
    conn.channel().queue_declare("", exclusive=True)


def test_publish_to_missing_exchange_raw_ids(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.publish(1, "e2e.no-such-exchange", "k", b"x")
    close = c.expect(commands.Channel.Close, channel=1)
    assert close.reply_code == 404
    assert (close.class_id, close.method_id) == (60, 40)
    c.send(commands.Channel.CloseOk(), 1)
    c.open_channel(1)  # same id usable again


# --------------------------------------------------------------------------- #
# Publisher confirms
# --------------------------------------------------------------------------- #


def test_confirms_cover_every_publish_raw(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk).queue
    c.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    n = 25
    for i in range(n):
        c.publish(1, "", q, str(i).encode())
    confirmed: list[int] = []
    while len(confirmed) < n:
        _, value = c.recv()
        assert isinstance(value, commands.Basic.Ack), value
        upto = value.delivery_tag
        start = confirmed[-1] + 1 if confirmed else 1
        if value.multiple:
            confirmed.extend(range(start, upto + 1))
        else:
            assert upto == start, "confirms arrive in publish order"
            confirmed.append(upto)
    assert confirmed == list(range(1, n + 1))
    # Confirm sequence numbers are separate from delivery tags.
    c.send(commands.Basic.Get(queue=q, no_ack=False), 1)
    ok = c.expect(commands.Basic.GetOk)
    assert ok.delivery_tag == 1
    assert ok.message_count == n - 1


def test_confirm_select_nowait_raw(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Confirm.Select(nowait=True), 1)
    c.publish(1, "", unique("nowhere"), b"x")
    ack = c.expect(commands.Basic.Ack, channel=1)
    assert ack.delivery_tag == 1


def test_pika_confirm_delivery(channel, resources):
    q = resources.queue("confirm")
    channel.queue_declare(q)
    channel.confirm_delivery()
    for i in range(20):
        channel.basic_publish("", q, str(i).encode())
    # With confirms, everything is visible once the publishes returned.
    assert channel.queue_declare(q, passive=True).method.message_count == 20


async def test_aiormq_publisher_confirms(amqp_url, resources):
    from pamqp.commands import Basic

    conn = await aiormq_connect(amqp_url)
    try:
        ch = await conn.channel()
        q = resources.queue("aio-confirm")
        await ch.queue_declare(q)
        results = await asyncio.wait_for(
            asyncio.gather(*(ch.basic_publish(str(i).encode(), routing_key=q) for i in range(50))),
            OP_TIMEOUT * 2,
        )
        assert all(isinstance(r, Basic.Ack) for r in results)
        ok = await ch.queue_declare(q, passive=True)
        assert ok.message_count == 50
    finally:
        await conn.close()


# --------------------------------------------------------------------------- #
# Transactions
# --------------------------------------------------------------------------- #


def test_tx_commit_makes_publishes_visible(conn, resources):
    q = resources.queue("tx")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.tx_select()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    other = conn.channel()
    assert other.basic_get(q, auto_ack=True)[0] is None
    ch.tx_commit()
    assert [b for _, _, b in get_all(other, q)] == [b"0", b"1", b"2"]


def test_tx_rollback_discards_publishes(conn, resources):
    q = resources.queue("tx-rollback")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"discarded-1")
    ch.basic_publish("", q, b"discarded-2")
    ch.tx_rollback()
    ch.tx_commit()  # nothing left to commit
    ch.basic_publish("", q, b"kept")
    other = conn.channel()
    assert other.basic_get(q, auto_ack=True)[0] is None
    ch.tx_commit()
    assert [b for _, _, b in get_all(other, q)] == [b"kept"]


def test_tx_acks_apply_on_commit(conn, resources):
    q = resources.queue("tx-ack")
    pub = conn.channel()
    pub.queue_declare(q)
    pub.confirm_delivery()
    for i in range(2):
        pub.basic_publish("", q, str(i).encode())
    ch = conn.channel()
    ch.tx_select()
    m1, _, _ = ch.basic_get(q)
    m2, _, _ = ch.basic_get(q)
    ch.basic_ack(m1.delivery_tag)
    ch.tx_rollback()  # the ack is discarded; the message stays unacked
    ch.basic_ack(m2.delivery_tag)
    ch.tx_commit()
    ch.close()  # m1 was never acked: it comes back
    check = conn.channel()
    wait_queue_count(check, q, 1)
    got = get_all(check, q)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"0", True)]


def test_tx_commit_without_select_406(conn):
    ch = conn.channel()
    err = channel_error(ch, ch.tx_commit)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - channel is not transactional"
    ch = conn.channel()
    err = channel_error(ch, ch.tx_rollback)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - channel is not transactional"


def test_tx_and_confirm_are_exclusive(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    err = channel_error(ch, ch.tx_select)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
    ch = conn.channel()
    ch.tx_select()
    err = channel_error(ch, ch.confirm_delivery)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
