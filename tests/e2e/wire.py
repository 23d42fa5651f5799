"""Method frames built without pamqp's name checks, for names RabbitMQ accepts (spaces,
non-ASCII, NUL, CR/LF) and for bytes no client library would send (malformed UTF-8)."""

from __future__ import annotations

import struct
from typing import Any

from pamqp import body as pbody
from pamqp import commands, frame, header
from pamqp.base import Frame

from cavalcade.protocol.framing import encode_method

from .conftest import RawClient, RawClosed


def unchecked(cls: type[Frame], **fields: Any) -> Frame:
    m = cls()
    for name, value in fields.items():
        setattr(m, name, value)
    return m


def method(channel: int, cls: type[Frame], **fields: Any) -> bytes:
    """One method frame; field values are not validated."""
    return encode_method(channel, unchecked(cls, **fields))


def sstr(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def raw_method(channel: int, class_id: int, method_id: int, payload: bytes) -> bytes:
    body = struct.pack(">HH", class_id, method_id) + payload
    return struct.pack(">BHI", 1, channel, len(body)) + body + b"\xce"


def queue_declare_bytes(channel: int, name: bytes, passive: bool = False) -> bytes:
    """queue.declare with the name as raw bytes (may be malformed UTF-8)."""
    return raw_method(
        channel, 50, 10, b"\x00\x00" + sstr(name) + bytes((int(passive),)) + b"\x00\x00\x00\x00"
    )


def publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: commands.Basic.Properties | None = None,
    mandatory: bool = False,
) -> bytes:
    """basic.publish + content header (+ one body frame), names unchecked."""
    parts = [
        method(
            channel,
            commands.Basic.Publish,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
        ),
        frame.marshal(
            header.ContentHeader(0, len(body), properties or commands.Basic.Properties()),
            channel,
        ),
    ]
    if body:
        parts.append(frame.marshal(pbody.ContentBody(body), channel))
    return b"".join(parts)


def reply(c: RawClient, timeout: float | None = None) -> tuple[str, Any]:
    """The next frame's outcome: ``("ok", frame)``, ``("channel", code)`` (the channel was
    closed; close-ok sent and the channel reopened), ``("connection", code)`` or
    ``("eof", None)``."""
    try:
        ch, value = c.recv(timeout)
    except RawClosed:
        return "eof", None
    if isinstance(value, commands.Channel.Close):
        c.send(commands.Channel.CloseOk(), ch)
        c.open_channel(ch)
        return "channel", value.reply_code
    if isinstance(value, commands.Connection.Close):
        return "connection", value.reply_code
    return "ok", value
