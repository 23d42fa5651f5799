"""Sans-IO framing: split a byte stream into frames, and build outgoing frames fast.

pamqp decodes method frames; content headers and bodies are handled here so
the property bytes of a message can be stored and sent back byte-exact.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pamqp import commands, encode
from pamqp.base import Frame

from cavalcade.errors import FrameError, NotImplemented_

from .fastcodec import decode_hot

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_OVERHEAD = 8

_HEAD = struct.Struct(">BHI")
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


@dataclass(slots=True)
class RawFrame:
    """One frame off the wire: type, channel and payload (without the frame end)."""

    type: int
    channel: int
    payload: bytes


class FrameReader:
    """Accumulates bytes and yields complete frames, checking size and frame end."""

    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self._held: bytes | bytearray = b""  # bytes of frames not yet yielded, from _at
        self._at = 0

    def feed(self, data: bytes, budget: int | None = None) -> Iterator[RawFrame]:
        """The complete frames of what is held and ``data``; with a ``budget``, none
        begun past that many octets (the rest is held: see :meth:`holds_frame`)."""
        # Frames are sliced from ``data`` itself while nothing is held over (the usual
        # case: one copy of each payload); else from a buffer of the held bytes and
        # ``data`` (an incomplete frame grows in place).
        held, pos = self._held, self._at
        if pos >= len(held):
            buf: bytes | bytearray = data
            pos = 0
        elif not data:
            buf = held
        elif type(held) is bytearray and pos == 0:
            held += data
            buf = held
        else:
            buf = bytearray(held[pos:])
            buf += data
            pos = 0
        start, end = pos, len(buf)
        try:
            while end - pos >= 7:
                if budget is not None and pos > start and pos - start >= budget:
                    break
                ftype, channel, size = _HEAD.unpack_from(buf, pos)
                # RabbitMQ allows 8 octets of fudge: a payload of frame_max octets passes
                # (some clients cut bodies at frame_max, not frame_max - 8).
                if size > self.frame_max:
                    raise FrameError(
                        f"type {ftype}, all octets = <<>>: {{frame_too_large,{size},"
                        f"{self.frame_max - FRAME_OVERHEAD}}}"
                    )
                stop = pos + 7 + size
                if stop >= end:
                    break
                if buf[stop] != FRAME_END:
                    raise FrameError(f"type {ftype}, invalid frame end marker {buf[stop]}")
                payload = buf[pos + 7 : stop]
                if type(payload) is not bytes:
                    payload = bytes(payload)
                yield RawFrame(ftype, channel, payload)
                pos = stop + 1
        finally:
            if pos >= end:
                self._held, self._at = b"", 0
            elif (type(buf) is bytearray and pos == 0) or _complete(buf, pos):
                self._held, self._at = buf, pos  # frames past the budget: held as they are
            else:
                self._held, self._at = bytearray(buf[pos:]), 0  # only an incomplete frame

    def holds_frame(self) -> bool:
        """Is a complete frame held (one past a budget)?"""
        return _complete(self._held, self._at)


def _complete(buf: bytes | bytearray, at: int) -> bool:
    """Does ``buf`` hold a whole frame at ``at``?"""
    if len(buf) - at < 7:
        return False
    size: int = _HEAD.unpack_from(buf, at)[2]
    return len(buf) - at > 7 + size


def decode_method(payload: bytes) -> Frame:
    """Decode a method frame payload: 540 for unknown methods, 501 for bad arguments."""
    hot = decode_hot(payload)  # publish and ack by hand (pamqp for the rest)
    if hot is not None:
        return hot
    cls, meth = method_ids(payload)
    if len(payload) < 4 or ((cls << 16) | meth) not in commands.INDEX_MAPPING:
        raise NotImplemented_(f"unknown method {cls}/{meth}", cls, meth)
    try:
        method: Frame = commands.INDEX_MAPPING[(cls << 16) | meth]()
        method.unmarshal(payload[4:])
    except Exception as exc:  # pamqp raises many kinds on bad input
        if isinstance(exc, UnicodeDecodeError):
            raise FrameError("Malformed UTF-8 in shortstr") from exc  # RabbitMQ's words
        raise FrameError(f"cannot decode method {cls}/{meth}: {exc}", cls, meth) from exc
    for field in _STRIP_CR_LF.get(type(method), ()):
        value = getattr(method, field)
        if "\r" in value or "\n" in value:
            setattr(method, field, value.replace("\r", "").replace("\n", ""))
    return method


# RabbitMQ strips CR and LF from the names these methods carry (not from consume, get or
# purge, which then look for the name as sent).
_STRIP_CR_LF: dict[type, tuple[str, ...]] = {
    commands.Exchange.Declare: ("exchange",),
    commands.Exchange.Delete: ("exchange",),
    commands.Exchange.Bind: ("destination", "source"),
    commands.Exchange.Unbind: ("destination", "source"),
    commands.Queue.Declare: ("queue",),
    commands.Queue.Delete: ("queue",),
    commands.Queue.Bind: ("queue", "exchange"),
    commands.Queue.Unbind: ("queue", "exchange"),
}


def unchecked(cls: type[Frame], **fields: Any) -> Frame:
    """A method to send with fields pamqp's constructor would refuse (its name patterns
    are narrower than what RabbitMQ accepts: spaces, non-ASCII, NUL)."""
    method = cls()
    for name, value in fields.items():
        setattr(method, name, value)
    return method


def method_ids(payload: bytes) -> tuple[int, int]:
    if len(payload) < 4:
        return 0, 0
    cls, meth = struct.unpack_from(">HH", payload, 0)
    return int(cls), int(meth)


def encode_method(channel: int, value: Frame) -> bytes:
    """A method frame. pamqp's own marshal validates names against a narrower
    pattern than RabbitMQ accepts (``w1@host.celery.pidbox``), so encode the
    fields here without that check."""
    out = [struct.pack(">I", value.index)]
    byte, offset, in_bits = 0, 0, False
    for name in value.__slots__:
        kind = value.amqp_type(name)
        data = getattr(value, name, 0)
        if kind == "bit":
            if not in_bits:
                byte, offset, in_bits = 0, 0, True
            byte = encode.bit(data, byte, offset)
            offset += 1
            if offset == 8:
                out.append(encode.octet(byte))
                in_bits = False
            continue
        if in_bits:
            out.append(encode.octet(byte))
            in_bits = False
        out.append(encode.by_type(data, kind))
    if in_bits:
        out.append(encode.octet(byte))
    return frame(FRAME_METHOD, channel, b"".join(out))


def heartbeat_frame() -> bytes:
    return _HEARTBEAT


def short_str(value: str) -> bytes:
    raw = value.encode()
    return bytes((len(raw),)) + raw


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return _HEAD.pack(ftype, channel, len(payload)) + payload + FRAME_END_BYTE


_DELIVER_HEAD = struct.Struct(">HH")
_HEADER_HEAD = struct.Struct(">HHQ")


# A body at least this large is sent as slices of itself, not copied into its frames.
SLICED_BODY = 1024 * 1024

Buffers = list[bytes | memoryview]  # what a transport's ``writelines`` takes


def content_frames(
    channel: int, method_payload: bytes, properties: bytes, body: bytes, frame_max: int
) -> Buffers:
    """Method, header and body frames of one message; bodies split at ``frame_max``."""
    out: Buffers = [
        frame(FRAME_METHOD, channel, method_payload),
        frame(FRAME_HEADER, channel, _HEADER_HEAD.pack(60, 0, len(body)) + properties),
    ]
    if body:
        chunk = frame_max - FRAME_OVERHEAD
        if len(body) <= chunk:
            out.append(frame(FRAME_BODY, channel, body))
        else:
            view = memoryview(body)
            head, end, size = _HEAD.pack(FRAME_BODY, channel, chunk), FRAME_END_BYTE, len(body)
            for i in range(0, size - chunk, chunk):
                if size >= SLICED_BODY:  # the transport holds views of the body: no copy
                    out += (head, view[i : i + chunk], end)
                else:  # one copy per frame (joined from a slice of the body), not two
                    out.append(b"".join((head, view[i : i + chunk], end)))
            last = (size - 1) // chunk * chunk
            out.append(frame(FRAME_BODY, channel, bytes(view[last:])))
    return out


_DELIVER_FRAMES = struct.Struct(">QB")
_SMALL_HEADER = struct.Struct(">BHIHHQ")  # a header frame's head and its class, weight, size


def deliver_frames(
    channel: int,
    consumer: bytes,
    delivery_tag: int,
    redelivered: bool,
    names: bytes,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> Buffers:
    """:func:`content_frames` of a Basic.Deliver, as one buffer when the body fits one
    frame (most do): ``consumer`` is the consumer tag as a short string, ``names`` the
    exchange and routing key as two."""
    size = len(body)
    method = _deliver_method(consumer, delivery_tag, redelivered, names)
    if not size or size > frame_max - FRAME_OVERHEAD or size >= SLICED_BODY:
        return content_frames(channel, method, properties, body, frame_max)
    return [
        b"".join(
            (
                _HEAD.pack(FRAME_METHOD, channel, len(method)),
                method,
                FRAME_END_BYTE,
                _SMALL_HEADER.pack(FRAME_HEADER, channel, 12 + len(properties), 60, 0, size),
                properties,
                FRAME_END_BYTE,
                _HEAD.pack(FRAME_BODY, channel, size),
                body,
                FRAME_END_BYTE,
            )
        )
    ]


def _deliver_method(consumer: bytes, delivery_tag: int, redelivered: bool, names: bytes) -> bytes:
    return b"".join(
        (
            _DELIVER_HEAD.pack(60, 60),
            consumer,
            _DELIVER_FRAMES.pack(delivery_tag, 1 if redelivered else 0),
            names,
        )
    )


def deliver_payload(
    consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> bytes:
    """Basic.Deliver (60, 60) method payload."""
    names = short_str(exchange) + short_str(routing_key)
    return _deliver_method(short_str(consumer_tag), delivery_tag, redelivered, names)


def get_ok_payload(
    delivery_tag: int, redelivered: bool, exchange: str, routing_key: str, message_count: int
) -> bytes:
    """Basic.GetOk (60, 71) method payload."""
    return b"".join(
        (
            _DELIVER_HEAD.pack(60, 71),
            struct.pack(">QB", delivery_tag, 1 if redelivered else 0),
            short_str(exchange),
            short_str(routing_key),
            struct.pack(">I", message_count),
        )
    )


def return_payload(reply_code: int, reply_text: str, exchange: str, routing_key: str) -> bytes:
    """Basic.Return (60, 50) method payload."""
    return b"".join(
        (
            _DELIVER_HEAD.pack(60, 50),
            struct.pack(">H", reply_code),
            short_str(reply_text),
            short_str(exchange),
            short_str(routing_key),
        )
    )


def parse_content_header(payload: bytes) -> tuple[int, int, bytes]:
    """(class id, body size, raw property bytes) of a content header frame."""
    if len(payload) < 14:
        raise FrameError("content header frame too short")
    class_id, _weight, body_size = _HEADER_HEAD.unpack_from(payload, 0)
    return int(class_id), int(body_size), payload[12:]
