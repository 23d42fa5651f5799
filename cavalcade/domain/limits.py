"""Limits (pure). Vhost and user limits: which keys exist, and what a value means (as
on RabbitMQ a negative value means "no limit" and 0 refuses every new one). Queue
limits: what a full queue refuses, and which requeues pass their delivery limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


# -- queue limits: x-max-length / x-max-length-bytes with x-overflow, x-delivery-limit --

UNLIMITED = 2**62

DROP_HEAD = "drop-head"
REJECT_PUBLISH = "reject-publish"
REJECT_PUBLISH_DLX = "reject-publish-dlx"


@dataclass(slots=True, frozen=True)
class QueueLimit:
    """``x-max-length`` / ``x-max-length-bytes`` and what happens at the limit."""

    max_length: int | None
    max_bytes: int | None
    overflow: str = DROP_HEAD  # or reject-publish, reject-publish-dlx

    @property
    def refuses(self) -> bool:
        """A full queue refuses new publishes (instead of dropping its head)."""
        return self.overflow != DROP_HEAD

    def bounds(self) -> tuple[int, int]:
        """(messages, bytes) allowed, UNLIMITED where there is no limit."""
        return (
            self.max_length if self.max_length is not None else UNLIMITED,
            self.max_bytes if self.max_bytes is not None else UNLIMITED,
        )


@dataclass(slots=True)
class BatchRules:
    """The limits of the queues one write batch touches, by queue id."""

    limits: dict[int, QueueLimit] = field(default_factory=dict)
    delivery_limits: dict[int, int] = field(default_factory=dict)


def _int_arg(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def queue_limit(args: Mapping[str, Any]) -> QueueLimit | None:
    """A queue's length limit from its (effective) arguments; None: unbounded."""
    max_len, max_bytes = args.get("x-max-length"), args.get("x-max-length-bytes")
    if not (isinstance(max_len, int) or isinstance(max_bytes, int)):
        return None
    return QueueLimit(
        max_len if isinstance(max_len, int) else None,
        max_bytes if isinstance(max_bytes, int) else None,
        str(args.get("x-overflow") or DROP_HEAD),
    )


def delivery_limit(args: Mapping[str, Any]) -> int | None:
    """A queue's ``x-delivery-limit`` (None: unlimited)."""
    return _int_arg(args.get("x-delivery-limit"))


@dataclass(slots=True)
class Refusals:
    """What full queues do to a batch's publishes (indexes into the batch)."""

    refused: set[int] = field(default_factory=set)
    dead_lettered: list[int] = field(default_factory=list)  # refused, copied to the DLX


def refusals(
    publishes: Sequence[tuple[int, int]],
    lengths: Mapping[int, tuple[int, int]],
    limits: Mapping[int, QueueLimit],
) -> Refusals:
    """Which of ``publishes`` ((queue id, body bytes), in batch order) full queues refuse,
    given each refusing queue's ready (messages, bytes) before the batch."""
    out = Refusals()
    counts = dict(lengths)
    for i, (qid, size) in enumerate(publishes):
        if qid not in counts:
            continue
        lim = limits[qid]
        count, total = counts[qid]
        max_len, max_bytes = lim.bounds()
        if count + 1 > max_len or total + size > max_bytes:
            out.refused.add(i)
            if lim.overflow == REJECT_PUBLISH_DLX:
                out.dead_lettered.append(i)
        else:
            counts[qid] = (count + 1, total + size)
    return out


def over_delivery_limit(
    requeued: Sequence[tuple[int, int, int]], limits: Mapping[int, int]
) -> list[int]:
    """Ids of requeued messages ((id, queue id, delivery count)) past their queue's
    ``x-delivery-limit``: they are dead-lettered instead."""
    return [mid for mid, qid, count in requeued if qid in limits and count > limits[qid]]
