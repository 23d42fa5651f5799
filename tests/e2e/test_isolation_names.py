"""Every name and value AMQP allows is stored and returned byte-exact, as on RabbitMQ:
spaces, non-ASCII, NUL, long argument tables; CR/LF stripped from declared names; only
malformed UTF-8 is refused (501)."""

from __future__ import annotations

import secrets
import uuid

import pytest
from pamqp import commands

from .conftest import RawClient
from .wire import method, publish, queue_declare_bytes, reply


def _name(suffix: str) -> str:
    return f"iso.{uuid.uuid4().hex[:8]}.{suffix}"


def _client(raw) -> RawClient:
    c = raw()
    c.handshake()
    c.open_channel(1)
    return c


def _declare(c: RawClient, name: str, **kw):
    c.send_raw(method(1, commands.Queue.Declare, queue=name, **kw))
    return reply(c)


def _delete(c: RawClient, name: str) -> None:
    c.send_raw(method(1, commands.Queue.Delete, queue=name))
    reply(c)


@pytest.mark.parametrize(
    "suffix",
    ["with space", "€" * 80, "nul\x00inside", "\x00", "tab\tand\x7f", "\U0010ffff0esc"],
    ids=["space", "euro", "nul", "only-nul", "controls", "escape-char"],
)
def test_queue_names_declare_route_and_return(raw, suffix):
    c = _client(raw)
    name = _name(suffix)
    while len(name.encode()) > 255:
        name = name[:-1]
    kind, ok = _declare(c, name)
    assert kind == "ok" and ok.queue == name
    # passive finds it, the default exchange routes to it, get returns key and properties
    kind, ok = _declare(c, name, passive=True)
    assert kind == "ok" and ok.queue == name
    props = commands.Basic.Properties(message_id="m\x00" + suffix[:50], correlation_id="\x00")
    c.send_raw(publish(1, "", name, b"body\x00", props))
    c.send_raw(method(1, commands.Basic.Get, queue=name, no_ack=True))
    kind, got = reply(c)
    assert kind == "ok" and isinstance(got, commands.Basic.GetOk), got
    assert got.routing_key == name
    properties, body = c.recv_content()
    assert body == b"body\x00"
    assert properties.message_id == props.message_id
    assert properties.correlation_id == "\x00"
    _delete(c, name)


def test_255_byte_non_ascii_queue_name(raw):
    c = _client(raw)
    name = "€" * 85  # 255 bytes
    kind, ok = _declare(c, name)
    assert kind == "ok" and ok.queue == name
    _delete(c, name)


def test_crlf_stripped_from_declared_queue_and_exchange_names(raw):
    c = _client(raw)
    base = _name("crlf")
    kind, ok = _declare(c, base + "\r\nx")
    assert kind == "ok" and ok.queue == base + "x"
    c.send_raw(method(1, commands.Exchange.Declare, exchange=base + "\r\n", exchange_type="fanout"))
    assert reply(c)[0] == "ok"
    c.send_raw(method(1, commands.Exchange.Declare, exchange=base, passive=True))
    assert reply(c)[0] == "ok"
    c.send_raw(method(1, commands.Exchange.Delete, exchange=base + "\n"))
    assert reply(c)[0] == "ok"
    _delete(c, base + "x")


def test_malformed_utf8_name_is_501(raw):
    c = _client(raw)
    c.send_raw(queue_declare_bytes(1, b"bad\xffname"))
    assert reply(c) == ("connection", 501)


def test_nul_in_exchange_name_and_headers_binding(raw):
    c = _client(raw)
    ex, q = _name("x\x00h"), _name("q\x00h")
    c.send_raw(method(1, commands.Exchange.Declare, exchange=ex, exchange_type="headers"))
    assert reply(c)[0] == "ok"
    assert _declare(c, q)[0] == "ok"
    args = {"x-match": "all", "k\x00ey": "v\x00al"}
    c.send_raw(method(1, commands.Queue.Bind, queue=q, exchange=ex, arguments=args))
    assert reply(c)[0] == "ok"
    for value, routed in (("v\x00al", True), ("v", False)):
        props = commands.Basic.Properties(headers={"k\x00ey": value})
        c.send_raw(publish(1, ex, "rk\x00", b"x", props))
        c.send_raw(method(1, commands.Basic.Get, queue=q, no_ack=True))
        kind, got = reply(c)
        assert kind == "ok"
        assert isinstance(got, commands.Basic.GetOk) is routed, (value, got)
        if routed:
            assert got.exchange == ex and got.routing_key == "rk\x00"
            c.recv_content()
    c.send_raw(method(1, commands.Exchange.Delete, exchange=ex))
    assert reply(c)[0] == "ok"
    _delete(c, q)


def test_long_binding_arguments_bind_and_unbind(raw):
    c = _client(raw)
    q = _name("long")
    assert _declare(c, q)[0] == "ok"
    args = {"a": secrets.token_urlsafe(3000), "b": secrets.token_urlsafe(3000)}  # no TOAST
    c.send_raw(
        method(
            1, commands.Queue.Bind, queue=q, exchange="amq.direct", routing_key="k", arguments=args
        )
    )
    assert reply(c)[0] == "ok"
    c.send_raw(
        method(
            1, commands.Queue.Bind, queue=q, exchange="amq.direct", routing_key="k", arguments=args
        )
    )  # the same binding again: still one
    assert reply(c)[0] == "ok"
    c.send_raw(publish(1, "amq.direct", "k", b"once"))
    c.send_raw(method(1, commands.Basic.Get, queue=q, no_ack=True))
    assert isinstance(reply(c)[1], commands.Basic.GetOk)
    c.recv_content()
    c.send_raw(method(1, commands.Basic.Get, queue=q, no_ack=True))
    assert isinstance(reply(c)[1], commands.Basic.GetEmpty)
    c.send_raw(
        method(
            1,
            commands.Queue.Unbind,
            queue=q,
            exchange="amq.direct",
            routing_key="k",
            arguments=args,
        )
    )
    assert reply(c)[0] == "ok"
    _delete(c, q)


def test_nul_in_consumer_tag_and_client_properties(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    q = _name("tag")
    assert _declare(c, q)[0] == "ok"
    c.send_raw(method(1, commands.Basic.Consume, queue=q, consumer_tag="t\x00ag"))
    kind, ok = reply(c)
    assert kind == "ok" and ok.consumer_tag == "t\x00ag"
    c.send_raw(method(1, commands.Basic.Cancel, consumer_tag="t\x00ag"))
    assert reply(c)[0] == "ok"
    _delete(c, q)
