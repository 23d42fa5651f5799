"""RabbitMQ behaviours that the Java, Go and other clients' own suites test.

Each scenario runs on Cavalcade and on RabbitMQ with the same assertions.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
from pamqp import commands

from cavalcade.protocol.framing import encode_method

from .conftest import RawClosed, channel_error, drain, get_all, settle, unique

pytestmark = pytest.mark.timeout(30)


def _named(cls, field: str, value: str, **kw):
    """A method with a name pamqp's own validation would refuse (CR, LF)."""
    m = cls(**{field: "placeholder"}, **kw)
    setattr(m, field, value)
    return m


# --------------------------------------------------------------------------- #
# Sender-selected distribution
# --------------------------------------------------------------------------- #


def test_cc_bcc_route_and_bcc_is_stripped(conn, resources):
    ch = conn.channel()
    x, x2 = resources.exchange("cc"), resources.exchange("cc-topic")
    ch.exchange_declare(x, "direct")
    ch.exchange_declare(x2, "topic")
    ch.exchange_bind(x2, x, "to.topic")
    qs = [resources.queue(f"cc{i}") for i in range(4)]
    for q in qs:
        ch.queue_declare(q)
    ch.queue_bind(qs[0], x, "main")
    ch.queue_bind(qs[1], x, "copy")
    ch.queue_bind(qs[2], x2, "to.*")
    ch.queue_bind(qs[3], x, "blind")
    headers = {"CC": ["copy", "", 7, "to.topic"], "BCC": ["blind"], "other": "kept"}
    ch.confirm_delivery()
    ch.basic_publish(x, "main", b"m", pika.BasicProperties(headers=headers))
    for q in qs:
        got = get_all(ch, q)
        assert [b for _, _, b in got] == [b"m"], q
        assert got[0][1].headers == {"CC": ["copy", "", 7, "to.topic"], "other": "kept"}


@pytest.mark.parametrize(
    "key,value,kind", [("CC", "one", "longstr"), ("CC", 5, "signedint"), ("BCC", "x", "longstr")]
)
def test_cc_that_is_not_an_array_is_refused(conn, resources, key, value, kind):
    ch = conn.channel()
    q = resources.queue("cc-bad")
    ch.queue_declare(q)
    err = channel_error(
        ch, ch.basic_publish, "", q, b"m", pika.BasicProperties(headers={key: value})
    )
    assert err.reply_code == 406
    assert err.reply_text == (
        f'PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,"{key}",{kind}}}'
    )


# --------------------------------------------------------------------------- #
# Names, bindings, arguments
# --------------------------------------------------------------------------- #


def test_cr_lf_are_stripped_from_names(raw, conn, resources):
    q, x = unique("crlf"), unique("crlfx")
    resources.track_queue(q)
    resources.exchanges.append(x)
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send_raw(encode_method(1, _named(commands.Queue.Declare, "queue", q[:6] + "\r\n" + q[6:])))
    assert c.expect(commands.Queue.DeclareOk).queue == q
    c.send_raw(
        encode_method(
            1, _named(commands.Exchange.Declare, "exchange", x + "\n\r", exchange_type="fanout")
        )
    )
    c.expect(commands.Exchange.DeclareOk)
    c.send_raw(encode_method(1, _named(commands.Queue.Bind, "exchange", "\r" + x, queue=q)))
    c.expect(commands.Queue.BindOk)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(x, "", b"m")
    assert [b for _, _, b in get_all(ch, q)] == [b"m"]


def test_bind_without_queue_and_key_uses_last_queue_and_its_name(conn, resources):
    ch = conn.channel()
    x = resources.exchange("shortcut")
    ch.exchange_declare(x, "direct")
    q = resources.track_queue(ch.queue_declare("", exclusive=True).method.queue)
    ch.queue_bind("", x, "")
    ch.confirm_delivery()
    ch.basic_publish(x, q, b"by-name")
    ch.basic_publish(x, "", b"by-empty-key")
    assert [b for _, _, b in get_all(ch, q)] == [b"by-name"]
    ch.queue_unbind("", x, "")
    ch.basic_publish(x, q, b"gone")
    assert get_all(ch, q) == []


