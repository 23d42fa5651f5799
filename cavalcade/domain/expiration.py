"""The per-message ``expiration`` property, read as RabbitMQ reads it."""

from __future__ import annotations

import re

MAX_EXPIRATION_MS = 315_360_000_000  # ten years, RabbitMQ's ceiling

_LEADING_INT = re.compile(r"[+-]?[0-9]+")


def expiration_error(value: str) -> str | None:
    """Why RabbitMQ refuses this ``expiration`` (its 406 text), or None if it is valid:
    an optionally signed decimal integer, nothing after it, 0 to ten years."""
    m = _LEADING_INT.match(value)
    if m is None:
        return f"invalid expiration '{value}': no_integer"
    rest = value[m.end() :]
    if rest:
        return f"invalid expiration '{value}': {{leftover_string,\"{rest}\"}}"
    number = int(m.group())
    if number < 0:
        return f"invalid expiration '{value}': {{value_negative,{number}}}"
    if number > MAX_EXPIRATION_MS:
        return f"invalid expiration '{value}': {{value_too_large,{number}}}"
    return None
