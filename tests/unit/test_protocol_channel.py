"""The channel's state machine over a fake transport and a fake broker: exact bytes."""

from __future__ import annotations

from pamqp import body as pamqp_body
from pamqp import commands, header
from pamqp import frame as pamqp_frame

from cavalcade.protocol.link import ChannelState
from cavalcade.storage.records import ClaimedMessage

from .fakes import Client, FakeQueue, method_bytes, until


def _channel_close(
    channel: int, code: int, text: str, class_id: int = 0, method_id: int = 0
) -> bytes:
    return method_bytes(
        channel,
        commands.Channel.Close(
            reply_code=code, reply_text=text, class_id=class_id, method_id=method_id
        ),
    )


def _content(channel: int, body: bytes, frame_max: int = 131072) -> bytes:
    """Header and body frames (no properties) as pamqp writes them."""
    out = pamqp_frame.marshal(
        header.ContentHeader(0, len(body), commands.Basic.Properties()), channel
    )
    chunk = frame_max - 8
    for i in range(0, len(body), chunk):
        out += pamqp_frame.marshal(pamqp_body.ContentBody(body[i : i + chunk]), channel)
    return bytes(out)


def _publish(c: Client, channel: int, routing_key: str, body: bytes, **kw: bool) -> None:
    c.send_method(channel, commands.Basic.Publish(exchange="", routing_key=routing_key, **kw))
    c.send(_content(channel, body))


async def _opened(frame_max: int = 131072) -> Client:
    c = Client()
    await c.handshake(frame_max=frame_max)
    await c.open_channel(1)
    return c


async def test_channel_open_and_close() -> None:
    c = await _opened()
    ch = c.conn.channels[1]
    assert ch.state is ChannelState.OPEN
    c.send_method(1, commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    # channel.close-ok
    assert await c.reply() == bytes.fromhex("0100010000000400140029ce")
    assert c.conn.channels == {}
    assert not ch.is_open and not ch.needs_teardown  # torn down
    await c.close()


async def test_second_open_on_an_open_channel_is_504() -> None:
    c = await _opened()
    c.send_method(1, commands.Channel.Open())
    assert c.transport.take() == method_bytes(
        0,
        commands.Connection.Close(
            reply_code=504,
            reply_text="CHANNEL_ERROR - second 'channel.open' seen",
            class_id=20,
            method_id=10,
        ),
    )
    await c.close()


async def test_soft_error_closes_the_channel_and_close_ok_forgets_it() -> None:
    c = await _opened()
    c.send_method(1, commands.Queue.Declare(queue="missing", passive=True))
    assert await c.reply() == _channel_close(
        1, 404, "NOT_FOUND - no queue 'missing' in vhost '/'", 50, 10
    )
    ch = c.conn.channels[1]
    assert ch.state is ChannelState.CLOSING
    # Anything but close / close-ok is dropped until the client's close-ok.
    c.send_method(1, commands.Basic.Qos(prefetch_count=5))
    _publish(c, 1, "q", b"dropped")
    assert c.transport.take() == b""
    c.send_method(1, commands.Channel.CloseOk())
    assert 1 not in c.conn.channels
    # A second close-ok on a channel the server already forgot is ignored, as RabbitMQ.
    c.send_method(1, commands.Channel.CloseOk())
    assert c.transport.take() == b""
    assert not c.transport.closing
    await c.open_channel(1)  # the number can be used again
    await c.close()


async def test_close_crossing_the_servers_close_gets_close_ok() -> None:
    c = await _opened()
    c.send_method(1, commands.Queue.Declare(queue="missing", passive=True))
    await c.reply()
    c.send_method(1, commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    assert c.transport.take() == method_bytes(1, commands.Channel.CloseOk())
    assert 1 not in c.conn.channels
    await c.close()


async def test_basic_qos() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Qos(prefetch_count=10))
    assert await c.reply() == bytes.fromhex("01000100000004003c000bce")  # basic.qos-ok
    c.send_method(1, commands.Basic.Qos(prefetch_count=3, global_=True))
    assert await c.reply() == bytes.fromhex("01000100000004003c000bce")
    ch = c.conn.channels[1]
    assert (ch.consumer_prefetch, ch.global_prefetch) == (10, 3)
    await c.close()


async def test_basic_qos_with_prefetch_size_is_540() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Qos(prefetch_size=10))
    assert await c.reply() == method_bytes(
        0,
        commands.Connection.Close(
            reply_code=540,
            reply_text="NOT_IMPLEMENTED - prefetch_size!=0 (10)",
            class_id=60,
            method_id=10,
        ),
    )
    await c.close()


async def test_publish_with_confirms_acks_each() -> None:
    c = await _opened()
    c.send_method(1, commands.Confirm.Select())
    assert await c.reply() == bytes.fromhex("010001000000040055000bce")  # select-ok
    c.broker.queues["q"] = FakeQueue("q")
    _publish(c, 1, "q", b"hello")
    # basic.ack delivery_tag 1, multiple false
    assert await c.reply() == bytes.fromhex("0100010000000d003c0050000000000000000100ce")
    assert [(e, rk, body) for e, rk, _p, body in c.broker.published] == [("", "q", b"hello")]
    assert c.broker.stats.confirms == 1
    await c.close()


async def test_a_body_of_many_frames_arrives_whole_between_others() -> None:
    """Frames are appended in place (no join at the end); the next publish starts
    afresh."""
    c = await _opened(frame_max=4096)
    c.broker.queues["q"] = FakeQueue("q")
    big = bytes(range(256)) * 100 + b"tail"
    for body in (b"one", big, b"", big[::-1], b"two"):
        c.send_method(1, commands.Basic.Publish(exchange="", routing_key="q"))
        c.send(_content(1, body, frame_max=4096))
    await until(lambda: len(c.broker.published) == 5)
    assert [bytes(b) for _e, _rk, _p, b in c.broker.published] == [
        b"one",
        big,
        b"",
        big[::-1],
        b"two",
    ]
    await c.close()


