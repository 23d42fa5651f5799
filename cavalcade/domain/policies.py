"""Policies as RabbitMQ applies them (pure): which policy matches a name, and the arguments
a queue or exchange then behaves by.

* A policy matches when its ``apply-to`` covers the kind of object and its pattern (a
  regular expression, searched unanchored as RabbitMQ does) matches the name; the highest
  ``priority`` wins (ties: the first name in alphabetical order). One user policy and one
  operator policy apply at most.
* Where both the user policy and the operator policy set a key, the lower value wins
  (operator policies cap ``message-ttl``, ``expires``, ``max-length``, ``max-length-bytes``,
  ``delivery-limit``).
* Where a policy and an ``x-`` argument both set a value: the lower wins for the numeric
  limits, the argument wins for everything else (``rabbit_amqqueue_process``'s ``res_min`` /
  ``res_arg``; ``rabbit_policy:get_arg`` for ``alternate-exchange``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

APPLY_TO = ("all", "queues", "exchanges")

# policy key -> the x-argument it stands for
QUEUE_KEYS: dict[str, str] = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "delivery-limit": "x-delivery-limit",
    "queue-mode": "x-queue-mode",
}
EXCHANGE_KEYS: dict[str, str] = {"alternate-exchange": "alternate-exchange"}
# Accepted (RabbitMQ clusters set them), with no effect here.
INERT_KEYS = frozenset(
    {
        "ha-mode",
        "ha-params",
        "ha-sync-mode",
        "ha-promote-on-shutdown",
        "ha-promote-on-failure",
        "queue-master-locator",
        "queue-leader-locator",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "dead-letter-strategy",
        "federation-upstream",
        "federation-upstream-set",
    }
)
# Keys an operator policy may set; where a user policy sets them too, the lower wins.
OPERATOR_KEYS = frozenset(
    {
        "expires",
        "message-ttl",
        "max-length",
        "max-length-bytes",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "delivery-limit",
    }
)
_MIN_KEYS = frozenset(
    {"expires", "message-ttl", "max-length", "max-length-bytes", "delivery-limit"}
)
_OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")
_QUEUE_MODES = ("default", "lazy")


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse ("Validation failed")."""


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    pattern: str
    definition: Mapping[str, Any]
    priority: int = 0
    apply_to: str = "all"
    operator: bool = False
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, name: str, kind: str) -> bool:
        """Does this policy apply to a ``kind`` ("queues" or "exchanges") named ``name``?"""
        if self.apply_to not in ("all", kind):
            return False
        regex = self._regex or _compile(self.pattern)
        if regex is None:
            return False
        return regex.search(name) is not None


def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def make_policy(
    name: str,
    pattern: str,
    definition: Mapping[str, Any],
    priority: int = 0,
    apply_to: str = "all",
    operator: bool = False,
) -> Policy:
    """A policy with its pattern compiled once (for matching many names)."""
    return Policy(name, pattern, definition, priority, apply_to, operator, _compile(pattern))


def validate_policy(
    pattern: str, definition: Mapping[str, Any], apply_to: str, operator: bool
) -> None:
    """Refuse what ``rabbitmqctl set_policy`` / ``set_operator_policy`` refuses."""
    if apply_to not in APPLY_TO:
        raise PolicyError(f'"{apply_to}" is not a valid apply-to value (all, queues, exchanges)')
    try:
        re.compile(pattern)
    except re.error as exc:
        raise PolicyError(f'"{pattern}" is not a valid regular expression: {exc}') from exc
    if not isinstance(definition, Mapping) or not definition:
        raise PolicyError("the policy definition must be a non-empty JSON object")
    allowed = OPERATOR_KEYS if operator else set(QUEUE_KEYS) | set(EXCHANGE_KEYS) | INERT_KEYS
    unknown = sorted(k for k in definition if k not in allowed)
    if unknown:
        raise PolicyError(f"{', '.join(unknown)} are not recognised policy settings")
    for key, value in definition.items():
        _validate_value(key, value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_value(key: str, value: object) -> None:
    if key in ("message-ttl", "max-length", "max-length-bytes", "delivery-limit"):
        if not _is_int(value) or value < 0:  # type: ignore[operator]
            raise PolicyError(f"{value!r} is not a valid {key} (a non-negative integer)")
    elif key == "expires":
        if not _is_int(value) or value < 1:  # type: ignore[operator]
            raise PolicyError(f"{value!r} is not a valid expires (a positive integer)")
    elif key == "overflow":
        if value not in _OVERFLOW:
            raise PolicyError(f"{value!r} is not a valid overflow ({', '.join(_OVERFLOW)})")
    elif key == "queue-mode":
        if value not in _QUEUE_MODES:
            raise PolicyError(f"{value!r} is not a valid queue-mode (default, lazy)")
    elif key in ("dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange"):
        if not isinstance(value, str):
            raise PolicyError(f"{value!r} is not a valid {key} (a string)")


def best_match(policies: Iterable[Policy], name: str, kind: str) -> Policy | None:
    """The matching policy with the highest priority (ties: the first by name)."""
    best: Policy | None = None
    for p in policies:
        if not p.matches(name, kind):
            continue
        if (
            best is None
            or p.priority > best.priority
            or (p.priority == best.priority and p.name < best.name)
        ):
            best = p
    return best


@dataclass(frozen=True, slots=True)
class Applied:
    """What applies to one queue or exchange."""

    policy: Policy | None
    operator_policy: Policy | None
    definition: dict[str, Any]  # the merged policy definition (RabbitMQ's "effective")
    arguments: dict[str, Any]  # the x-arguments the object behaves by


def merged_definition(policy: Policy | None, operator_policy: Policy | None) -> dict[str, Any]:
    """The user policy's keys, capped (lower wins) by the operator policy's."""
    merged = dict(policy.definition) if policy else {}
    if operator_policy is not None:
        for key, op_value in operator_policy.definition.items():
            mine = merged.get(key)
            if mine is None:
                merged[key] = op_value
            elif key in _MIN_KEYS and _is_int(mine) and _is_int(op_value):
                merged[key] = min(mine, op_value)
    return merged


def apply_to_queue(name: str, arguments: Mapping[str, Any], policies: Iterable[Policy]) -> Applied:
    """The policies of a queue and the x-arguments it behaves by."""
    policies = list(policies)
    user = best_match((p for p in policies if not p.operator), name, "queues")
    op = best_match((p for p in policies if p.operator), name, "queues")
    definition = merged_definition(user, op)
    return Applied(user, op, definition, _resolve(arguments, definition, QUEUE_KEYS))


def apply_to_exchange(
    name: str, arguments: Mapping[str, Any], policies: Iterable[Policy]
) -> Applied:
    """The policy of an exchange (operator policies apply to queues only)."""
    user = best_match((p for p in policies if not p.operator), name, "exchanges")
    definition = dict(user.definition) if user else {}
    return Applied(user, None, definition, _resolve(arguments, definition, EXCHANGE_KEYS))


def _resolve(
    arguments: Mapping[str, Any], definition: Mapping[str, Any], keys: Mapping[str, str]
) -> dict[str, Any]:
    out = dict(arguments)
    for key, arg in keys.items():
        value = definition.get(key)
        if value is None:
            continue
        current = out.get(arg)
        if current is None:
            out[arg] = value
        elif key in _MIN_KEYS and _is_int(current) and _is_int(value):
            out[arg] = min(current, value)
        # otherwise the x-argument wins
    return out
