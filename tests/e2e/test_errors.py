"""Errors the RabbitMQ way (codes, texts, channel vs connection), and
robustness against broken or hostile clients (raw sockets)."""

from __future__ import annotations

import socket
import struct
import time

import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands, frame, header

from .conftest import (
    OP_TIMEOUT,
    PROTOCOL_HEADER,
    RawClosed,
    channel_error,
    connect,
    connection_error,
    safe_close,
    unique,
)

pytestmark = pytest.mark.timeout(60)


def method_frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def expect_connection_close(c, code: int, prefix: str, ids: tuple[int, int] | None = None):
    close = c.expect(commands.Connection.Close, channel=0)
    assert close.reply_code == code, close.reply_text
    assert close.reply_text.startswith(prefix), close.reply_text
    if ids is not None:
        assert (close.class_id, close.method_id) == ids
    c.send(commands.Connection.CloseOk())
    return close


def still_works(amqp_url: str) -> None:
    c = connect(amqp_url)
    try:
        c.channel().queue_declare("", exclusive=True)
    finally:
        safe_close(c)


# --------------------------------------------------------------------------- #
# Channel errors leave the connection usable
# --------------------------------------------------------------------------- #


def test_channel_error_keeps_connection_and_other_channels(conn, resources):
    q = resources.queue("survivor")
    ch_ok = conn.channel()
    ch_ok.queue_declare(q)
    ch_bad = conn.channel()
    name = unique("missing")
    err = channel_error(ch_bad, ch_bad.queue_declare, name, passive=True)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"
    assert ch_bad.is_closed
    assert conn.is_open and ch_ok.is_open
    ch_ok.basic_publish("", q, b"still here")
    assert ch_ok.basic_get(q, auto_ack=True)[2] == b"still here"
    conn.channel().queue_declare("", exclusive=True)


def test_frames_after_channel_close_are_dropped_until_close_ok(raw):
    """After the server's channel.close, further frames the client had in
    flight on that channel are ignored; close-ok frees the id for reuse."""
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.publish(1, "e2e.no-such-exchange", "k", b"1")
    c.publish(1, "e2e.no-such-exchange", "k", b"2")  # in flight, ignored
    c.send(commands.Queue.Declare(queue="", exclusive=True), 1)  # ignored
    close = c.expect(commands.Channel.Close, channel=1)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no exchange 'e2e.no-such-exchange' in vhost '/'"
    c.send(commands.Channel.CloseOk(), 1)
    c.open_channel(2)
    ok = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk, 2)
    assert ok.queue
    c.open_channel(1)
    # Nothing else arrived for channel 1 in between.
    assert [type(f).__name__ for ch, f in c.received if ch == 1] == [
        "OpenOk",
        "Close",
        "OpenOk",
    ]


def test_connection_error_closes_every_channel(amqp_url):
    c = connect(amqp_url)
    try:
        ch1, ch2 = c.channel(), c.channel()
        err = connection_error(ch2, ch2.exchange_declare, unique("bogus"), "bogus")
        assert err.reply_code == 503
        assert not c.is_open
        assert ch1.is_closed
    finally:
        safe_close(c)
    still_works(amqp_url)


def test_user_id_mismatch_406(conn):
    ch = conn.channel()
    err = channel_error(
        ch, ch.basic_publish, "", "x", b"x", pika.BasicProperties(user_id="e2e-not-me")
    )
    assert err.reply_code == 406
    assert err.reply_text.startswith(
        "PRECONDITION_FAILED - user_id property set to 'e2e-not-me' but authenticated user was"
    )


# --------------------------------------------------------------------------- #
# Protocol header
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"AMQP\x00\x00\x08\x00",  # 0-8
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x00\x00\x0a\x00",  # 0-10
        b"AMQP\x00\x01\x00\x00",  # 1.0
        b"\x00" * 8,
    ],
    ids=["http", "0-8", "0-9-2", "0-10", "1.0", "zeros"],
)
def test_bad_protocol_header_gets_our_header_and_close(raw, data):
    c = raw()
    c.send_raw(data)
    assert c.read_all_until_eof() == PROTOCOL_HEADER


def test_protocol_header_in_pieces(raw):
    c = raw()
    for byte in PROTOCOL_HEADER:
        c.send_raw(bytes([byte]))
        time.sleep(0.01)
    c.expect(commands.Connection.Start, channel=0)


