"""Behaviour that client libraries' own test suites rely on.

Each scenario here came out of running a client library's suite (pika, aiormq,
py-amqp/kombu, amqplib) against Cavalcade and RabbitMQ side by side: tolerant
unbinds, the order of queue.delete-ok and the server's basic.cancel, the order
of basic.return / basic.ack and the next synchronous reply, update-secret,
channel_max accounting, the default exchange under a passive declare and the
equivalence rules for exclusive queues.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands, header

from .conftest import channel_error, unique

pytestmark = pytest.mark.timeout(30)

LOCKED_TEXT = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'."


def frames_until(c, reply: type, channel: int) -> list:
    """Frames received on ``channel`` up to and including the first ``reply``."""
    out = []
    while True:
        ch, value = c.recv()
        if ch != channel:
            continue
        out.append(value)
        if isinstance(value, reply):
            return out


def channel_close() -> commands.Channel.Close:
    return commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)


def kinds(frames: list) -> list[str]:
    names = []
    for value in frames:
        if isinstance(value, header.ContentHeader):
            names.append("header")
        elif isinstance(value, pbody.ContentBody):
            names.append("body")
        else:
            names.append(value.name)
    return names


# --------------------------------------------------------------------------- #
# Unbinding what isn't there
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "case",
    [
        "queue-missing-queue",
        "queue-missing-exchange",
        "queue-missing-both",
        "queue-no-binding",
        "exchange-missing-destination",
        "exchange-missing-source",
        "exchange-missing-both",
    ],
)
def test_unbind_of_missing_entities_is_ok(conn, resources, case):
    ch = conn.channel()
    x = resources.exchange("unbind")
    ch.exchange_declare(x, "direct")
    q = resources.queue("unbind")
    ch.queue_declare(q)
    nq, nx, nx2 = unique("noq"), unique("nox"), unique("nox")
    ops = {
        "queue-missing-queue": lambda: ch.queue_unbind(nq, x, "rk"),
        "queue-missing-exchange": lambda: ch.queue_unbind(q, nx, "rk"),
        "queue-missing-both": lambda: ch.queue_unbind(nq, nx, "rk"),
        "queue-no-binding": lambda: ch.queue_unbind(q, x, "never-bound"),
        "exchange-missing-destination": lambda: ch.exchange_unbind(nx, x, "rk"),
        "exchange-missing-source": lambda: ch.exchange_unbind(x, nx, "rk"),
        "exchange-missing-both": lambda: ch.exchange_unbind(nx, nx2, "rk"),
    }
    ok = ops[case]()
    expected = pika.spec.Queue.UnbindOk if case.startswith("queue") else pika.spec.Exchange.UnbindOk
    assert isinstance(ok.method, expected)
    # The channel is still usable, and nothing was created on the way.
    assert ch.is_open
    ch.queue_declare(q, passive=True)
    for name in (nq, nx, nx2):
        probe = conn.channel()
        err = channel_error(probe, probe.queue_declare, name, passive=True)
        assert err.reply_code == 404
        probe = conn.channel()
        err = channel_error(probe, probe.exchange_declare, name, passive=True)
        assert err.reply_code == 404


def test_bind_of_missing_queue_is_404(conn, resources):
    ch = conn.channel()
    x = resources.exchange("bind-noq")
    ch.exchange_declare(x, "direct")
    nq = unique("noq")
    err = channel_error(ch, ch.queue_bind, nq, x, "rk")
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{nq}' in vhost '/'"


# --------------------------------------------------------------------------- #
# queue.delete of a consumed queue: delete-ok first, then basic.cancel
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("consumers", [1, 2])
def test_delete_ok_precedes_server_cancel(raw, resources, consumers):
    # RawClient advertises consumer_cancel_notify, so the server must cancel.
    c = raw()
    c.handshake()
    c.open_channel(1)
    for _ in range(5):
        q = resources.queue("del-consumed")
        c.rpc(commands.Queue.Declare(queue=q), commands.Queue.DeclareOk)
        tags = []
        for _ in range(consumers):
            ok = c.rpc(commands.Basic.Consume(queue=q), commands.Basic.ConsumeOk)
            tags.append(ok.consumer_tag)
        c.send(commands.Queue.Delete(queue=q), 1)
        frames = frames_until(c, commands.Queue.DeleteOk, 1)
        assert kinds(frames) == ["Queue.DeleteOk"], frames
        assert frames[-1].message_count == 0
        cancels = [c.expect(commands.Basic.Cancel, channel=1) for _ in tags]
        assert sorted(x.consumer_tag for x in cancels) == sorted(tags)
        # Nothing else is pending: the next reply on the channel is the ping's.
        c.send(commands.Basic.Qos(prefetch_count=0), 1)
        assert kinds(frames_until(c, commands.Basic.QosOk, 1)) == ["Basic.QosOk"]


# --------------------------------------------------------------------------- #
# basic.return (and the confirm) come before the next synchronous reply
# --------------------------------------------------------------------------- #

SYNC_METHODS = {
    "confirm.select": (lambda x: commands.Confirm.Select(), commands.Confirm.SelectOk),
    "queue.declare": (
        lambda x: commands.Queue.Declare(queue="", exclusive=True),
        commands.Queue.DeclareOk,
    ),
    "basic.qos": (lambda x: commands.Basic.Qos(prefetch_count=10), commands.Basic.QosOk),
    "exchange.declare-passive": (
        lambda x: commands.Exchange.Declare(exchange=x, passive=True),
        commands.Exchange.DeclareOk,
    ),
}

RETURN_FRAMES = ["Basic.Return", "header", "body"]


@pytest.mark.parametrize("sync", list(SYNC_METHODS))
def test_return_precedes_next_sync_reply(raw, resources, sync):
    c = raw()
    c.handshake()
    x = resources.exchange("unroutable")
    c.open_channel(1)
    c.rpc(commands.Exchange.Declare(exchange=x), commands.Exchange.DeclareOk)
    make, reply = SYNC_METHODS[sync]
    channel = 1
    for i in range(10):
        if sync == "confirm.select":  # a fresh channel each time, never in confirm mode yet
            channel = 2 + i
            c.open_channel(channel)
        c.publish(channel, x, "nowhere", f"m{i}".encode(), mandatory=True)
        c.send(make(x), channel)
        frames = frames_until(c, reply, channel)
        assert kinds(frames) == [*RETURN_FRAMES, reply.name], (i, frames)
        ret = frames[0]
        assert (ret.reply_code, ret.reply_text) == (312, "NO_ROUTE")
        assert (ret.exchange, ret.routing_key) == (x, "nowhere")
        assert frames[2].value == f"m{i}".encode()


@pytest.mark.parametrize("sync", list(SYNC_METHODS))
def test_return_then_ack_precede_next_sync_reply_with_confirms(raw, resources, sync):
    c = raw()
    c.handshake()
    x = resources.exchange("unroutable")
    c.open_channel(1)
    c.rpc(commands.Exchange.Declare(exchange=x), commands.Exchange.DeclareOk)
    c.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    make, reply = SYNC_METHODS[sync]
    for i in range(10):
        c.publish(1, x, "nowhere", f"m{i}".encode(), mandatory=True)
        c.send(make(x), 1)
        frames = frames_until(c, reply, 1)
        assert kinds(frames) == [*RETURN_FRAMES, "Basic.Ack", reply.name], (i, frames)
        ack = frames[3]
        assert (ack.delivery_tag, ack.multiple) == (i + 1, False)


# --------------------------------------------------------------------------- #
# connection.update-secret
# --------------------------------------------------------------------------- #


def test_update_secret_raw(raw, address):
    c = raw()
    c.handshake()
    c.send(commands.Connection.UpdateSecret(new_secret=address.password, reason="e2e"), 0)
    c.expect(commands.Connection.UpdateSecretOk, channel=0)
    # The connection carries on as before.
    c.open_channel(1)
    c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk, 1)


def test_update_secret_pika(conn, address):
    conn.update_secret(address.password, "e2e")
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)


# --------------------------------------------------------------------------- #
# channel_max limits how many channels are open, not their numbers
# --------------------------------------------------------------------------- #


def test_channel_number_above_channel_max_opens(raw):
    c = raw()
    c.handshake()
    assert c.tune.channel_max == 2047
    c.open_channel(3000)
    c.open_channel(65535)
    ok = c.rpc(commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk, 3000)
    c.rpc(commands.Queue.Delete(queue=ok.queue), commands.Queue.DeleteOk, 65535)
    c.rpc(channel_close(), commands.Channel.CloseOk, 3000)


@pytest.mark.parametrize("channel_max", [1, 5])
def test_opening_more_than_channel_max_channels_is_530(raw, channel_max):
    c = raw()
    c.handshake(channel_max=channel_max)
    numbers = [3000, *range(1, channel_max)]  # channel_max channels, one above the limit
    for n in numbers:
        c.open_channel(n)
    c.send(commands.Channel.Open(), channel_max + 1)
    close = c.expect(commands.Connection.Close, channel=0)
    assert close.reply_code == 530
    assert close.reply_text == (
        f"NOT_ALLOWED - number of channels opened ({channel_max}) has reached "
        f"the negotiated channel_max ({channel_max})"
    )
    # RabbitMQ reports class/method 0/0 here, Cavalcade channel.open (20/10):
    # both are fine for clients, so the ids are not asserted.
    c.send(commands.Connection.CloseOk(), 0)


def test_channel_freed_by_close_can_be_reused_under_channel_max(raw):
    c = raw()
    c.handshake(channel_max=2)
    c.open_channel(10)
    c.open_channel(20)
    c.rpc(channel_close(), commands.Channel.CloseOk, 10)
    c.open_channel(30)
    c.rpc(commands.Basic.Qos(prefetch_count=1), commands.Basic.QosOk, 30)


# --------------------------------------------------------------------------- #
# The default exchange
# --------------------------------------------------------------------------- #


def test_passive_declare_of_default_exchange_is_403(conn):
    ch = conn.channel()
    err = channel_error(ch, ch.exchange_declare, "", passive=True)
    assert err.reply_code == 403
    assert err.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


# --------------------------------------------------------------------------- #
# Redeclaring queues with other exclusive / durable / auto_delete flags
# --------------------------------------------------------------------------- #


def test_redeclare_exclusive_queue_as_non_exclusive_is_locked(conn):
    q = unique("excl")
    conn.channel().queue_declare(q, exclusive=True)
    ch = conn.channel()
    err = channel_error(ch, ch.queue_declare, q, exclusive=False)
    assert err.reply_code == 405
    assert err.reply_text.startswith(LOCKED_TEXT.format(q=q))
    # The queue is untouched and still the owner's.
    conn.channel().queue_declare(q, exclusive=True)


def test_redeclare_queue_as_exclusive_is_locked(conn, resources):
    q = resources.queue("nonexcl")
    conn.channel().queue_declare(q)
    ch = conn.channel()
    err = channel_error(ch, ch.queue_declare, q, exclusive=True)
    assert err.reply_code == 405
    assert err.reply_text.startswith(LOCKED_TEXT.format(q=q))
    conn.channel().queue_declare(q)


@pytest.mark.parametrize("durable", [True, False])
def test_redeclare_exclusive_queue_with_other_durable_is_ok(conn, durable):
    q = unique("excl-durable")
    ch = conn.channel()
    ch.queue_declare(q, exclusive=True, durable=durable)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    ok = ch.queue_declare(q, exclusive=True, durable=not durable)
    assert ok.method.queue == q
    assert ok.method.message_count == 1
    assert ch.basic_get(q, auto_ack=True)[2] == b"kept"


def test_redeclare_exclusive_queue_with_other_auto_delete_is_406(conn):
    q = unique("excl-autodel")
    conn.channel().queue_declare(q, exclusive=True, durable=True)
    ch = conn.channel()
    err = channel_error(ch, ch.queue_declare, q, exclusive=True, auto_delete=True)
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' "
        "in vhost '/': received 'true' but current is 'false'"
    )
