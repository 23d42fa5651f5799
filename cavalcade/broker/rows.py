"""The one place a message row (:class:`NewMessage`) is built: a routed publish or a
dead-lettered copy in one queue, with that queue's priority cap and TTL applied."""

from __future__ import annotations

from typing import Any

from cavalcade.domain.properties import Properties
from cavalcade.storage.records import NewMessage


def message_row(
    queue_id: int,
    queue_args: dict[str, Any],
    props: Properties,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    persistent: bool,
    expiration: str | None,
    message_ttl: int | None = None,
    delay_ms: int | None = None,
) -> NewMessage:
    """A row for queue ``queue_id``: priority clamped to its ``x-max-priority``, TTL the
    smaller of its ``x-message-ttl`` and ``message_ttl``."""
    if queue_args:
        priority, ttl = (
            clamp_priority(queue_args, props.priority),
            min_ttl(queue_args.get("x-message-ttl"), message_ttl),
        )
    else:  # most queues: no cap, no TTL of their own (a publish's hot path)
        priority, ttl = 0, min_ttl(None, message_ttl)
    # Positional: keyword arguments cost a visible share of a publish here.
    return NewMessage(
        queue_id, priority, persistent, exchange, routing_key, props.raw, props.content_type,
        props.message_id, props.correlation_id, expiration, body, ttl, delay_ms,
    )  # fmt: skip


def clamp_priority(queue_args: dict[str, Any], priority: int | None) -> int:
    """A message's priority in a queue: 0 without ``x-max-priority``, else clamped to it."""
    cap = queue_args.get("x-max-priority")
    return min(priority or 0, cap) if isinstance(cap, int) and cap > 0 else 0


def _ttl(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def min_ttl(queue_ttl: object, message_ttl: int | None) -> int | None:
    """The smaller of two TTLs, either of which may be absent (or not an integer)."""
    queue, message = _ttl(queue_ttl), _ttl(message_ttl)
    if queue is None or message is None:
        return message if queue is None else queue
    return min(queue, message)


def int_header(value: object) -> int | None:
    """A header read as an integer (``x-delay``), as RabbitMQ's plugin reads it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | str | bytes):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def expiration_ms(expiration: str | None) -> int | None:
    """The ``expiration`` property in ms (RabbitMQ: a non-negative integer string)."""
    if expiration is None:
        return None
    try:
        value = int(expiration)
    except ValueError:
        return None
    return value if value >= 0 else None
