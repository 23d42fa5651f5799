"""Sender-selected distribution: the ``CC`` and ``BCC`` headers (RabbitMQ's extension).

Each header, when present, must be an array; its string entries are routing keys the
message is routed with besides its own (other entries are ignored). ``BCC`` is taken
out of the headers before the message is stored, every other byte is kept.
"""

from __future__ import annotations

import struct

from pamqp import decode

from .deadletter import table_entries
from .properties import MalformedProperties, Properties, parse_properties, rewrite_properties

ROUTING_HEADERS = ("CC", "BCC")

# RabbitMQ's names for field types, in its error text.
_TYPE_NAMES = {
    "S": "longstr", "I": "signedint", "i": "unsignedint", "F": "table", "t": "bool",
    "b": "byte", "B": "unsignedbyte", "s": "short", "u": "unsignedshort", "l": "long",
    "L": "long", "f": "float", "d": "double", "D": "decimal", "T": "timestamp", "V": "void",
    "x": "binary",
}  # fmt: skip


class InvalidRoutingHeader(ValueError):
    """``CC`` or ``BCC`` is not an array (RabbitMQ refuses the message, 406)."""

    def __init__(self, key: str, type_name: str) -> None:
        super().__init__(f'invalid message: {{unacceptable_type_in_header,"{key}",{type_name}}}')


def _entries(props: Properties) -> list[tuple[str, bytes]]:
    if not props.headers_raw:
        return []
    try:
        return list(table_entries(props.headers_raw))
    except MalformedProperties:
        return []


def extra_routing_keys(props: Properties) -> list[str]:
    """The routing keys ``CC`` and ``BCC`` add, in header order (may be empty)."""
    if not props.headers_raw or (b"CC" not in props.headers_raw):
        return []  # fast path: no header named CC or BCC can be there
    found: dict[str, list[str]] = {}
    for key, entry in _entries(props):
        if key not in ROUTING_HEADERS:
            continue
        kind = chr(entry[1 + len(key.encode())])
        if kind != "A":
            raise InvalidRoutingHeader(key, _TYPE_NAMES.get(kind, kind))
        try:
            _, values = decode.field_array(entry[2 + len(key.encode()) :])
        except Exception:  # noqa: BLE001 - an undecodable array adds nothing
            values = []
        found[key] = [v for v in values if isinstance(v, str)]
    return found.get("CC", []) + found.get("BCC", [])


def without_bcc(props: Properties) -> Properties | None:
    """The properties with the ``BCC`` header taken out, or None if there is none."""
    entries = _entries(props)
    if not any(key == "BCC" for key, _ in entries):
        return None
    body = b"".join(entry for key, entry in entries if key != "BCC")
    raw = rewrite_properties(props.raw, struct.pack(">I", len(body)) + body, drop_expiration=False)
    return parse_properties(raw)
