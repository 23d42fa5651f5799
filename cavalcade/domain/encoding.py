"""Content-header property bytes built from JSON (the properties of ``cavalcade_publish``).

The inverse of :mod:`cavalcade.domain.properties` for messages that never crossed the
wire: the outbox stores AMQP property names with JSON values, and the node turns them
into the flags + property list a client would have sent. Header tables use the field
types every client decodes: ``S`` strings, ``t`` booleans, the signed integers
``b``/``s``/``I``/``l``, ``d`` doubles, ``V`` null, ``F`` tables and ``A`` arrays.
"""

from __future__ import annotations

import struct
from typing import Any

from .properties import _FIELDS


class BadProperties(ValueError):
    """A property that cannot be encoded (wrong type or out of range)."""


_KIND = {name: (bit, kind) for bit, name, kind in _FIELDS}


def _short_string(name: str, value: Any) -> bytes:
    if isinstance(value, int | float) and not isinstance(value, bool) and name == "expiration":
        value = str(int(value))
    if not isinstance(value, str):
        raise BadProperties(f"{name} must be a string")
    raw = value.encode()
    if len(raw) > 255:
        raise BadProperties(f"{name} is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def _integer(value: int) -> bytes:
    if -(2**7) <= value < 2**7:
        return b"b" + struct.pack(">b", value)
    if -(2**15) <= value < 2**15:
        return b"s" + struct.pack(">h", value)
    if -(2**31) <= value < 2**31:
        return b"I" + struct.pack(">i", value)
    if -(2**63) <= value < 2**63:
        return b"l" + struct.pack(">q", value)
    raise BadProperties(f"integer {value} does not fit in 64 bits")


def _value(value: Any) -> bytes:
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, dict):
        return b"F" + field_table(value)
    if isinstance(value, list | tuple):
        items = b"".join(_value(v) for v in value)
        return b"A" + struct.pack(">I", len(items)) + items
    raise BadProperties(f"cannot encode a {type(value).__name__} in a header table")


def field_table(table: dict[str, Any]) -> bytes:
    """An AMQP field table, with its 4-byte length prefix."""
    parts = []
    for key, value in table.items():
        raw = str(key).encode()
        if len(raw) > 255:
            raise BadProperties(f"header name {key!r} is longer than 255 bytes")
        parts.append(bytes((len(raw),)) + raw + _value(value))
    body = b"".join(parts)
    return struct.pack(">I", len(body)) + body


def encode_properties(props: dict[str, Any]) -> bytes:
    """The property flags and list of a Basic content header, from AMQP names."""
    by_bit: dict[int, bytes] = {}
    for name, value in props.items():
        if name not in _KIND:
            raise BadProperties(f"unknown property {name!r}")
        if value is None:
            continue
        bit, kind = _KIND[name]
        if kind == "s":
            by_bit[bit] = _short_string(name, value)
        elif kind == "t":
            if not isinstance(value, dict):
                raise BadProperties("headers must be a table (JSON object)")
            by_bit[bit] = field_table(value)
        elif kind == "o":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadProperties(f"{name} must be a number")
            if not 0 <= int(value) <= 255:
                raise BadProperties(f"{name} must be 0..255")
            by_bit[bit] = bytes((int(value),))
        else:  # timestamp: seconds since the epoch
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadProperties(f"{name} must be a number (seconds since the epoch)")
            by_bit[bit] = struct.pack(">Q", int(value))
    flags = 0
    for bit in by_bit:
        flags |= 1 << bit
    return struct.pack(">H", flags) + b"".join(
        by_bit[bit] for bit, _name, _kind in _FIELDS if bit in by_bit
    )
