"""exchange.declare/delete/bind/unbind and routing through every exchange type."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from .conftest import channel_error, get_all

pytestmark = pytest.mark.timeout(30)


def bodies(ch, queue: str) -> list[bytes]:
    return [b for _, _, b in get_all(ch, queue)]


def make_queue(ch, resources, name: str = "q") -> str:
    q = resources.queue(name)
    ch.queue_declare(q)
    return q


# --------------------------------------------------------------------------- #
# Routing
# --------------------------------------------------------------------------- #


def test_default_exchange_routes_by_queue_name(channel, resources):
    q = make_queue(channel, resources)
    channel.basic_publish("", q, b"hello")
    channel.basic_publish("", q + ".other", b"lost")
    assert bodies(channel, q) == [b"hello"]


def test_direct_routing(channel, resources):
    x = resources.exchange("direct")
    channel.exchange_declare(x, "direct")
    q1 = make_queue(channel, resources, "d1")
    q2 = make_queue(channel, resources, "d2")
    channel.queue_bind(q1, x, "red")
    channel.queue_bind(q2, x, "green")
    channel.queue_bind(q2, x, "red")  # two bindings, one queue
    channel.queue_bind(q2, x, "red")  # duplicate binding is idempotent
    for key in ("red", "green", "blue", "RED"):
        channel.basic_publish(x, key, key.encode())
    assert bodies(channel, q1) == [b"red"]
    assert bodies(channel, q2) == [b"red", b"green"]


def test_fanout_ignores_routing_key(channel, resources):
    x = resources.exchange("fanout")
    channel.exchange_declare(x, "fanout")
    qs = [make_queue(channel, resources, f"f{i}") for i in range(3)]
    for i, q in enumerate(qs):
        channel.queue_bind(q, x, f"key-{i}")
    channel.basic_publish(x, "anything", b"m1")
    channel.basic_publish(x, "", b"m2")
    for q in qs:
        assert bodies(channel, q) == [b"m1", b"m2"]


TOPIC_KEYS = ["a", "c", "a.b", "b.b", "a.c", "a.b.c", "a.x.c", "a.b.c.d", ""]
TOPIC_CASES = {
    "a.*": {"a.b", "a.c"},
    "a.#": {"a", "a.b", "a.c", "a.b.c", "a.x.c", "a.b.c.d"},
    "#": set(TOPIC_KEYS),
    "*.b": {"a.b", "b.b"},
    "a.*.c": {"a.b.c", "a.x.c"},
    "a.#.c": {"a.c", "a.b.c", "a.x.c"},
    "*": {"a", "c"},
    "#.c": {"c", "a.c", "a.b.c", "a.x.c"},
    "a.b.c": {"a.b.c"},
    "*.*": {"a.b", "b.b", "a.c"},
    "*.#": set(TOPIC_KEYS) - {""},
    "#.*": set(TOPIC_KEYS) - {""},
    "a.b.#": {"a.b", "a.b.c", "a.b.c.d"},
}


def test_topic_patterns(channel, resources):
    x = resources.exchange("topic")
    channel.exchange_declare(x, "topic")
    queues = {}
    for pattern in TOPIC_CASES:
        q = make_queue(channel, resources, "t")
        channel.queue_bind(q, x, pattern)
        queues[pattern] = q
    for key in TOPIC_KEYS:
        channel.basic_publish(x, key, key.encode())
    failures = {}
    for pattern, expected in TOPIC_CASES.items():
        got = [b.decode() for b in bodies(channel, queues[pattern])]
        if set(got) != expected or len(got) != len(expected):
            failures[pattern] = (sorted(got), sorted(expected))
        # Delivery order follows publish order.
        assert got == [k for k in TOPIC_KEYS if k in set(got)]
    assert not failures, failures


def test_topic_one_message_per_queue_with_overlapping_bindings(channel, resources):
    x = resources.exchange("topic")
    channel.exchange_declare(x, "topic")
    q = make_queue(channel, resources)
    for pattern in ("a.*", "a.#", "#", "a.b"):
        channel.queue_bind(q, x, pattern)
    channel.basic_publish(x, "a.b", b"once")
    assert bodies(channel, q) == [b"once"]


HEADER_BINDINGS = {
    "all": {"x-match": "all", "a": "1", "b": 2},
    "any": {"x-match": "any", "a": "1", "b": 2},
    "default": {"a": "1"},  # no x-match means all
}
HEADER_MESSAGES = [
    ("both", {"a": "1", "b": 2}, {"all", "any", "default"}),
    ("a-only", {"a": "1"}, {"any", "default"}),
    ("b-and-extra", {"b": 2, "c": 3}, {"any"}),
    ("wrong-value", {"a": "2", "b": 3}, set()),
    ("superset", {"a": "1", "b": 2, "z": "zz"}, {"all", "any", "default"}),
    ("no-headers", None, set()),
]


@pytest.mark.parametrize("exchange_name", [None, "amq.headers", "amq.match"])
def test_headers_exchange(channel, resources, exchange_name):
    if exchange_name is None:
        x = resources.exchange("headers")
        channel.exchange_declare(x, "headers")
    else:
        x = exchange_name
    queues = {}
    for label, args in HEADER_BINDINGS.items():
        q = make_queue(channel, resources, f"h-{label}")
        channel.queue_bind(q, x, "", arguments=args)
        queues[label] = q
    try:
        for body, headers, _ in HEADER_MESSAGES:
            channel.basic_publish(
                x, "ignored", body.encode(), pika.BasicProperties(headers=headers)
            )
        for label, q in queues.items():
            expected = [b.encode() for b, _, targets in HEADER_MESSAGES if label in targets]
            assert bodies(channel, q) == expected, label
    finally:
        if exchange_name is not None:
            for label, q in queues.items():
                channel.queue_unbind(q, x, "", arguments=HEADER_BINDINGS[label])


def test_headers_unbind_needs_same_arguments(channel, resources):
    x = resources.exchange("headers")
    channel.exchange_declare(x, "headers")
    q = make_queue(channel, resources)
    args = {"x-match": "all", "k": "v"}
    channel.queue_bind(q, x, "", arguments=args)
    channel.queue_unbind(q, x, "", arguments={"x-match": "all", "k": "other"})  # no-op
    channel.basic_publish(x, "", b"1", pika.BasicProperties(headers={"k": "v"}))
    assert bodies(channel, q) == [b"1"]
    channel.queue_unbind(q, x, "", arguments=args)
    channel.basic_publish(x, "", b"2", pika.BasicProperties(headers={"k": "v"}))
    assert bodies(channel, q) == []


def test_queue_unbind_stops_routing(channel, resources):
    x = resources.exchange("direct")
    channel.exchange_declare(x, "direct")
    q = make_queue(channel, resources)
    channel.queue_bind(q, x, "k")
    channel.basic_publish(x, "k", b"before")
    channel.queue_unbind(q, x, "k")
    channel.basic_publish(x, "k", b"after")
    assert bodies(channel, q) == [b"before"]
    # Unbinding a binding that doesn't exist is fine.
    channel.queue_unbind(q, x, "never-bound")


def test_publish_then_purge_on_one_channel_purges_it(channel, resources):
    """A publish without confirms is routed before the channel's next method: purge-ok
    counts it and nothing arrives after the purge (RabbitMQ's order)."""
    q = make_queue(channel, resources)
    for i in range(20):
        channel.basic_publish("", q, b"m%d" % i)
    assert channel.queue_purge(q).method.message_count == 20
    assert bodies(channel, q) == []


def test_exchange_to_exchange_binding(channel, resources):
    src = resources.exchange("src")
    dst = resources.exchange("dst")
    channel.exchange_declare(src, "topic")
    channel.exchange_declare(dst, "fanout")
    q = make_queue(channel, resources)
    channel.queue_bind(q, dst, "")
    channel.exchange_bind(destination=dst, source=src, routing_key="orders.*")
    channel.basic_publish(src, "orders.new", b"routed")
    channel.basic_publish(src, "billing.new", b"not-routed")
    assert bodies(channel, q) == [b"routed"]
    channel.exchange_unbind(destination=dst, source=src, routing_key="orders.*")
    channel.basic_publish(src, "orders.new", b"after-unbind")
    assert bodies(channel, q) == []


def test_exchange_binding_chain_delivers_once(channel, resources):
    """src -> a -> q and src -> b -> q: the queue gets one copy."""
    src, a, b = (resources.exchange(n) for n in ("src", "a", "b"))
    for x in (src, a, b):
        channel.exchange_declare(x, "fanout")
    q = make_queue(channel, resources)
    channel.exchange_bind(a, src)
    channel.exchange_bind(b, src)
    channel.queue_bind(q, a)
    channel.queue_bind(q, b)
    channel.basic_publish(src, "", b"one")
    assert bodies(channel, q) == [b"one"]


def test_internal_exchange_routes_via_binding_but_rejects_publish(conn, resources):
    ch = conn.channel()
    public = resources.exchange("public")
    internal = resources.exchange("internal")
    ch.exchange_declare(public, "direct")
    ch.exchange_declare(internal, "fanout", internal=True)
    q = make_queue(ch, resources)
    ch.queue_bind(q, internal)
    ch.exchange_bind(internal, public, "k")
    ch.basic_publish(public, "k", b"via-binding")
    assert bodies(ch, q) == [b"via-binding"]
    err = channel_error(ch, ch.basic_publish, internal, "k", b"direct")
    assert err.reply_code == 403
    assert err.reply_text == (
        f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
    )
    # Connection still usable.
    ch2 = conn.channel()
    assert bodies(ch2, q) == []


# --------------------------------------------------------------------------- #
# Declare / delete
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name,kind",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_predeclared_exchanges(conn, name, kind):
    ch = conn.channel()
    ch.exchange_declare(name, passive=True)
    # Re-declaring with the same (durable) definition is fine.
    ch.exchange_declare(name, kind, durable=True)
    other = "fanout" if kind != "fanout" else "direct"
    err = channel_error(ch, ch.exchange_declare, name, other, durable=True)
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' "
        f"in vhost '/': received '{other}' but current is '{kind}'"
    )


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_passive_and_delete(channel, resources, kind):
    x = resources.exchange(kind)
    channel.exchange_declare(x, kind, durable=True)
    channel.exchange_declare(x, passive=True)
    channel.exchange_declare(x, kind, durable=True)  # idempotent
    channel.exchange_delete(x)
    err = channel_error(channel, channel.exchange_declare, x, passive=True)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def test_passive_declare_missing_exchange_404(conn):
    ch = conn.channel()
    err = channel_error(ch, ch.exchange_declare, "e2e.no-such-exchange", passive=True)
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no exchange 'e2e.no-such-exchange' in vhost '/'"
    assert (err.args[0], conn.is_open) == (404, True)
    conn.channel().exchange_declare("amq.direct", passive=True)


