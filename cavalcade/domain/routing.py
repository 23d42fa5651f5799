"""Exchange routing: which bindings a message matches (direct, fanout, topic, headers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})
DELAYED_TYPE = "x-delayed-message"  # routes as its ``x-delayed-type``, after ``x-delay`` ms


@dataclass(frozen=True, slots=True)
class BindingInfo:
    """One binding edge from an exchange to a queue (``queue_id``) or exchange."""

    source_id: int
    routing_key: str
    arguments: dict[str, Any]
    queue_id: int | None = None
    exchange_id: int | None = None


@dataclass(slots=True)
class ExchangeInfo:
    """An exchange as the router sees it."""

    id: int
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: list[BindingInfo] = field(default_factory=list)


@lru_cache(maxsize=4096)
def _topic_words(pattern: str) -> tuple[str, ...]:
    """Words of a key or pattern; the empty string has none (as on RabbitMQ)."""
    return tuple(pattern.split(".")) if pattern else ()


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic match: ``*`` is exactly one word, ``#`` zero or more words."""
    return _match(_topic_words(pattern), 0, _topic_words(routing_key), 0)


def _match(pat: tuple[str, ...], i: int, key: tuple[str, ...], j: int) -> bool:
    while i < len(pat):
        word = pat[i]
        if word == "#":
            if i == len(pat) - 1:
                return True
            return any(_match(pat, i + 1, key, k) for k in range(j, len(key) + 1))
        if j >= len(key):
            return False
        if word != "*" and word != key[j]:
            return False
        i += 1
        j += 1
    return j == len(key)


def headers_match(binding_args: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    """The headers exchange: ``x-match`` all (default) or any; ``x-`` keys are not matched."""
    headers = headers or {}
    mode = binding_args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode in ("any-with-x", "all-with-x")  # x- headers are matched too
    pairs = [
        (k, v)
        for k, v in binding_args.items()
        if k != "x-match" and (with_x or not k.startswith("x-"))
    ]
    if mode in ("any", "any-with-x"):
        return any(_header_equal(k, v, headers) for k, v in pairs)
    return all(_header_equal(k, v, headers) for k, v in pairs)


def _header_equal(key: str, expected: Any, headers: dict[str, Any]) -> bool:
    if key not in headers:
        return False
    if expected is None:
        return True  # a void value in the binding matches on presence alone
    actual = headers[key]
    if isinstance(actual, bytes) and isinstance(expected, str):
        actual = actual.decode(errors="replace")
    return bool(actual == expected)


Headers = Callable[[], dict[str, Any]]


def binding_matches(
    exchange_type: str, binding: BindingInfo, routing_key: str, headers: Headers
) -> bool:
    """Does ``binding`` on an exchange of ``exchange_type`` match this message?

    ``headers`` is called only for headers exchanges (decoding the table costs)."""
    if exchange_type == "fanout":
        return True
    if exchange_type == "topic":
        return topic_matches(binding.routing_key, routing_key)
    if exchange_type == "headers":
        return headers_match(binding.arguments, headers())
    return binding.routing_key == routing_key


def routing_type(ex: ExchangeInfo) -> str:
    """How an exchange matches: its type, or ``x-delayed-type`` for a delayed exchange."""
    if ex.type == DELAYED_TYPE:
        return str(ex.arguments.get("x-delayed-type", "direct"))
    return ex.type


def route(
    exchanges: dict[int, ExchangeInfo],
    start: ExchangeInfo,
    routing_key: str | tuple[str, ...],
    headers: Headers,
    by_name: dict[str, ExchangeInfo] | None = None,
) -> set[int]:
    """Queue ids reached from ``start``, following exchange-to-exchange bindings once
    each; when nothing matches, the ``alternate-exchange`` chain (needs ``by_name``).
    Several routing keys (``CC``/``BCC``) route as one message: each queue once."""
    if not isinstance(routing_key, str):
        return _route_keys(exchanges, start, routing_key, headers, by_name)
    queues: set[int] = set()
    seen = {start.id}
    pending = [start]
    while pending:
        ex = pending.pop()
        ex_type = routing_type(ex)
        for b in ex.bindings:
            if not binding_matches(ex_type, b, routing_key, headers):
                continue
            if b.queue_id is not None:
                queues.add(b.queue_id)
            elif b.exchange_id is not None and b.exchange_id not in seen:
                seen.add(b.exchange_id)
                dest = exchanges.get(b.exchange_id)
                if dest is not None:
                    pending.append(dest)
    if not queues and by_name is not None:
        alternate = start.arguments.get("alternate-exchange")
        ae = by_name.get(alternate) if isinstance(alternate, str) else None
        if ae is not None and ae.id not in seen:
            return route(exchanges, ae, routing_key, headers, _without(by_name, start.name))
    return queues


def _without(by_name: dict[str, ExchangeInfo], name: str) -> dict[str, ExchangeInfo]:
    """The name map minus one exchange: alternate-exchange cycles end."""
    return {k: v for k, v in by_name.items() if k != name}


def _route_keys(
    exchanges: dict[int, ExchangeInfo],
    start: ExchangeInfo,
    keys: tuple[str, ...],
    headers: Headers,
    by_name: dict[str, ExchangeInfo] | None,
) -> set[int]:
    """:func:`route` for several keys: the union, then the alternate exchange if empty."""
    queues: set[int] = set()
    for key in dict.fromkeys(keys):
        queues |= route(exchanges, start, key, headers)
    if not queues and by_name is not None:
        alternate = start.arguments.get("alternate-exchange")
        ae = by_name.get(alternate) if isinstance(alternate, str) else None
        if ae is not None and ae.id != start.id:
            return route(exchanges, ae, keys, headers, _without(by_name, start.name))
    return queues