async def test_confirms_of_a_batch_come_as_one_multiple_ack() -> None:
    c = await _opened()
    c.broker.auto_store = False
    c.send_method(1, commands.Confirm.Select())
    await c.reply()
    for _ in range(3):
        _publish(c, 1, "q", b"x")
    await until(lambda: len(c.broker.pending) == 3)
    for fut in c.broker.pending:
        fut.set_result(1)
    # basic.ack delivery_tag 3, multiple true
    assert await c.reply() == bytes.fromhex("0100010000000d003c0050000000000000000301ce")
    await c.close()


async def test_failed_store_is_nacked() -> None:
    c = await _opened()
    c.broker.auto_store = False
    c.send_method(1, commands.Confirm.Select())
    await c.reply()
    _publish(c, 1, "q", b"x")
    await until(lambda: len(c.broker.pending) == 1)
    c.broker.pending[0].set_exception(RuntimeError("disk on fire"))
    # basic.nack delivery_tag 1, multiple false, requeue false
    assert await c.reply() == bytes.fromhex("0100010000000d003c0078000000000000000100ce")
    await c.close()


async def test_mandatory_unroutable_publish_is_returned_before_its_ack() -> None:
    c = await _opened()
    c.send_method(1, commands.Confirm.Select())
    await c.reply()
    _publish(c, 1, "nowhere", b"lost", mandatory=True)
    await until(lambda: b"\x00\x3c\x00\x50" in c.transport.written)
    returned = method_bytes(
        1,
        commands.Basic.Return(
            reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key="nowhere"
        ),
    )
    ack = bytes.fromhex("0100010000000d003c0050000000000000000100ce")
    assert c.transport.take() == returned + _content(1, b"lost") + ack
    await c.close()


async def test_message_larger_than_the_limit_closes_the_channel_with_406() -> None:
    c = Client()
    c.settings.max_message_size = 4
    await c.handshake()
    await c.open_channel(1)
    _publish(c, 1, "q", b"too long")
    assert await c.reply() == _channel_close(
        1, 406, "PRECONDITION_FAILED - message size 8 is larger than configured max size 4", 60, 40
    )
    await c.close()


async def test_deliver_frames() -> None:
    c = await _opened(frame_max=4096)

    c.broker.queues["q"] = FakeQueue("q", id=7)
    c.send_method(1, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    assert await c.reply() == method_bytes(1, commands.Basic.ConsumeOk(consumer_tag="ctag"))
    consumer = c.broker.queues["q"].consumers[0]
    assert consumer.credit() > 0
    body = bytes(range(256)) * 20  # 5120 octets: two body frames at frame_max 4096
    msg = ClaimedMessage(
        id=42,
        queue_id=7,
        redelivered=True,
        exchange="amq.direct",
        routing_key="q",
        properties=b"\x00\x00",
        body=body,
    )
    assert consumer.deliver([msg])
    deliver = method_bytes(
        1,
        commands.Basic.Deliver(
            consumer_tag="ctag",
            delivery_tag=1,
            redelivered=True,
            exchange="amq.direct",
            routing_key="q",
        ),
    )
    assert c.transport.take() == deliver + _content(1, body, frame_max=4096)
    assert c.conn.channels[1].unacked == {1: (42, 7, consumer)}
    # basic.ack settles it with the broker
    c.send_method(1, commands.Basic.Ack(delivery_tag=1))
    await until(lambda: bool(c.broker.acked))
    assert c.broker.acked == [42]
    assert c.transport.take() == b""
    await c.close()


async def test_prefetch_limits_credit() -> None:
    c = await _opened()

    c.broker.queues["q"] = FakeQueue("q", id=7)
    c.send_method(1, commands.Basic.Qos(prefetch_count=2))
    await c.reply()
    c.send_method(1, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    await c.reply()
    consumer = c.broker.queues["q"].consumers[0]
    assert consumer.credit() == 2
    msg = ClaimedMessage(1, 7, False, "", "q", b"\x00\x00", b"")
    consumer.deliver([msg])
    assert consumer.credit() == 1
    c.conn.pause_writing()
    assert consumer.credit() == 0  # the socket is full: nothing more for now
    c.conn.resume_writing()
    assert consumer.credit() == 1 and 7 in c.broker.woken
    await c.close()


async def test_unknown_delivery_tag_is_406() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Ack(delivery_tag=9))
    assert await c.reply() == _channel_close(
        1, 406, "PRECONDITION_FAILED - unknown delivery tag 9", 60, 80
    )
    await c.close()


async def test_connection_method_on_a_channel_is_503() -> None:
    c = await _opened()
    c.send_method(1, commands.Connection.UpdateSecret(new_secret="x", reason="r"))
    assert await c.reply() == method_bytes(
        0,
        commands.Connection.Close(
            reply_code=503,
            reply_text="COMMAND_INVALID - unexpected method UpdateSecret on a channel",
            class_id=10,
            method_id=70,
        ),
    )
    await c.close()


async def test_teardown_requeues_unacked_deliveries() -> None:
    c = await _opened()

    c.broker.queues["q"] = FakeQueue("q", id=7)
    c.send_method(1, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    await c.reply()
    consumer = c.broker.queues["q"].consumers[0]
    consumer.deliver([ClaimedMessage(5, 7, False, "", "q", b"\x00\x00", b"")])
    c.transport.take()
    await c.close()
    assert c.broker.requeued == [(7, 5)]
    assert c.broker.queues["q"].consumers == []