@pytest.mark.parametrize(
    "args,text",
    [
        (
            {"x-dead-letter-exchange": 5},
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'",
        ),
        (
            {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": 5},
            "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': "
            "{{unacceptable_type,signedint}}",
        ),
        (
            {"x-dead-letter-routing-key": "k"},
            "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': "
            "routing_key_but_no_dlx_defined",
        ),
    ],
    ids=["dlx-type", "key-type", "key-without-dlx"],
)
def test_dead_letter_arguments_are_validated(conn, resources, args, text):
    ch = conn.channel()
    q = resources.queue("dlargs")
    err = channel_error(ch, ch.queue_declare, q, arguments=args)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)


def test_dead_lettering_to_a_deleted_exchange_drops(conn, resources):
    ch = conn.channel()
    dlx, dlq, q = resources.exchange("dlx"), resources.queue("dlq"), resources.queue("src")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.exchange_delete(dlx)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    settle(conn)
    assert get_all(ch, q) == [] and get_all(ch, dlq) == []


@pytest.mark.parametrize(
    "value,reason",
    [
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 10", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("10x", '{leftover_string,"x"}'),
        ("1.5", '{leftover_string,".5"}'),
    ],
)
def test_invalid_expiration_is_refused(conn, resources, value, reason):
    ch = conn.channel()
    q = resources.queue("exp")
    ch.queue_declare(q)
    err = channel_error(ch, ch.basic_publish, "", q, b"m", pika.BasicProperties(expiration=value))
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - invalid expiration '{value}': {reason}"


@pytest.mark.parametrize("value", ["0", "+5", "007", "315360000000"])
def test_valid_expiration_is_taken(conn, resources, value):
    ch = conn.channel()
    q = resources.queue("exp-ok")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration=value))
    ch.queue_declare(q, passive=True)


@pytest.mark.parametrize(
    "mode,text",
    [
        (
            "foo",
            'Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x',
        ),
        (5, "Invalid x-match field type signedint (value 5); expected longstr"),
    ],
)
def test_headers_x_match_is_validated(conn, resources, mode, text):
    ch = conn.channel()
    x, q = resources.exchange("hdr"), resources.queue("hdr")
    ch.exchange_declare(x, "headers")
    ch.queue_declare(q)
    err = channel_error(ch, ch.queue_bind, q, x, "", arguments={"x-match": mode})
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - " + text


def test_headers_with_x_modes_match_x_headers(conn, resources):
    ch = conn.channel()
    x, q = resources.exchange("hdrx"), resources.queue("hdrx")
    ch.exchange_declare(x, "headers")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "", arguments={"x-match": "any-with-x", "x-tag": "a"})
    ch.confirm_delivery()
    ch.basic_publish(x, "", b"hit", pika.BasicProperties(headers={"x-tag": "a"}))
    ch.basic_publish(x, "", b"miss", pika.BasicProperties(headers={"x-tag": "b"}))
    assert [b for _, _, b in get_all(ch, q)] == [b"hit"]


@pytest.mark.parametrize("value,kind", [("5", "longstr"), (True, "bool")])
def test_consumer_priority_must_be_an_integer(conn, resources, value, kind):
    ch = conn.channel()
    q = resources.queue("prio")
    ch.queue_declare(q)
    err = channel_error(ch, ch.basic_consume, q, lambda *a: None, arguments={"x-priority": value})
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': "
        f'"expected integer, got {kind}"'
    )


@pytest.mark.parametrize("value", [2**40, -(2**40), -3])
def test_consumer_priority_any_integer(conn, resources, value):
    ch = conn.channel()
    q = resources.queue("prio-big")
    ch.queue_declare(q)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), arguments={"x-priority": value})
    ch.basic_publish("", q, b"m")
    assert drain(conn, lambda: bool(got))


# --------------------------------------------------------------------------- #
# Connections and channels
# --------------------------------------------------------------------------- #


def _start_ok(c, capabilities: dict) -> None:
    from .conftest import PROTOCOL_HEADER

    c.send_raw(PROTOCOL_HEADER)
    c.expect(commands.Connection.Start)
    c.send(
        commands.Connection.StartOk(
            client_properties={"product": "e2e", "capabilities": capabilities},
            mechanism="PLAIN",
            response="\0guest\0wrong-password",
            locale="en_US",
        )
    )


def test_login_failure_drops_the_socket_without_the_capability(raw):
    c = raw()
    _start_ok(c, {})
    with pytest.raises(RawClosed):
        c.recv()


def test_login_failure_closes_with_403_with_the_capability(raw):
    c = raw()
    _start_ok(c, {"authentication_failure_close": True})
    close = c.expect(commands.Connection.Close)
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused")


