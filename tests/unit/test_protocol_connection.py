"""The connection's state machine over a fake transport and a fake broker: exact bytes.

Expected frames are literal bytes or pamqp's own encoding (independent of ours)."""

from __future__ import annotations

import asyncio

from pamqp import body, commands, common, header
from pamqp import frame as pamqp_frame

from cavalcade import __version__
from cavalcade.errors import FrameError, NotFound
from cavalcade.protocol.closing import close_frame
from cavalcade.protocol.connection import READ_SLICE
from cavalcade.protocol.flow import BLOCKED, WRITE_HIGH, WRITE_LOW, FlowControl
from cavalcade.protocol.framing import PROTOCOL_HEADER
from cavalcade.protocol.handshake import CAPABILITIES
from cavalcade.protocol.link import ConnectionState
from cavalcade.settings import Settings

from .fakes import Client, FakeBroker, FakeTransport, method_bytes, until


def _close(code: int, text: str, class_id: int = 0, method_id: int = 0) -> bytes:
    return method_bytes(
        0,
        commands.Connection.Close(
            reply_code=code, reply_text=text, class_id=class_id, method_id=method_id
        ),
    )


async def test_handshake() -> None:
    c = Client(Settings(heartbeat=60))
    c.send(PROTOCOL_HEADER)
    start = c.transport.take()
    assert start[:7] == b"\x01\x00\x00" + len(start[7:-1]).to_bytes(4, "big")
    assert start[7:13] == b"\x00\x0a\x00\x0a\x00\x09"  # connection.start, version 0-9
    assert start.endswith(b"\x00\x00\x00\x0ePLAIN AMQPLAIN\x00\x00\x00\x05en_US\xce")
    server_properties = commands.Connection.Start()
    server_properties.unmarshal(start[11:-1])
    props = server_properties.server_properties
    assert props["product"] == "Cavalcade" and props["version"] == __version__
    assert props["capabilities"] == CAPABILITIES

    c.send_method(
        0,
        commands.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
        ),
    )
    # connection.tune: channel_max 2047, frame_max 131072, heartbeat 60
    assert await c.reply() == bytes.fromhex("0100000000000c000a001e07ff00020000003cce")
    c.send_method(0, commands.Connection.TuneOk(channel_max=100, frame_max=8192, heartbeat=0))
    assert c.transport.take() == b""
    c.send_method(0, commands.Connection.Open(virtual_host="/"))
    # connection.open-ok (known_hosts "")
    assert await c.reply() == bytes.fromhex("01000000000005000a002900ce")
    assert c.conn._state is ConnectionState.OPENED
    assert (c.conn.frame_max, c.conn.channel_max, c.conn.heartbeat) == (8192, 100, 0)
    assert [s.user for s in c.broker.sessions_open] == ["guest"]
    await c.close()
    assert c.broker.sessions_closed == c.broker.sessions_open


async def test_refused_login_without_close_capability_closes_the_socket() -> None:
    c = Client()
    c.send(PROTOCOL_HEADER)
    c.transport.take()
    c.send_method(
        0,
        commands.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0x"),
    )
    await until(lambda: c.transport.closing)
    assert c.transport.take() == b""
    await c.close()


async def test_refused_login_with_close_capability_gets_403() -> None:
    c = Client()
    c.send(PROTOCOL_HEADER)
    c.transport.take()
    caps: common.FieldTable = {"capabilities": {"authentication_failure_close": True}}
    c.send_method(
        0,
        commands.Connection.StartOk(client_properties=caps, mechanism="PLAIN", response="\0u\0x"),
    )
    assert await c.reply() == _close(
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
        "For details see the broker logfile.",
        10,
        11,
    )
    await c.close()


async def test_bad_protocol_header_is_answered_with_ours() -> None:
    c = Client()
    c.send(b"AMQP\x01\x01\x00\x0a")
    assert c.transport.take() == b"AMQP\x00\x00\x09\x01"
    assert c.transport.closing
    await c.close()


async def test_a_header_that_cannot_become_amqp_is_refused_early() -> None:
    c = Client()
    c.send(b"GET ")
    assert c.transport.take() == PROTOCOL_HEADER
    assert c.transport.closing
    await c.close()


async def test_header_split_over_reads() -> None:
    c = Client()
    c.send(PROTOCOL_HEADER[:3])
    assert c.transport.take() == b""
    c.send(PROTOCOL_HEADER[3:])
    assert c.transport.take()[7:11] == b"\x00\x0a\x00\x0a"
    await c.close()