@pytest.mark.parametrize(
    "first,second,arg,received,current",
    [
        ({"exchange_type": "direct"}, {"exchange_type": "topic"}, "type", "topic", "direct"),
        (
            {"exchange_type": "direct"},
            {"exchange_type": "direct", "durable": True},
            "durable",
            "true",
            "false",
        ),
        (
            {"exchange_type": "direct"},
            {"exchange_type": "direct", "auto_delete": True},
            "auto_delete",
            "true",
            "false",
        ),
    ],
)
def test_inequivalent_redeclare_406(conn, resources, first, second, arg, received, current):
    ch = conn.channel()
    x = resources.exchange("ineq")
    ch.exchange_declare(x, **first)
    err = channel_error(ch, ch.exchange_declare, x, **second)
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange '{x}' in vhost '/': "
        f"received '{received}' but current is '{current}'"
    )
    conn.channel().exchange_declare(x, passive=True)


def test_inequivalent_arguments_406(conn, resources):
    ch = conn.channel()
    x = resources.exchange("ineq-args")
    ch.exchange_declare(x, "direct")
    err = channel_error(
        ch, ch.exchange_declare, x, "direct", arguments={"alternate-exchange": "ae"}
    )
    assert err.reply_code == 406
    assert err.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}'"
    )