def test_both_sides_closing_a_channel_at_once(raw):
    """The server closes channel 1 (404) while the client closes it too: the client's
    close-ok for a channel the server already forgot is ignored."""
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(commands.Queue.Declare(queue=unique("missing"), passive=True), 1)
    c.send(commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), 1)
    close = c.expect(commands.Channel.Close, channel=1)
    assert close.reply_code == 404
    c.send(commands.Channel.CloseOk(), 1)
    c.send(commands.Channel.Open(), 2)
    while True:  # the close-ok for our own close may come first; nothing else may
        ch, value = c.recv()
        if isinstance(value, commands.Channel.OpenOk):
            assert ch == 2
            break
        assert isinstance(value, commands.Channel.CloseOk) and ch == 1, value
    c.rpc(
        commands.Exchange.Declare(exchange="amq.direct", passive=True),
        commands.Exchange.DeclareOk,
        2,
    )


# --------------------------------------------------------------------------- #
# QoS
# --------------------------------------------------------------------------- #


def test_no_ack_consumer_waits_on_a_full_channel_limit(conn, resources):
    """Java's QosTests.noAckObeysLimit: global prefetch 1 held by an ack-mode consumer
    stops a no-ack consumer on the same channel until the ack."""
    ch = conn.channel()
    q1, q2 = resources.queue("qos-ack"), resources.queue("qos-noack")
    ch.queue_declare(q1)
    ch.queue_declare(q2)
    ch.basic_qos(prefetch_count=1, global_qos=True)
    acked, free = [], []
    ch.basic_consume(q1, lambda c, m, p, b: acked.append(m))
    ch.basic_publish("", q1, b"a")
    assert drain(conn, lambda: len(acked) == 1)
    ch.basic_consume(q2, lambda c, m, p, b: free.append(b), auto_ack=True)
    ch.basic_publish("", q2, b"b")
    settle(conn, 0.5)
    assert free == []
    ch.basic_ack(acked[0].delivery_tag)
    assert drain(conn, lambda: free == [b"b"])


def test_no_ack_consumer_not_limited_by_prefetch(conn, resources):
    ch = conn.channel()
    q = resources.queue("qos-noack-free")
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=1)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    assert drain(conn, lambda: len(got) == 3)


# --------------------------------------------------------------------------- #
# Auto-delete exchanges
# --------------------------------------------------------------------------- #


def _exists(conn, exchange: str) -> bool:
    ch = conn.channel()
    try:
        ch.exchange_declare(exchange, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    ch.close()
    return True


@pytest.mark.parametrize(
    "case",
    [
        "unbind-e2e-source",
        "exchange-target-deleted",
        "queue-target-deleted",
        "cascade",
        "transient",
        "self-loop",
    ],
)
def test_auto_delete_exchange_goes_with_its_last_binding(conn, resources, case):
    ch = conn.channel()
    a, b, c = (resources.exchange(n) for n in ("ad-a", "ad-b", "ad-c"))
    q = resources.queue("ad")
    ch.queue_declare(q)
    durable = case != "transient"
    ch.exchange_declare(a, "fanout", auto_delete=True, durable=durable)
    ch.exchange_declare(b, "fanout", auto_delete=case == "cascade")
    if case in ("unbind-e2e-source", "transient"):
        ch.exchange_bind(b, a)
        ch.exchange_unbind(b, a)
        gone, kept = [a], [b]
    elif case == "exchange-target-deleted":
        ch.exchange_bind(b, a)
        ch.exchange_delete(b)
        gone, kept = [a], []
    elif case == "queue-target-deleted":
        ch.queue_bind(q, a)
        ch.queue_delete(q)
        gone, kept = [a], []
    elif case == "cascade":
        ch.exchange_declare(c, "fanout")
        ch.exchange_bind(b, a)
        ch.queue_bind(q, b)
        ch.exchange_bind(c, a)
        ch.exchange_delete(c)  # a keeps its binding to b
        assert _exists(conn, a)
        ch.queue_delete(q)  # b loses its last binding, then a its last one
        gone, kept = [a, b], []
    else:  # self-loop
        ch.exchange_bind(a, a)
        ch.queue_bind(q, a)
        ch.queue_delete(q)
        gone, kept = [], [a]  # still the source of its binding to itself
    for x in gone:
        assert not _exists(conn, x), x
    for x in kept:
        assert _exists(conn, x), x


# --------------------------------------------------------------------------- #
# TTL and dead-lettering
# --------------------------------------------------------------------------- #


def test_queue_ttl_dead_lettering_is_prompt(conn, resources):
    """Java's DeadLetterExchange.deadLetterQueueTTLPromptExpiry, shortened: messages
    published at intervals are dead-lettered in order, never before they are due. The
    lateness is printed (RabbitMQ: a few ms; the Java test allows TTL/50)."""
    import time

    ttl = 1000
    ch = conn.channel()
    dlx, dlq, q = resources.exchange("pdlx"), resources.queue("pdlq"), resources.queue("pttl")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "")
    ch.queue_declare(q, arguments={"x-message-ttl": ttl, "x-dead-letter-exchange": dlx})
    arrived: list[tuple[float, bytes]] = []
    ch.basic_consume(dlq, lambda c, m, p, b: arrived.append((time.monotonic(), b)), auto_ack=True)
    sent = {}
    for i in range(4):
        sent[str(i).encode()] = time.monotonic()
        ch.basic_publish("", q, str(i).encode())
        conn.process_data_events(time_limit=ttl / 8 / 1000)
    assert drain(conn, lambda: len(arrived) == 4, timeout=ttl / 1000 + 10)
    assert [b for _, b in arrived] == [b"0", b"1", b"2", b"3"]
    late = [round((t - sent[b]) * 1000 - ttl) for t, b in arrived]
    print("dead-lettered this many ms after due:", late)
    assert all(ms > -50 for ms in late), late  # never (much) before its TTL