async def test_client_heartbeat_is_accepted_silently() -> None:
    c = Client()
    await c.handshake()
    c.send(bytes.fromhex("08000000000000ce"))
    assert c.transport.take() == b""
    assert not c.transport.closing
    await c.close()


async def test_heartbeat_on_a_channel_is_a_connection_error() -> None:
    c = Client()
    await c.handshake()
    c.send(bytes.fromhex("08000100000000ce"))
    assert c.transport.take() == _close(505, "UNEXPECTED_FRAME - heartbeat frame on channel 1")
    await c.close()


async def test_server_sends_heartbeats() -> None:
    c = Client()
    await c.handshake(heartbeat=1)
    # The heartbeat task ticks every 0.5 s; a few ticks at most (no assertion on timing).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not c.transport.written and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert c.transport.take() == bytes.fromhex("08000000000000ce")
    await c.close()


async def test_unknown_method_is_540() -> None:
    c = Client()
    await c.handshake()
    await c.open_channel(1)
    c.send(bytes.fromhex("01000100000004003c03e7ce"))  # class 60, method 999
    assert c.transport.take() == _close(540, "NOT_IMPLEMENTED - unknown method 60/999", 60, 999)
    assert c.conn._state is ConnectionState.CLOSING
    await c.close()


async def test_frame_too_large_is_501() -> None:
    c = Client()
    await c.handshake(frame_max=4096)
    await c.open_channel(1)
    c.send(b"\x03\x00\x01\x00\x00\x13\x88")  # a body frame of 5000 octets announced
    assert c.transport.take() == _close(
        501, "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,5000,4088}"
    )
    await c.close()


async def test_channel_frame_before_open_is_504() -> None:
    c = Client()
    c.send(PROTOCOL_HEADER)
    c.transport.take()
    c.send_method(1, commands.Channel.Open())
    assert c.transport.take() == _close(
        504, "CHANNEL_ERROR - channel frame before the connection is open"
    )
    await c.close()


async def test_client_close_handshake() -> None:
    c = Client()
    await c.handshake()
    await c.open_channel(1)
    c.send_method(
        0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    )
    # connection.close-ok, then the socket is closed
    assert await c.reply() == bytes.fromhex("01000000000004000a0033ce")
    await until(lambda: c.transport.closing)
    await until(lambda: not c.registry)
    assert c.broker.sessions_closed == c.broker.sessions_open
    assert c.conn.channels == {}


async def test_server_close_waits_for_close_ok_and_drops_the_rest() -> None:
    c = Client()
    await c.handshake()
    await c.open_channel(1)
    c.conn.close_forced("broker shutdown")
    assert c.transport.take() == _close(320, "CONNECTION_FORCED - broker shutdown")
    c.send_method(1, commands.Basic.Qos(prefetch_count=1))  # dropped while closing
    assert c.transport.take() == b""
    assert not c.transport.closing
    c.send_method(0, commands.Connection.CloseOk())
    assert c.transport.closing
    await until(lambda: not c.registry)


async def test_close_crossing_the_servers_close_gets_close_ok() -> None:
    c = Client()
    await c.handshake()
    c.conn.close_forced("going away")
    c.transport.take()
    c.send_method(
        0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    )
    assert c.transport.take() == bytes.fromhex("01000000000004000a0033ce")
    assert c.transport.closing
    await until(lambda: not c.registry)


async def test_too_many_channels_is_530() -> None:
    c = Client()
    c.send(PROTOCOL_HEADER)
    c.transport.take()
    c.send_method(
        0,
        commands.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
        ),
    )
    await c.reply()
    c.send_method(0, commands.Connection.TuneOk(channel_max=1, frame_max=131072, heartbeat=0))
    c.send_method(0, commands.Connection.Open(virtual_host="/"))
    await c.reply()
    await c.open_channel(1)
    c.send_method(2, commands.Channel.Open())
    assert c.transport.take() == _close(
        530,
        "NOT_ALLOWED - number of channels opened (1) has reached the negotiated channel_max (1)",
    )
    await c.close()


async def test_blocked_publisher_is_told_and_paused() -> None:
    c = Client()
    await c.handshake()
    c.conn.blocked_notify = True
    await c.open_channel(1)
    c.send_method(1, commands.Basic.Publish(exchange="", routing_key="q"))
    c.conn.set_blocked(True)
    assert c.transport.take() == method_bytes(
        0, commands.Connection.Blocked(reason="publish backlog: database unavailable")
    )
    assert not c.transport.reading and c.conn.flow is not None and c.conn.flow.blocked
    c.conn.set_blocked(False)
    assert c.transport.take() == method_bytes(0, commands.Connection.Unblocked())
    assert c.transport.reading
    await c.close()


