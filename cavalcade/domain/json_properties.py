"""Message properties as the management API shows and takes them (JSON objects), to and
from the content-header property bytes the broker stores."""

from __future__ import annotations

import base64
import datetime
import decimal
import struct
from typing import Any

from pamqp import commands, header

from .properties import MalformedProperties, parse_properties

FIELDS = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def encode_properties(values: dict[str, Any]) -> bytes:
    """Property bytes (flags + list) for a JSON ``properties`` object; unknown keys are
    refused with ValueError, as RabbitMQ refuses them."""
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise ValueError(f"unknown property {key!r}")
        if value is None:
            continue
        if key == "timestamp":
            value = datetime.datetime.fromtimestamp(int(value), tz=datetime.UTC)
        elif key in ("delivery_mode", "priority"):
            value = int(value)
        elif key == "headers":
            if not isinstance(value, dict):
                raise ValueError("headers must be an object")
        else:
            value = str(value)
        kwargs[key] = value
    raw = header.ContentHeader(0, 0, commands.Basic.Properties(**kwargs)).marshal()
    return raw[12:]  # after class id, weight and body size


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime.datetime):
        return int(value.replace(tzinfo=value.tzinfo or datetime.UTC).timestamp())
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def decode_properties(raw: bytes) -> dict[str, Any]:
    """The properties present in ``raw`` as a JSON-ready object (RabbitMQ's shape)."""
    parse_properties(raw)  # raises MalformedProperties on nonsense
    frame_payload = struct.pack(">HHQ", 60, 0, 0) + raw
    content = header.ContentHeader()
    try:
        content.unmarshal(frame_payload)
    except Exception as exc:  # pamqp raises several kinds
        raise MalformedProperties(str(exc)) from exc
    props = content.properties
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(props, name, None)
        if value is None or (name == "headers" and not value):
            continue
        out[name] = _json(value)
    return out
