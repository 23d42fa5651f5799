"""Hand decoders for the hottest client methods: Basic.Publish and Basic.Ack.

pamqp's generic ``unmarshal`` looks each field's type up by name and slices the
payload once per field: ~25 us per publish on this machine, a visible share of a
node's CPU at 10k messages a second. These build the same pamqp objects in ~1 us.
A payload they cannot decode exactly (truncated, malformed UTF-8) yields ``None``,
and the caller takes pamqp's path, which reports the error as before.
"""

from __future__ import annotations

import struct

from pamqp import commands
from pamqp.base import Frame

_PUBLISH = b"\x00\x3c\x00\x28"  # class 60, method 40
_ACK = b"\x00\x3c\x00\x50"  # class 60, method 80
_TAG = struct.Struct(">q")  # pamqp's "longlong" (signed)
_TICKET = struct.Struct(">h")  # pamqp's "short"


def decode_hot(payload: bytes) -> Frame | None:
    """Basic.Publish or Basic.Ack from a method payload, or None (use pamqp)."""
    head = payload[:4]
    if head == _PUBLISH:
        return _publish(payload)
    if head == _ACK and len(payload) >= 13:
        ack = commands.Basic.Ack.__new__(commands.Basic.Ack)
        ack.delivery_tag = _TAG.unpack_from(payload, 4)[0]
        ack.multiple = (payload[12] & 1) != 0
        return ack
    return None


def _publish(payload: bytes) -> Frame | None:
    size = len(payload)
    if size < 9:  # ticket, two string lengths, the bits
        return None
    ex_end = 7 + payload[6]
    if ex_end >= size:
        return None
    rk_end = ex_end + 1 + payload[ex_end]
    if rk_end >= size:
        return None
    try:
        exchange = payload[7:ex_end].decode()
        routing_key = payload[ex_end + 1 : rk_end].decode()
    except UnicodeDecodeError:
        return None
    bits = payload[rk_end]
    method = commands.Basic.Publish.__new__(commands.Basic.Publish)
    method.ticket = _TICKET.unpack_from(payload, 4)[0]
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = (bits & 1) != 0
    method.immediate = (bits & 2) != 0
    return method