def test_close_frame_soft_on_a_channel_closes_the_channel() -> None:
    closing = close_frame(NotFound("no queue 'q' in vhost '/'", 50, 10), 3)
    assert not closing.closes_connection
    assert closing.encode() == method_bytes(
        3,
        commands.Channel.Close(
            reply_code=404,
            reply_text="NOT_FOUND - no queue 'q' in vhost '/'",
            class_id=50,
            method_id=10,
        ),
    )


def test_close_frame_soft_on_channel_0_escalates_to_503() -> None:
    closing = close_frame(NotFound("no such thing"), 0)
    assert closing.closes_connection
    assert closing.encode() == _close(503, "COMMAND_INVALID - no such thing")


def test_close_frame_hard_closes_the_connection_and_hides_internal_errors() -> None:
    assert close_frame(FrameError("bad", 60, 40), 5).encode() == _close(
        501, "FRAME_ERROR - bad", 60, 40
    )
    assert close_frame(ValueError("secret path"), 5).encode() == _close(
        541, "INTERNAL_ERROR - internal error"
    )


def test_flow_control_resumes_when_the_last_reason_goes() -> None:
    t = FakeTransport()
    flow = FlowControl(t)
    assert t.limits == (WRITE_HIGH, WRITE_LOW)
    flow.pause_reading(1)
    flow.pause_reading(BLOCKED)
    assert (t.pauses, t.reading, flow.blocked) == (1, False, True)
    assert not flow.resume_reading(BLOCKED)
    assert not t.reading and not flow.blocked
    assert flow.resume_reading(1)
    assert t.reading
    flow.closed = True
    flow.pause_reading(2)
    assert not flow.resume_reading(2) and not t.reading


async def test_flow_control_drain_waits_for_resume_writing() -> None:
    flow = FlowControl(FakeTransport())
    flow.pause_writing()
    waiter = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)
    assert flow.write_paused and not waiter.done()
    flow.resume_writing()
    await waiter
    assert not flow.write_paused


async def test_a_large_read_is_handled_a_slice_per_turn_and_others_go_between() -> None:
    """A publisher's read of many frames is handled READ_SLICE octets per turn of the
    event loop, its socket unread meanwhile: another connection's frames that come in
    the meantime are handled before the rest of it (a consumer's acks, say)."""

    def publish(text: bytes) -> bytes:
        out = method_bytes(1, commands.Basic.Publish(exchange="", routing_key="q"))
        out += pamqp_frame.marshal(
            header.ContentHeader(0, len(text), commands.Basic.Properties()), 1
        )
        return bytes(out + pamqp_frame.marshal(body.ContentBody(text), 1))

    broker = FakeBroker()
    a, b = Client(broker=broker), Client(broker=broker)
    for c in (a, b):
        await c.handshake()
        await c.open_channel(1)
    await asyncio.sleep(0)  # the channel tasks wait on their inboxes: publishes go inline
    many = b"".join(publish(b"a%03d" % i + b"x" * 200) for i in range(200))
    assert len(many) > 4 * READ_SLICE
    a.send(many)
    first = len(broker.published)
    assert 0 < first < 200
    assert not a.transport.reading  # the rest waits: its socket is not read meanwhile
    b.send(publish(b"b"))
    await until(lambda: a.transport.reading)
    bodies = [p[3] for p in broker.published]
    assert [x[:4] for x in bodies if x[:1] == b"a"] == [b"a%03d" % i for i in range(200)]
    assert bodies.index(b"b") < len(bodies) - 1  # b's publish went between a's slices
    await a.close()
    await b.close()


async def test_an_error_in_a_later_slice_still_reads_the_close_ok() -> None:
    """A bad frame in the second slice of a read: connection.close goes out and the
    socket is read again, so the client's close-ok ends the connection at once."""
    c = Client()
    await c.handshake()
    await c.open_channel(1)
    many = method_bytes(1, commands.Basic.Qos(prefetch_count=1)) * (2 * READ_SLICE // 20)
    bad = b"\x05\x00\x00\x00\x00\x00\x00\xce"  # no such frame type
    c.send(many + bad)
    assert not c.transport.reading
    await until(lambda: c.conn._state is ConnectionState.CLOSING)
    assert c.transport.reading
    await c.close()