# --------------------------------------------------------------------------- #
# Framing errors (connection errors)
# --------------------------------------------------------------------------- #


def test_bad_frame_end_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    data = frame.marshal(commands.Queue.Declare(queue="", exclusive=True), 1)
    c.send_raw(data[:-1] + b"\x00")
    # RabbitMQ: "FRAME_ERROR - type 1, all octets = <<...>>: {invalid_frame_end_marker,0}"
    expect_connection_close(c, 501, "FRAME_ERROR - ", (0, 0))


def test_unknown_frame_type_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send_raw(struct.pack(">BHI", 9, 1, 1) + b"x" + b"\xce")
    # RabbitMQ: "FRAME_ERROR - type 9, all octets = <<\"x\">>: unknown_frame"
    expect_connection_close(c, 501, "FRAME_ERROR - ", (0, 0))


def test_frame_larger_than_frame_max_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Publish(exchange="", routing_key="x"), 1)
    c.send(header.ContentHeader(0, 200_000, commands.Basic.Properties()), 1)
    c.send_raw(frame.marshal(pbody.ContentBody(b"x" * 200_000), 1))
    # RabbitMQ: "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,200000,131064}"
    expect_connection_close(c, 501, "FRAME_ERROR - ", (0, 0))


def test_truncated_method_arguments_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send_raw(method_frame(1, 50, 10, b"\x00"))  # queue.declare with 1 byte of args
    # RabbitMQ: "FRAME_ERROR - cannot decode <<0>>"
    expect_connection_close(c, 501, "FRAME_ERROR - ", (50, 10))


@pytest.mark.parametrize("class_id,method_id", [(60, 999), (99, 1)], ids=["method", "class"])
def test_unknown_method(raw, broker_name, class_id, method_id):
    """RabbitMQ 3.10 drops the socket without a connection.close here;
    Cavalcade answers the way the spec (and STYLE.md) says: 540 NOT_IMPLEMENTED."""
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send_raw(method_frame(1, class_id, method_id))
    try:
        _, value = c.recv()
    except RawClosed:
        assert broker_name == "rabbitmq", "expected connection.close 540 before the socket closed"
        return
    assert isinstance(value, commands.Connection.Close), value
    assert value.reply_code == 540
    assert value.reply_text.startswith("NOT_IMPLEMENTED")


def test_body_frame_without_header_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(pbody.ContentBody(b"x"), 1)
    # RabbitMQ: "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    expect_connection_close(c, 505, "UNEXPECTED_FRAME - ", (0, 0))


def test_method_instead_of_content_header_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Publish(exchange="", routing_key="x"), 1)
    c.send(commands.Basic.Qos(prefetch_count=1), 1)
    # RabbitMQ: "UNEXPECTED_FRAME - expected content header for class 60,
    # got non content header frame instead"
    expect_connection_close(c, 505, "UNEXPECTED_FRAME - ", (60, 40))


def test_content_header_for_wrong_class_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Publish(exchange="", routing_key="x"), 1)
    payload = struct.pack(">HHQH", 50, 0, 1, 0)
    c.send_raw(struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce")
    # RabbitMQ: "UNEXPECTED_FRAME - expected content header for class 60,
    # got one for class 50 instead"
    expect_connection_close(c, 505, "UNEXPECTED_FRAME - ", (60, 40))


def test_heartbeat_on_nonzero_channel_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send_raw(b"\x08\x00\x01\x00\x00\x00\x00\xce")
    # RabbitMQ: "UNEXPECTED_FRAME - type 8, all octets = <<>>"
    expect_connection_close(c, 505, "UNEXPECTED_FRAME - ", (0, 0))


def test_method_on_unopened_channel_504(raw):
    c = raw()
    c.handshake()
    c.send(commands.Queue.Declare(queue="", exclusive=True), 5)
    expect_connection_close(c, 504, "CHANNEL_ERROR - expected 'channel.open'", (50, 10))


def test_second_channel_open_504(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Channel.Open(), 1)
    expect_connection_close(c, 504, "CHANNEL_ERROR - second 'channel.open' seen", (20, 10))


def test_channel_method_on_channel_zero_504(raw):
    c = raw()
    c.handshake()
    c.send(commands.Queue.Declare(queue="", exclusive=True), 0)
    # RabbitMQ: "CHANNEL_ERROR - unexpected method in connection state running"
    expect_connection_close(c, 504, "CHANNEL_ERROR - ", (50, 10))


# --------------------------------------------------------------------------- #
# Message size limit
# --------------------------------------------------------------------------- #

MAX_MESSAGE = 128 * 1024 * 1024  # RabbitMQ 3.10 default and Cavalcade's limit


def test_oversized_body_announced_in_header_406(raw, broker_name):
    """Cavalcade rejects on the content header, without waiting for a body."""
    if broker_name == "rabbitmq":
        pytest.skip("RabbitMQ only checks max_message_size once the whole body arrived")
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Basic.Publish(exchange="", routing_key="x"), 1)
    c.send(header.ContentHeader(0, 200 * 1024 * 1024, commands.Basic.Properties()), 1)
    close = c.expect(commands.Channel.Close, channel=1)
    assert close.reply_code == 406
    assert close.reply_text == (
        f"PRECONDITION_FAILED - message size {200 * 1024 * 1024} is larger than "
        f"configured max size {MAX_MESSAGE}"
    )
    assert (close.class_id, close.method_id) == (60, 40)
    c.send(commands.Channel.CloseOk(), 1)
    c.open_channel(1)


