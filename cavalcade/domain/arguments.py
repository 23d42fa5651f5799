"""Entity names and ``x-`` arguments: validation, equivalence, JSON-safe storage."""

from __future__ import annotations

import base64
import datetime
import decimal
import os
from typing import Any

from cavalcade.errors import AccessRefused, CommandInvalid, PreconditionFailed

from .routing import DELAYED_TYPE, EXCHANGE_TYPES

# Queue arguments that RabbitMQ compares on redeclare; others are stored, not compared.
QUEUE_EQUIVALENCE_KEYS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
)
EXCHANGE_EQUIVALENCE_KEYS = ("alternate-exchange", "x-delayed-type")

_INT_ARGS = {
    "x-expires": (1, None),
    "x-message-ttl": (0, None),
    "x-max-length": (0, None),
    "x-max-length-bytes": (0, None),
    "x-max-priority": (0, 255),
}


def server_generated_name(prefix: str) -> str:
    """``amq.gen-…`` / ``amq.ctag-…``: 16 random bytes, url-safe base64, as RabbitMQ does."""
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def check_exchange_type(type_: str, arguments: dict[str, Any]) -> None:
    """Unknown exchange types are a hard 503 on RabbitMQ; a delayed exchange needs a
    known ``x-delayed-type`` (406, as the plugin answers)."""
    if type_ == DELAYED_TYPE:
        if arguments.get("x-delayed-type") not in EXCHANGE_TYPES:
            raise PreconditionFailed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type"
            )
        return
    if type_ not in EXCHANGE_TYPES:
        raise CommandInvalid(f"unknown exchange type '{type_}'")


def check_reserved(kind: str, name: str) -> None:
    """``amq.`` names may not be created by clients."""
    if name.startswith("amq."):
        raise AccessRefused(f"{kind} name '{name}' contains reserved prefix 'amq.*'")


def json_safe(value: Any) -> Any:
    """Field-table values as JSON (bytes as text, decimals and dates as strings)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def validate_queue_arguments(args: dict[str, Any]) -> None:
    """Reject argument values RabbitMQ rejects (406 on bad numeric ranges)."""
    for key, (low, high) in _INT_ARGS.items():
        if key not in args:
            continue
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise PreconditionFailed(
                f"invalid arg '{key}' for queue: {_type_name(value)} is not an integer"
            )
        if value < low or (high is not None and value > high):
            raise PreconditionFailed(f"invalid arg '{key}' for queue: value {value} out of range")
    overflow = args.get("x-overflow")
    if overflow is not None and overflow not in (
        "drop-head",
        "reject-publish",
        "reject-publish-dlx",
    ):
        raise PreconditionFailed(f"invalid arg 'x-overflow' for queue: {overflow!r}")
    qtype = args.get("x-queue-type")
    if qtype is not None and qtype not in ("classic", "quorum", "stream"):
        raise PreconditionFailed(f"invalid arg 'x-queue-type' for queue: {qtype!r}")


def validate_dead_letter_arguments(args: dict[str, Any], queue: str, vhost: str) -> None:
    """``x-dead-letter-exchange`` / ``-routing-key``: strings, and no key without an
    exchange (406, RabbitMQ's texts)."""
    where = f"queue '{queue}' in vhost '{vhost}'"
    dlx = args.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str):
        raise PreconditionFailed(
            f"invalid type '{_type_name(dlx)}' for arg 'x-dead-letter-exchange' in {where}"
        )
    key = args.get("x-dead-letter-routing-key")
    if key is None:
        return
    if not isinstance(key, str):
        raise PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for {where}: "
            f"{{unacceptable_type,{_type_name(key)}}}"
        )
    if dlx is None:
        raise PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for {where}: routing_key_but_no_dlx_defined"
        )


X_MATCH_VALUES = ("all", "any", "all-with-x", "any-with-x")


def check_headers_binding(args: dict[str, Any]) -> None:
    """A headers-exchange binding's ``x-match`` must be one of RabbitMQ's four strings."""
    if "x-match" not in args:
        return
    mode = args["x-match"]
    if not isinstance(mode, str):
        raise PreconditionFailed(
            f"Invalid x-match field type {_type_name(mode)} (value {_erl(mode)}); expected longstr"
        )
    if mode not in X_MATCH_VALUES:
        raise PreconditionFailed(
            f'Invalid x-match field value <<"{mode}">>; expected all, any, all-with-x, '
            "or any-with-x"
        )


def _erl(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return "longstr"


def _describe(value: Any) -> str:
    if value is None:
        return "none"
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    return f"the value '{shown}' of type '{_type_name(value)}'"


def assert_equivalent(
    kind: str,
    name: str,
    vhost: str,
    current: dict[str, Any],
    received: dict[str, Any],
    keys: tuple[str, ...],
) -> None:
    """406 with RabbitMQ's ``inequivalent arg`` text on the first differing key."""
    for key in keys:
        a, b = received.get(key), current.get(key)
        if a != b:
            raise PreconditionFailed(
                f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{vhost}': "
                f"received {_describe(a)} but current is {_describe(b)}"
            )


def assert_flag(kind: str, name: str, vhost: str, flag: str, received: Any, current: Any) -> None:
    """406 when a declare flag (durable, type, …) differs from the existing entity."""
    if received != current:

        def shown(v: Any) -> str:
            return str(v).lower() if isinstance(v, bool) else str(v)

        raise PreconditionFailed(
            f"inequivalent arg '{flag}' for {kind} '{name}' in vhost '{vhost}': "
            f"received '{shown(received)}' but current is '{shown(current)}'"
        )
