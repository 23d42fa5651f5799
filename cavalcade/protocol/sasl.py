"""SASL responses of connection.start-ok: PLAIN and AMQPLAIN."""

from __future__ import annotations

import struct

from pamqp import decode

MECHANISMS = "PLAIN AMQPLAIN"


def parse_response(mechanism: str, response: str | bytes) -> tuple[str, str] | None:
    """(username, password), or None if the response does not parse."""
    raw = response.encode("utf-8", "surrogateescape") if isinstance(response, str) else response
    if mechanism == "PLAIN":
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            return None
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        try:
            _, table = decode.field_table(struct.pack(">I", len(raw)) + raw)
        except Exception:  # noqa: BLE001
            return None
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if login is None or password is None:
            return None

        def as_text(v: object) -> str:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

        return as_text(login), as_text(password)
    return None
