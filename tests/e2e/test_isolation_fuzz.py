"""Differential fuzzing: generated names, routing keys, property values, header tables and
binding arguments go to Cavalcade and to RabbitMQ; reply codes and what comes back must
match. CI-sized (a few dozen examples per test); each test prints how many cases it ran and
how many outcomes matched."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands

from .conftest import RawClient, RawClosed, parse_url
from .wire import method, publish, reply

EXAMPLES = 60
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# Names: anything UTF-8 (NUL, spaces, CR/LF, non-ASCII), kept under 255 bytes with a prefix.
name_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
).filter(lambda s: len(s.encode()) <= 200)
short_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
header_values = st.one_of(
    short_text,
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.booleans(),
)
header_tables = st.dictionaries(
    st.text(alphabet="abcxyz\x00 é", min_size=1, max_size=4), header_values, max_size=4
)


class Pair:
    """One raw connection to each broker, reopened after a connection-level close."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.clients: dict[str, RawClient] = {}
        self.counts: dict[str, list[int]] = {}

    def client(self, broker: str) -> RawClient:
        c = self.clients.get(broker)
        if c is None:
            c = RawClient(parse_url(self.urls[broker]))
            c.handshake()
            c.open_channel(1)
            self.clients[broker] = c
        return c

    def drop(self, broker: str) -> None:
        c = self.clients.pop(broker, None)
        if c is not None:
            c.close()

    def both(self, label: str, scenario: Callable[[RawClient, str], Any]) -> None:
        outcomes = {}
        tag = uuid.uuid4().hex[:8]
        for broker in self.urls:
            try:
                outcomes[broker] = scenario(self.client(broker), tag)
            except (RawClosed, TimeoutError) as exc:
                outcomes[broker] = ("gone", type(exc).__name__)
            if outcomes[broker] and outcomes[broker][0] in ("connection", "gone", "eof"):
                self.drop(broker)
        count = self.counts.setdefault(label, [0, 0])
        count[0] += 1
        assert outcomes["cavalcade"] == outcomes["rabbitmq"], outcomes
        count[1] += 1

    def close(self) -> None:
        for b in list(self.clients):
            self.drop(b)


@pytest.fixture(scope="module")
def pair(cavalcade_url: str, rabbitmq_url: str):
    p = Pair({"cavalcade": cavalcade_url, "rabbitmq": rabbitmq_url})
    yield p
    p.close()
    for label, (cases, matched) in p.counts.items():
        print(f"\nfuzz {label}: {cases} cases generated, {matched} outcomes matched")


def _get(c: RawClient, queue: str) -> tuple[Any, ...]:
    """basic.get (no-ack): (exchange, routing key, property bytes, body) or "empty"."""
    c.send_raw(method(1, commands.Basic.Get, queue=queue, no_ack=True))
    kind, got = reply(c)
    if kind != "ok":
        return (kind, got)
    if isinstance(got, commands.Basic.GetEmpty):
        return ("empty",)
    _, _, payload = c.recv_raw_frame()
    size = struct.unpack_from(">Q", payload, 4)[0]
    body = b""
    while len(body) < size:
        body += c.recv_raw_frame()[2]
    return ("ok", got.exchange, got.routing_key, bytes(payload[12:]), body)


@SETTINGS
@given(
    name=name_text,
    message_id=short_text,
    correlation_id=short_text,
    content_type=short_text,
    headers=header_tables,
    body=st.binary(max_size=64),
)
def test_fuzz_names_and_properties(
    pair, name, message_id, correlation_id, content_type, headers, body
):
    def scenario(c: RawClient, tag: str) -> tuple[Any, ...]:
        full = f"fz.{tag}.{name}"
        c.send_raw(method(1, commands.Queue.Declare, queue=full))
        kind, ok = reply(c)
        if kind != "ok":
            return (kind, ok)
        returned = ok.queue
        props = commands.Basic.Properties(
            message_id=message_id,
            correlation_id=correlation_id,
            content_type=content_type,
            headers=headers or None,
            delivery_mode=2,
        )
        c.send_raw(publish(1, "", returned, body, props))
        got = _get(c, returned)
        c.send_raw(method(1, commands.Queue.Delete, queue=returned))
        reply(c)
        return ("ok", returned.replace(tag, "TAG"), got)

    pair.both("names and properties", scenario)


@SETTINGS
@given(
    x_match=st.sampled_from(["all", "any"]),
    binding=header_tables,
    message=header_tables,
    routing_key=short_text,
)
def test_fuzz_headers_bindings(pair, x_match, binding, message, routing_key):
    def scenario(c: RawClient, tag: str) -> tuple[Any, ...]:
        ex, q = f"fz.hx.{tag}", f"fz.hq.{tag}"
        c.send_raw(
            method(
                1,
                commands.Exchange.Declare,
                exchange=ex,
                exchange_type="headers",
                auto_delete=False,
            )
        )
        assert reply(c)[0] == "ok"
        c.send_raw(method(1, commands.Queue.Declare, queue=q))
        assert reply(c)[0] == "ok"
        args = {"x-match": x_match, **binding}
        c.send_raw(method(1, commands.Queue.Bind, queue=q, exchange=ex, arguments=args))
        bound = reply(c)
        got: tuple[Any, ...] = ("unbound",)
        if bound[0] == "ok":
            c.send_raw(
                publish(
                    1, ex, routing_key, b"m", commands.Basic.Properties(headers=message or None)
                )
            )
            got = _get(c, q)
        c.send_raw(method(1, commands.Exchange.Delete, exchange=ex))
        reply(c)
        c.send_raw(method(1, commands.Queue.Delete, queue=q))
        reply(c)
        return (bound[0], got[0], got[2:3] if got[0] == "ok" else ())

    pair.both("headers bindings", scenario)


words = st.sampled_from(["a", "b", "c", "", "*", "#", "é", "a\x00", "x y"])


@SETTINGS
@given(
    pattern=st.lists(words, min_size=0, max_size=4).map(".".join),
    key=st.lists(st.sampled_from(["a", "b", "c", "", "é", "a\x00", "x y"]), max_size=4).map(
        ".".join
    ),
    arguments=st.dictionaries(st.text(alphabet="ab\x00", max_size=3), short_text, max_size=2),
)
def test_fuzz_topic_routing_keys_and_binding_arguments(pair, pattern, key, arguments):
    def scenario(c: RawClient, tag: str) -> tuple[Any, ...]:
        q = f"fz.tq.{tag}"
        c.send_raw(method(1, commands.Queue.Declare, queue=q, exclusive=True))
        assert reply(c)[0] == "ok"
        c.send_raw(
            method(
                1,
                commands.Queue.Bind,
                queue=q,
                exchange="amq.topic",
                routing_key=pattern,
                arguments=arguments,
            )
        )
        bound = reply(c)
        got: tuple[Any, ...] = ("unbound",)
        if bound[0] == "ok":
            c.send_raw(publish(1, "amq.topic", key, b"t"))
            got = _get(c, q)
            c.send_raw(
                method(
                    1,
                    commands.Queue.Unbind,
                    queue=q,
                    exchange="amq.topic",
                    routing_key=pattern,
                    arguments=arguments,
                )
            )
            reply(c)
        c.send_raw(method(1, commands.Queue.Delete, queue=q))
        reply(c)
        return (bound[0], got[0], got[2:3] if got[0] == "ok" else ())

    pair.both("topic routing keys and binding arguments", scenario)