def test_basic_get_does_not_take_a_waiting_auto_ack_consumers_message(conn, open_conn, resources):
    ch = conn.channel()
    q = resources.queue("get-vs-consumer")
    ch.queue_declare(q)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    other = open_conn().channel()
    other.confirm_delivery()
    for i in range(5):
        other.basic_publish("", q, str(i).encode())
        method, _, _ = other.basic_get(q, auto_ack=True)
        assert method is None, f"basic.get took message {i}"
    assert drain(conn, lambda: len(got) == 5)


@pytest.mark.parametrize("with_dlx", [False, True], ids=["no-dlx", "dlx"])
def test_max_length_counts_requeued_messages(conn, resources, with_dlx):
    """Java's QueueSizeLimit.queueSizeRequeue(WithDLX): a full queue, all taken unacked,
    one more published, then all requeued: the oldest (requeued) one is dropped."""
    ch = conn.channel()
    q, dlq = resources.queue("maxlen"), resources.queue("maxlen-dlq")
    args: dict = {"x-max-length": 3}
    if with_dlx:
        ch.queue_declare(dlq)
        args |= {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    ch.queue_declare(q, arguments=args)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, f"msg{i}".encode())
    for i in range(3):
        method, _, body = ch.basic_get(q)
        assert body == f"msg{i}".encode()
    ch.basic_publish("", q, b"msg3")
    ch.basic_nack(0, multiple=True, requeue=True)
    assert [b for _, _, b in get_all(ch, q)] == [b"msg1", b"msg2", b"msg3"]
    if with_dlx:
        dead = get_all(ch, dlq)
        assert [b for _, _, b in dead] == [b"msg0"]
        assert dead[0][1].headers["x-death"][0]["reason"] == "maxlen"


@pytest.mark.parametrize("global_qos", [False, True], ids=["per-consumer", "channel"])
def test_prefetch_one_is_fair_across_queues_on_one_channel(conn, resources, global_qos):
    """Java's QosTests.fairness: one channel, prefetch 1, a consumer on each of three
    full queues; after 99 acks every queue has had some of its messages consumed."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=global_qos)
    queues = [resources.queue(f"fair{i}") for i in range(3)]
    pending: list = []
    for q in queues:
        ch.queue_declare(q)
    pub = conn.channel()
    pub.confirm_delivery()
    for q in queues:
        for i in range(100):
            pub.basic_publish("", q, str(i).encode())
    for q in queues:
        ch.basic_consume(q, lambda c, m, p, b: pending.append(m))
    for _ in range(99):
        assert drain(conn, lambda: bool(pending))
        ch.basic_ack(pending.pop(0).delivery_tag)
    for q in queues:
        assert pub.queue_declare(q, passive=True).method.message_count < 100, q
