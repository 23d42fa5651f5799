"""Content-header properties: fields the broker reads, raw bytes kept as they are."""

from __future__ import annotations

import datetime
import decimal

import pytest
from pamqp import commands

from cavalcade.domain.properties import MalformedProperties, parse_properties


def _raw(**kw: object) -> bytes:
    props = commands.Basic.Properties(**kw)  # type: ignore[arg-type]
    encoded = props.marshal()
    return encoded


def test_reads_the_fields_the_broker_acts_on() -> None:
    raw = _raw(
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "a": 1,
            "b": "x",
            "when": datetime.datetime(2024, 1, 1),
            "d": decimal.Decimal("1.5"),
        },
        delivery_mode=2,
        priority=7,
        correlation_id="c-1",
        reply_to="r",
        expiration="60000",
        message_id="m-1",
        timestamp=datetime.datetime(2024, 1, 1),
        message_type="t",
        user_id="guest",
        app_id="app",
    )
    p = parse_properties(raw)
    assert p.raw == raw
    assert p.content_type == "application/json"
    assert p.persistent and p.priority == 7
    assert p.correlation_id == "c-1" and p.message_id == "m-1"
    assert p.expiration == "60000" and p.user_id == "guest"
    assert p.headers()["a"] == 1 and p.headers()["b"] == "x"


def test_no_properties() -> None:
    p = parse_properties(b"\x00\x00")
    assert p.delivery_mode is None and p.headers() == {}
    assert not p.persistent


def test_undecodable_headers_route_as_empty() -> None:
    # A table with a type letter pamqp does not know ('Z'): kept raw, routed as empty.
    table = b"\x01kZ"
    raw = b"\x20\x00" + len(table).to_bytes(4, "big") + table
    p = parse_properties(raw)
    assert p.headers_raw is not None and p.headers() == {}


@pytest.mark.parametrize(
    "raw",
    [
        b"\x80\x00\x05abc",  # short string runs past the end
        b"\x20\x00\x00\x00\x00\x10ab",  # table runs past the end
        b"\x00\x00junk",  # trailing bytes
        b"\x00",  # no flags
    ],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedProperties):
        parse_properties(raw)


def test_the_same_bytes_parse_to_the_same_fields_each_time() -> None:
    """Parsed property lists are kept by their bytes: a repeat gets the same answer,
    other bytes their own."""
    a, b = _raw(content_type="a", delivery_mode=2), _raw(content_type="b", priority=3)
    first = parse_properties(a)
    assert parse_properties(bytes(a)) is first
    other = parse_properties(b)
    assert (other.content_type, other.priority, other.delivery_mode) == ("b", 3, None)
    assert (first.content_type, first.delivery_mode) == ("a", 2)
    with pytest.raises(MalformedProperties):
        parse_properties(a + b"x")
