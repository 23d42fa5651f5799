"""Dead-lettering: the ``x-death`` header RabbitMQ writes, spliced into the raw properties.

Only the headers that dead-lettering changes are re-encoded; every other header
entry and property is copied byte for byte, so what a client put in survives.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterator
from typing import Any

from pamqp import decode

from .properties import MalformedProperties, parse_properties, rewrite_properties

# Fixed sizes of field-table values by type letter (variable ones are length-prefixed).
_FIXED = {
    "t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "U": 2, "I": 4, "i": 4, "l": 8, "L": 8,
    "f": 4, "d": 8, "D": 5, "T": 8, "V": 0,
}  # fmt: skip
_PREFIXED = frozenset("SxAF")


def table_entries(table: bytes) -> Iterator[tuple[str, bytes]]:
    """(key, raw entry bytes) of a field table given with its 4-byte length prefix."""
    (size,) = struct.unpack_from(">I", table, 0)
    pos, end = 4, 4 + size
    while pos < end:
        start = pos
        klen = table[pos]
        key = table[pos + 1 : pos + 1 + klen].decode("utf-8", "replace")
        pos += 1 + klen
        kind = chr(table[pos])
        pos += 1
        if kind in _FIXED:
            pos += _FIXED[kind]
        elif kind in _PREFIXED:
            (vlen,) = struct.unpack_from(">I", table, pos)
            pos += 4 + vlen
        else:
            raise MalformedProperties(f"unknown field type {kind!r} in headers")
        if pos > end:
            raise MalformedProperties("headers table entry runs past its end")
        yield key, table[start:pos]


def _shortstr(value: str) -> bytes:
    raw = value.encode()[:255]
    return bytes((len(raw),)) + raw


def encode_value(value: Any) -> bytes:
    """A field value as RabbitMQ types x-death: S, l, T, A, F, t, V."""
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"l" + struct.pack(">q", value)
    if isinstance(value, datetime.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return b"T" + struct.pack(">Q", int(stamp.timestamp()))
    if isinstance(value, dict):
        body = b"".join(_shortstr(k) + encode_value(v) for k, v in value.items())
        return b"F" + struct.pack(">I", len(body)) + body
    if isinstance(value, list | tuple):
        body = b"".join(encode_value(v) for v in value)
        return b"A" + struct.pack(">I", len(body)) + body
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"S" + struct.pack(">I", len(raw)) + raw


def _entry(key: str, value: Any) -> bytes:
    return _shortstr(key) + encode_value(value)


def _key_order(entry: tuple[str, bytes]) -> bytes:
    return entry[0].encode()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def dead_letter_properties(
    raw: bytes,
    *,
    queue: str,
    reason: str,
    exchange: str,
    routing_keys: list[str],
    now: datetime.datetime | None = None,
) -> bytes:
    """Properties of the dead-lettered copy: x-death updated, expiration moved into it."""
    props = parse_properties(raw)
    now = now or datetime.datetime.now(datetime.UTC)
    entries: list[tuple[str, bytes]] = (
        list(table_entries(props.headers_raw)) if props.headers_raw else []
    )
    existing: dict[str, bytes] = dict(entries)
    deaths: list[dict[str, Any]] = []
    if "x-death" in existing:
        try:
            _, decoded = decode.embedded_value(existing["x-death"][1 + existing["x-death"][0] :])
            if isinstance(decoded, list):
                deaths = [dict(d) for d in decoded if isinstance(d, dict)]
        except Exception:  # noqa: BLE001 - an x-death we cannot read is replaced
            deaths = []
    found = None
    for d in deaths:
        if _text(d.get("queue", "")) == queue and _text(d.get("reason", "")) == reason:
            found = d
            break
    if found is not None:
        deaths.remove(found)
        found["count"] = int(found.get("count", 1)) + 1
        for k, v in list(found.items()):
            if isinstance(v, bytes):
                found[k] = _text(v)
        deaths.insert(0, dict(sorted(found.items())))  # RabbitMQ re-sorts what it updates
    else:
        death: dict[str, Any] = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": now,
            "exchange": exchange,
            "routing-keys": routing_keys,
        }
        if props.expiration is not None:
            death["original-expiration"] = props.expiration
        deaths.insert(0, dict(sorted(death.items())) if deaths else death)
    updates = {"x-death": deaths}
    for key, value in (
        ("x-first-death-reason", reason),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", exchange),
    ):
        if key not in existing:
            updates[key] = value  # type: ignore[assignment]
    kept = [(key, raw_entry) for key, raw_entry in entries if key not in updates]
    added = [(k, _entry(k, v)) for k, v in updates.items()]
    # RabbitMQ writes the headers of a dead-lettered message sorted by key.
    body = b"".join(raw_entry for _, raw_entry in sorted(kept + added, key=_key_order))
    table = struct.pack(">I", len(body)) + body
    return rewrite_properties(raw, table, drop_expiration=props.expiration is not None)


def with_header(raw: bytes, key: str, value: Any) -> bytes:
    """The properties with one header set (entries sorted by key, as RabbitMQ re-encodes)."""
    props = parse_properties(raw)
    entries = list(table_entries(props.headers_raw)) if props.headers_raw else []
    kept = [(k, e) for k, e in entries if k != key] + [(key, _entry(key, value))]
    body = b"".join(e for _, e in sorted(kept, key=_key_order))
    return rewrite_properties(raw, struct.pack(">I", len(body)) + body, drop_expiration=False)


def with_delivery_count(message_properties: bytes, delivery_count: int) -> bytes:
    """A quorum queue's delivery: ``x-delivery-count`` = earlier deliveries (a long)."""
    try:
        return with_header(message_properties, "x-delivery-count", max(delivery_count - 1, 0))
    except MalformedProperties:
        return message_properties


# -- where a dead message goes ----------------------------------------------------

MAXLEN = "maxlen"
DELIVERY_LIMIT = "delivery_limit"
REJECTED = "rejected"
EXPIRED = "expired"
# The order a write batch dead-letters in (its copies get ids in this order).
BATCH_REASONS = (MAXLEN, DELIVERY_LIMIT, REJECTED)


def dead_letter_target(queue_args: dict[str, Any], routing_key: str) -> tuple[str, str] | None:
    """(exchange, routing key) a dead message of a queue with these arguments is
    published to: its ``x-dead-letter-exchange`` ("" is the default exchange) and
    ``x-dead-letter-routing-key`` (else its own key). None: the message is dropped."""
    dlx = queue_args.get("x-dead-letter-exchange")
    if not isinstance(dlx, str):
        return None
    key = queue_args.get("x-dead-letter-routing-key")
    return dlx, key if isinstance(key, str) else routing_key


def keeps_copy(reason: str, source_queue: int, target_queue: int) -> bool:
    """A copy back into its own queue is a cycle no client breaks unless the client
    rejected it: RabbitMQ drops those copies."""
    return reason == REJECTED or target_queue != source_queue


def copy_properties(
    raw: bytes, *, queue: str, reason: str, exchange: str, routing_key: str
) -> bytes:
    """Properties of the dead-lettered copy (x-death added); the original ones when they
    cannot be parsed (the copy is still made, as it was before)."""
    try:
        out = dead_letter_properties(
            raw, queue=queue, reason=reason, exchange=exchange, routing_keys=[routing_key]
        )
        parse_properties(out)
        return out
    except MalformedProperties:
        return raw
