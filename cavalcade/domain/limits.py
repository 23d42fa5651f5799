"""Vhost and user limits (pure): which keys exist, and what a value means.

As on RabbitMQ a negative value means "no limit" and 0 refuses every new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")


class LimitError(ValueError):
    """Limits RabbitMQ would refuse ("Validation failed")."""


def validate_limits(limits: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(limits, Mapping):
        raise LimitError("limits must be a JSON object")
    unknown = [k for k in limits if k not in allowed]
    if unknown:
        raise LimitError(f"Unrecognised terms {unknown} in limits")
    out: dict[str, int] = {}
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise LimitError(f"{key}: {value!r} is not an integer")
        out[key] = value
    return out


def limit_of(limits: Mapping[str, Any] | None, key: str) -> int | None:
    """The limit in force for ``key`` (None: unlimited)."""
    value = (limits or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