def test_body_over_max_message_size_406(raw):
    """128 MiB + 1 byte: RabbitMQ answers after the body, Cavalcade may answer
    earlier and must then ignore the rest of the body frames."""
    c = raw(timeout=30)
    c.handshake()
    c.open_channel(1)
    size = MAX_MESSAGE + 1
    c.send(commands.Basic.Publish(exchange="", routing_key="x"), 1)
    c.send(header.ContentHeader(0, size, commands.Basic.Properties()), 1)
    chunk = c.frame_max - 8
    piece = frame.marshal(pbody.ContentBody(b"\0" * chunk), 1)
    sent = 0
    batch = []
    while sent < size:
        n = min(chunk, size - sent)
        batch.append(piece if n == chunk else frame.marshal(pbody.ContentBody(b"\0" * n), 1))
        sent += n
        if len(batch) == 64 or sent == size:
            c.send_raw(b"".join(batch))
            batch = []
    close = c.expect(commands.Channel.Close, channel=1, timeout=30)
    assert close.reply_code == 406
    assert close.reply_text == (
        f"PRECONDITION_FAILED - message size {size} is larger than configured max size "
        f"{MAX_MESSAGE}"
    )
    c.send(commands.Channel.CloseOk(), 1)
    c.open_channel(2)
    c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk, 2)


# --------------------------------------------------------------------------- #
# Hostile clients
# --------------------------------------------------------------------------- #


def test_half_open_sockets_do_not_block_others(address, amqp_url, resources):
    idle: list[socket.socket] = []
    try:
        for _ in range(50):
            idle.append(socket.create_connection((address.host, address.port), timeout=OP_TIMEOUT))
        # Some send half a protocol header and stop.
        for s in idle[:10]:
            s.sendall(b"AMQ")
        c = connect(amqp_url)
        try:
            ch = c.channel()
            q = resources.queue("half-open")
            ch.queue_declare(q)
            ch.basic_publish("", q, b"works")
            assert ch.basic_get(q, auto_ack=True)[2] == b"works"
        finally:
            safe_close(c)
    finally:
        for s in idle:
            s.close()


def test_client_vanishing_mid_handshake(address, amqp_url):
    for stage in range(3):
        c = socket.create_connection((address.host, address.port), timeout=OP_TIMEOUT)
        if stage >= 1:
            c.sendall(PROTOCOL_HEADER)
        if stage >= 2:
            c.recv(4096)
        c.close()
    still_works(amqp_url)


def test_oversized_header_and_body_in_one_write_closes_only_the_channel(raw, broker_name):
    """Header and the first body frame in one socket write: still 406 on the channel."""
    if broker_name == "rabbitmq":
        pytest.skip("RabbitMQ waits for the whole body before refusing it")
    c = raw()
    c.handshake()
    c.open_channel(1)
    data = frame.marshal(commands.Basic.Publish(exchange="", routing_key="x"), 1)
    data += frame.marshal(
        header.ContentHeader(0, 200 * 1024 * 1024, commands.Basic.Properties()), 1
    )
    data += frame.marshal(pbody.ContentBody(b"x" * 100_000), 1)
    c.send_raw(data)
    _, close = c.recv()
    assert isinstance(close, commands.Channel.Close), close
    assert close.reply_code == 406
    c.open_channel(2)  # the connection lives on