@pytest.mark.parametrize("name", ["amq.foo", "amq.direct.sub"])
def test_declare_reserved_amq_prefix_403(conn, name):
    ch = conn.channel()
    err = channel_error(ch, ch.exchange_declare, name, "direct")
    assert err.reply_code == 403
    assert err.reply_text == (
        f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"
    )
    # Passive declare of a missing amq.* name is a plain 404.
    ch = conn.channel()
    err = channel_error(ch, ch.exchange_declare, name, passive=True)
    assert err.reply_code == 404


def test_default_exchange_is_untouchable(conn):
    ch = conn.channel()
    for op in (
        lambda c: c.exchange_declare("", "direct"),
        lambda c: c.exchange_delete(""),
        lambda c: c.queue_bind("e2e.whatever", "", "k"),
    ):
        err = channel_error(ch, op, ch)
        assert err.reply_code == 403
        assert err.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"
        ch = conn.channel()


def test_delete_predeclared_exchange_403(conn):
    ch = conn.channel()
    err = channel_error(ch, ch.exchange_delete, "amq.direct")
    assert err.reply_code == 403
    assert err.reply_text == (
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    )


def test_unknown_exchange_type_closes_connection_503(amqp_url, resources):
    from .conftest import connect, connection_error, safe_close

    c = connect(amqp_url)
    try:
        ch = c.channel()
        err = connection_error(ch, ch.exchange_declare, resources.exchange("bogus"), "bogus")
        assert err.reply_code == 503
        assert err.reply_text == "COMMAND_INVALID - unknown exchange type 'bogus'"
    finally:
        safe_close(c)


