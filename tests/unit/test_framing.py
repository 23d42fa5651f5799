"""Framing: splitting the stream, frame-end and size checks, outgoing content frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pframe

from cavalcade.errors import FrameError
from cavalcade.protocol.framing import (
    SLICED_BODY,
    FrameReader,
    content_frames,
    decode_method,
    deliver_frames,
    deliver_payload,
    encode_method,
    get_ok_payload,
    parse_content_header,
    return_payload,
    short_str,
)


def test_frames_split_across_reads() -> None:
    data = encode_method(1, commands.Basic.Qos(prefetch_count=5)) + encode_method(
        2, commands.Channel.Open()
    )
    reader = FrameReader(131072)
    got = []
    for i in range(len(data)):
        got += list(reader.feed(data[i : i + 1]))
    assert [(f.type, f.channel) for f in got] == [(1, 1), (1, 2)]
    qos = decode_method(got[0].payload)
    assert isinstance(qos, commands.Basic.Qos) and qos.prefetch_count == 5


_STREAM = b"".join(
    encode_method(1, commands.Basic.Qos(prefetch_count=5))
    + bytes([3, 0, n % 3, 0, 0, 0, n]) + bytes([n]) * n + b"\xce"
    for n in range(0, 40, 3)
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=12))
def test_any_split_of_a_stream_gives_the_same_frames(cuts: list[int]) -> None:
    """Frames come out whole and in order however the reads split the stream (sliced
    from a read itself, or from the bytes held over from earlier reads)."""
    whole = list(FrameReader(131072).feed(_STREAM))
    reader = FrameReader(131072)
    got = []
    bounds = [0, *sorted(cuts), len(_STREAM)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        got += list(reader.feed(_STREAM[start:end]))
    assert got == whole and len(whole) == 2 * 14
    assert all(type(f.payload) is bytes for f in got)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=12),
    st.integers(min_value=0, max_value=64),
)
def test_a_budget_holds_the_rest_for_later_turns(cuts: list[int], budget: int) -> None:
    """With a budget per feed (the connection's READ_SLICE), each feed stops at the first
    frame begun past it and holds the rest; feeding nothing until no complete frame is
    held gives the same frames in the same order, and every feed yields at least one
    frame while one is complete."""
    whole = list(FrameReader(131072).feed(_STREAM))
    reader = FrameReader(131072)
    got = []
    bounds = [0, *sorted(cuts), len(_STREAM)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        got += list(reader.feed(_STREAM[start:end], budget))
        while reader.holds_frame():
            turn = list(reader.feed(b"", budget))
            assert turn
            got += turn
    assert got == whole
    assert not reader.holds_frame()


def test_bad_frame_end() -> None:
    data = bytearray(encode_method(1, commands.Channel.Open()))
    data[-1] = 0
    with pytest.raises(FrameError):
        list(FrameReader(131072).feed(bytes(data)))


def test_frame_too_large() -> None:
    head = struct.pack(">BHI", 3, 1, 200000)
    with pytest.raises(FrameError):
        list(FrameReader(131072).feed(head))


def test_encode_method_matches_pamqp() -> None:
    for value in (
        commands.Queue.DeclareOk(queue="q", message_count=3, consumer_count=1),
        commands.Basic.Nack(delivery_tag=5, multiple=True, requeue=False),
        commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60),
        commands.Basic.Cancel(consumer_tag="t", nowait=True),
    ):
        assert encode_method(3, value) == pframe.marshal(value, 3)


def test_encode_method_accepts_celery_queue_names() -> None:
    raw = encode_method(
        1,
        commands.Queue.DeclareOk(queue="w1@host.celery.pidbox", message_count=0, consumer_count=0),
    )
    _, _, value = pframe.unmarshal(raw)
    assert value.queue == "w1@host.celery.pidbox"


def test_hand_built_payloads_decode_with_pamqp() -> None:
    d = decode_method(deliver_payload("ctag", 7, True, "ex", "rk"))
    assert isinstance(d, commands.Basic.Deliver)
    assert (d.consumer_tag, d.delivery_tag, d.redelivered, d.exchange, d.routing_key) == (
        "ctag",
        7,
        True,
        "ex",
        "rk",
    )
    g = decode_method(get_ok_payload(3, False, "", "q", 9))
    assert isinstance(g, commands.Basic.GetOk) and g.message_count == 9
    r = decode_method(return_payload(312, "NO_ROUTE", "ex", "rk"))
    assert isinstance(r, commands.Basic.Return) and r.reply_code == 312


@pytest.mark.parametrize(
    "size", [0, 1, 131064, 131065, 300000, SLICED_BODY - 1, SLICED_BODY, 8 * 131064 + 5]
)
@pytest.mark.parametrize("kind", [bytes, bytearray])  # a body of several frames: bytearray
def test_content_frames_split_bodies(size: int, kind: type) -> None:
    """Bodies of SLICED_BODY and more go out as views of themselves: the same bytes."""
    body = kind(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    frames = content_frames(1, deliver_payload("t", 1, False, "", "q"), b"\x00\x00", body, 131072)
    reader = FrameReader(131072)
    parsed = list(reader.feed(b"".join(frames)))
    assert parsed[1].type == 2
    _, announced, props = parse_content_header(parsed[1].payload)
    assert announced == size and props == b"\x00\x00"
    bodies = parsed[2:]
    assert all(f.type == 3 and len(f.payload) <= 131064 for f in bodies)
    assert b"".join(f.payload for f in bodies) == body
    assert (len(bodies) == 0) == (size == 0)  # an empty body has no body frame


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([0, 1, 256, 131064, 131065, 300_000, SLICED_BODY, SLICED_BODY + 3]),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from([4096, 131072]),
)
def test_deliver_frames_are_the_content_frames_of_a_deliver(
    size: int, redelivered: bool, routing_key: str, frame_max: int
) -> None:
    """The one-buffer deliver (a body in one frame) and its fallback give the same bytes
    as the method payload and content frames built apart."""
    body, props = b"b" * size, b"\x90\x00\x03abc\x02"
    apart = content_frames(
        7, deliver_payload("ctag", 99, redelivered, "ex", routing_key), props, body, frame_max
    )
    names = short_str("ex") + short_str(routing_key)
    joined = deliver_frames(7, short_str("ctag"), 99, redelivered, names, props, body, frame_max)
    assert b"".join(joined) == b"".join(apart)


def test_an_incomplete_frame_is_held_without_the_read_it_ended() -> None:
    """Held over from a 252 KB read: only the 100 octets of its last, incomplete frame."""
    one = bytes([3, 0, 1, 0, 0, 0x03, 0xE8]) + b"y" * 1000 + b"\xce"
    read = one * 250 + (bytes([3, 0, 1, 0, 0, 0x13, 0x88]) + b"z" * 5000 + b"\xce")[:100]
    reader = FrameReader(131072)
    got = list(reader.feed(read, 4096))
    while reader.holds_frame():
        got += list(reader.feed(b"", 4096))
    assert len(got) == 250
    assert len(reader._held) - reader._at == 100 and len(reader._held) < 4096
