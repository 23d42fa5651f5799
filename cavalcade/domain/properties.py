"""Basic content-header properties: read the few fields the broker acts on.

The raw property bytes (flags + property list) are kept and sent back as
received; this module only walks them to pull out ``delivery_mode``,
``priority``, ``expiration`` and friends, and decodes the headers table on
demand (for the headers exchange).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pamqp import decode

# Flag bits of class Basic, highest first, with the kind of each field.
_FIELDS = (
    (15, "content_type", "s"),
    (14, "content_encoding", "s"),
    (13, "headers", "t"),
    (12, "delivery_mode", "o"),
    (11, "priority", "o"),
    (10, "correlation_id", "s"),
    (9, "reply_to", "s"),
    (8, "expiration", "s"),
    (7, "message_id", "s"),
    (6, "timestamp", "q"),
    (5, "type", "s"),
    (4, "user_id", "s"),
    (3, "app_id", "s"),
    (2, "cluster_id", "s"),
)


_READ_STRINGS = frozenset(
    {"content_type", "correlation_id", "expiration", "message_id", "user_id", "reply_to"}
)


class MalformedProperties(ValueError):
    """The property bytes do not parse."""


@dataclass(slots=True)
class Properties:
    """The properties the broker looks at; everything else stays in ``raw``."""

    raw: bytes
    content_type: str | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    user_id: str | None = None
    reply_to: str | None = None
    headers_raw: bytes | None = None
    _headers: dict[str, Any] | None = None

    @property
    def persistent(self) -> bool:
        return self.delivery_mode == 2

    def headers(self) -> dict[str, Any]:
        """The decoded headers table (empty when absent or undecodable)."""
        if self._headers is None:
            self._headers = {}
            if self.headers_raw:
                try:
                    _, table = decode.field_table(self.headers_raw)
                    self._headers = dict(table)
                except Exception:  # noqa: BLE001 - undecodable tables route as empty
                    self._headers = {}
        return self._headers


def _walk(raw: bytes) -> tuple[int, list[tuple[int, str, str, int, int]]]:
    """(flags, [(bit, name, kind, start, end)]) of every present property."""
    spans: list[tuple[int, str, str, int, int]] = []
    try:
        (flags,) = struct.unpack_from(">H", raw, 0)
        pos = 2
        while flags & 1 and pos < len(raw):  # continuation words (unused by class Basic)
            (more,) = struct.unpack_from(">H", raw, pos)
            pos += 2
            if not more & 1:
                break
        for bit, name, kind in _FIELDS:
            if not flags & (1 << bit):
                continue
            start = pos
            if kind == "s":
                pos += 1 + raw[pos]
            elif kind == "t":
                (size,) = struct.unpack_from(">I", raw, pos)
                pos += 4 + size
            elif kind == "o":
                pos += 1
            else:
                pos += 8
            if pos > len(raw):
                raise MalformedProperties(f"{name} runs past the header")
            spans.append((bit, name, kind, start, pos))
    except (IndexError, struct.error) as exc:
        raise MalformedProperties(str(exc)) from exc
    if pos != len(raw):
        raise MalformedProperties("trailing bytes after the property list")
    return flags, spans


# Parsed property lists by their bytes: a publisher sends the same few again and again
# (one per kind of message). Bounded; cleared when full. Nothing changes a Properties
# after parsing but the cached headers table, decoded from the same bytes.
_PARSED: dict[bytes, Properties] = {}
_PARSED_MAX = 1024
_PARSED_LONGEST = 512  # longer ones (big headers tables) are parsed each time


def parse_properties(raw: bytes) -> Properties:
    """Walk the flags and property list of a Basic content header."""
    props = _PARSED.get(raw) if type(raw) is bytes else None
    if props is not None:
        return props
    props = Properties(raw=raw)
    _, spans = _walk(raw)
    for _bit, name, kind, start, end in spans:
        if kind == "s":
            if name in _READ_STRINGS:
                setattr(props, name, raw[start + 1 : end].decode("utf-8", errors="replace"))
        elif kind == "t":
            props.headers_raw = raw[start:end]
        elif kind == "o":
            setattr(props, name, raw[start])
    if type(raw) is bytes and len(raw) <= _PARSED_LONGEST:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[raw] = props
    return props


def rewrite_properties(
    raw: bytes,
    headers_table: bytes | None,
    drop_expiration: bool,
    reply_to: str | None = None,
) -> bytes:
    """The same properties, byte for byte, with a new headers table (``headers_table``
    includes its length prefix), a new ``reply_to``, and, if asked, no ``expiration``."""
    flags, spans = _walk(raw)
    by_bit = {bit: raw[start:end] for bit, _name, _kind, start, end in spans}
    if headers_table is not None:
        by_bit[13] = headers_table
    if reply_to is not None:
        encoded = reply_to.encode()[:255]
        by_bit[9] = bytes((len(encoded),)) + encoded
    if drop_expiration:
        by_bit.pop(8, None)
    new_flags = 0
    for bit in by_bit:
        new_flags |= 1 << bit
    ordered = [by_bit[bit] for bit, _name, _kind in _FIELDS if bit in by_bit]
    return struct.pack(">H", new_flags) + b"".join(ordered)