def test_delete_missing_exchange_is_ok(channel):
    channel.exchange_delete("e2e.never-declared-exchange")


def test_delete_if_unused(conn, resources):
    ch = conn.channel()
    x = resources.exchange("ifunused")
    ch.exchange_declare(x, "direct")
    q = make_queue(ch, resources)
    ch.queue_bind(q, x, "k")
    err = channel_error(ch, ch.exchange_delete, x, if_unused=True)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use"
    ch = conn.channel()
    ch.exchange_declare(x, passive=True)  # still there
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    err = channel_error(ch, ch.exchange_declare, x, passive=True)
    assert err.reply_code == 404


def test_delete_removes_bindings(channel, resources):
    x = resources.exchange("gone")
    channel.exchange_declare(x, "direct")
    q = make_queue(channel, resources)
    channel.queue_bind(q, x, "k")
    channel.exchange_delete(x)
    channel.exchange_declare(x, "direct")  # new exchange, no bindings
    channel.basic_publish(x, "k", b"x")
    assert bodies(channel, q) == []


def test_deleting_queue_removes_its_bindings(channel, resources):
    x = resources.exchange("x")
    channel.exchange_declare(x, "fanout")
    q = make_queue(channel, resources)
    channel.queue_bind(q, x)
    channel.queue_delete(q)
    channel.queue_declare(q)
    channel.basic_publish(x, "", b"x")
    assert bodies(channel, q) == []
    # With no bindings left the exchange can be deleted with if_unused.
    channel.exchange_delete(x, if_unused=True)


def test_auto_delete_exchange_goes_with_last_binding(conn, resources):
    ch = conn.channel()
    x = resources.exchange("autodel")
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.exchange_declare(x, passive=True)  # not deleted before it was ever used
    q = make_queue(ch, resources)
    ch.queue_bind(q, x, "a")
    ch.queue_bind(q, x, "b")
    ch.queue_unbind(q, x, "a")
    ch.exchange_declare(x, passive=True)  # one binding left
    ch.queue_unbind(q, x, "b")
    err = channel_error(ch, ch.exchange_declare, x, passive=True)
    assert err.reply_code == 404


def test_bind_errors_404(conn, resources):
    ch = conn.channel()
    q = make_queue(ch, resources)
    err = channel_error(ch, ch.queue_bind, q, "e2e.no-such-exchange", "k")
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no exchange 'e2e.no-such-exchange' in vhost '/'"
    ch = conn.channel()
    err = channel_error(ch, ch.queue_bind, "e2e.no-such-queue", "amq.direct", "k")
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no queue 'e2e.no-such-queue' in vhost '/'"
    ch = conn.channel()
    err = channel_error(ch, ch.exchange_bind, "e2e.no-such-exchange", "amq.direct", "k")
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no exchange 'e2e.no-such-exchange' in vhost '/'"
