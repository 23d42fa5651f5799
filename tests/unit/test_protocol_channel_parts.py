"""The channel's parts over a fake transport and a fake broker, exact bytes: tx, recover,
no-ack consumers, channel.flow, cancels from either side, basic.get, direct reply-to."""

from __future__ import annotations

from pamqp import body as pamqp_body
from pamqp import commands, header
from pamqp import frame as pamqp_frame

from cavalcade.broker.api import CLAIM_CAP
from cavalcade.protocol.consumers import Consumer
from cavalcade.protocol.deliveries import Deliveries
from cavalcade.protocol.framing import PROTOCOL_HEADER
from cavalcade.storage.records import ClaimedMessage

from .fakes import Client, FakeQueue, method_bytes, until


def _content(channel: int, body: bytes, reply_to: str | None = None) -> bytes:
    out = pamqp_frame.marshal(
        header.ContentHeader(0, len(body), commands.Basic.Properties(reply_to=reply_to)), channel
    )
    if body:
        out += pamqp_frame.marshal(pamqp_body.ContentBody(body), channel)
    return bytes(out)


def _publish(c: Client, routing_key: str, body: bytes, reply_to: str | None = None) -> None:
    c.send_method(1, commands.Basic.Publish(exchange="", routing_key=routing_key))
    c.send(_content(1, body, reply_to))


def _msg(message_id: int, queue_id: int = 7) -> ClaimedMessage:
    return ClaimedMessage(message_id, queue_id, False, "", "q", b"\x00\x00", b"")


def _channel_close(code: int, text: str, class_id: int, method_id: int) -> bytes:
    return method_bytes(
        1,
        commands.Channel.Close(
            reply_code=code, reply_text=text, class_id=class_id, method_id=method_id
        ),
    )


def _connection_close(code: int, text: str, class_id: int, method_id: int) -> bytes:
    return method_bytes(
        0,
        commands.Connection.Close(
            reply_code=code, reply_text=text, class_id=class_id, method_id=method_id
        ),
    )


async def _opened(cancel_notify: bool = True) -> Client:
    c = Client()
    if cancel_notify:
        await c.handshake()
    else:
        c.send(PROTOCOL_HEADER)
        c.transport.take()
        c.send_method(
            0,
            commands.Connection.StartOk(
                client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
            ),
        )
        await c.reply()
        c.send_method(0, commands.Connection.TuneOk(channel_max=2047, frame_max=131072))
        c.send_method(0, commands.Connection.Open(virtual_host="/"))
        await c.reply()
    await c.open_channel(1)
    return c


async def _consume(
    c: Client, tag: str = "ctag", no_ack: bool = False, queue: str = "q"
) -> Consumer:
    if queue not in c.broker.queues:
        c.broker.queues[queue] = FakeQueue(queue, id=7)
    c.send_method(1, commands.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack))
    assert await c.reply() == method_bytes(1, commands.Basic.ConsumeOk(consumer_tag=tag))
    consumer = c.broker.queues[queue].consumers[-1]
    assert isinstance(consumer, Consumer)
    return consumer


# -- transactions ---------------------------------------------------------------------


async def test_tx_commit_publishes_and_settles_in_one_go() -> None:
    c = await _opened()
    consumer = await _consume(c)
    consumer.deliver([_msg(41), _msg(42)])
    c.transport.take()
    c.send_method(1, commands.Tx.Select())
    assert await c.reply() == method_bytes(1, commands.Tx.SelectOk())
    _publish(c, "q", b"in tx")
    c.send_method(1, commands.Basic.Ack(delivery_tag=1))
    c.send_method(1, commands.Basic.Reject(delivery_tag=2, requeue=True))
    c.send_method(1, commands.Basic.Qos(prefetch_count=0))  # a round trip: all handled
    await c.reply()
    assert c.broker.published == [] and c.broker.acked == [] and c.broker.requeued == []
    assert c.conn.channels[1].held_ids() == [41, 42]  # still ours until the commit
    c.send_method(1, commands.Tx.Commit())
    assert await c.reply() == method_bytes(1, commands.Tx.CommitOk())
    assert [body for _e, _rk, _p, body in c.broker.published] == [b"in tx"]
    assert c.broker.acked == [41]
    assert c.broker.requeued == [(7, 42)]
    assert c.broker.batcher.flushes >= 1
    assert c.conn.channels[1].unacked == {}
    await c.close()


async def test_tx_rollback_drops_publishes_and_restores_settled_tags() -> None:
    c = await _opened()
    consumer = await _consume(c)
    consumer.deliver([_msg(41), _msg(42), _msg(43)])
    c.transport.take()
    c.send_method(1, commands.Tx.Select())
    await c.reply()
    _publish(c, "q", b"rolled back")
    c.send_method(1, commands.Basic.Nack(delivery_tag=3, multiple=False, requeue=False))
    c.send_method(1, commands.Basic.Ack(delivery_tag=1))
    c.send_method(1, commands.Tx.Rollback())
    assert await c.reply() == method_bytes(1, commands.Tx.RollbackOk())
    ch = c.conn.channels[1]
    assert list(ch.unacked) == [1, 2, 3]  # back, in tag order
    assert consumer.unacked == 3
    c.send_method(1, commands.Tx.Commit())  # nothing left to commit
    assert await c.reply() == method_bytes(1, commands.Tx.CommitOk())
    assert c.broker.published == [] and c.broker.acked == [] and c.broker.discarded == []
    await c.close()


async def test_tx_commit_outside_a_transaction_is_406() -> None:
    c = await _opened()
    c.send_method(1, commands.Tx.Commit())
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - channel is not transactional", 90, 20
    )
    await c.close()


async def test_tx_and_confirm_exclude_each_other() -> None:
    c = await _opened()
    c.send_method(1, commands.Tx.Select())
    await c.reply()
    c.send_method(1, commands.Confirm.Select())
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode", 85, 10
    )
    await c.close()
    c = await _opened()
    c.send_method(1, commands.Confirm.Select())
    await c.reply()
    c.send_method(1, commands.Tx.Select())
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode", 90, 10
    )
    await c.close()


# -- settlement ------------------------------------------------------------------------


async def test_basic_recover_requeues_everything_unacked() -> None:
    c = await _opened()
    consumer = await _consume(c)
    consumer.deliver([_msg(41), _msg(42)])
    c.transport.take()
    c.send_method(1, commands.Basic.Recover(requeue=True))
    assert await c.reply() == method_bytes(1, commands.Basic.RecoverOk())
    assert c.broker.requeued == [(7, 41), (7, 42)]
    assert c.conn.channels[1].unacked == {} and consumer.unacked == 0
    await c.close()


async def test_basic_recover_async_has_no_reply() -> None:
    c = await _opened()
    consumer = await _consume(c)
    consumer.deliver([_msg(41)])
    c.transport.take()
    c.send_method(1, commands.Basic.RecoverAsync(requeue=True))
    await until(lambda: bool(c.broker.requeued))
    assert c.broker.requeued == [(7, 41)]
    assert c.transport.take() == b""
    await c.close()


async def test_basic_recover_without_requeue_is_540() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Recover(requeue=False))
    assert await c.reply() == _connection_close(540, "NOT_IMPLEMENTED - requeue=false", 60, 110)
    await c.close()


async def test_nack_multiple_discards_up_to_the_tag() -> None:
    c = await _opened()
    consumer = await _consume(c)
    consumer.deliver([_msg(41), _msg(42), _msg(43)])
    c.transport.take()
    c.send_method(1, commands.Basic.Nack(delivery_tag=2, multiple=True, requeue=False))
    await until(lambda: bool(c.broker.discarded))
    assert c.broker.discarded == [(7, 41), (7, 42)]
    assert list(c.conn.channels[1].unacked) == [3]
    assert 7 in c.broker.woken  # the consumer got credit back
    await c.close()


def test_ledger_counts_ack_mode_deliveries_against_both_prefetches() -> None:
    ledger = Deliveries()
    ledger.set_prefetch(3, global_=False)
    ledger.set_prefetch(4, global_=True)

    class Holder:
        def __init__(self, no_ack: bool) -> None:
            self.no_ack, self.unacked, self.reserved = no_ack, 0, 0

    a, b, free = Holder(False), Holder(False), Holder(True)
    assert ledger.credit(a) == 3
    ledger.reserve(a, 2)
    assert (ledger.credit(a), ledger.credit(b)) == (1, 2)
    ledger.release(a, 2)
    for i in range(3):
        ledger.track(a, 100 + i, 7, no_ack=False)
    assert (ledger.credit(a), ledger.credit(b)) == (0, 1)
    assert ledger.credit(free) == CLAIM_CAP
    ledger.track(b, 200, 8, no_ack=False)
    assert ledger.credit(free) == 0  # the channel's limit is used up by ack-mode consumers
    assert ledger.track(free, 300, 9, no_ack=True) == 5 and 5 not in ledger.unacked
    taken, queues = ledger.take(2, True, 80)
    assert [t for t, _ in taken] == [1, 2] and queues == {7}
    assert (a.unacked, ledger.global_unacked) == (1, 2)


# -- consumers ---------------------------------------------------------------------------


async def test_no_ack_consumer_is_not_tracked_and_ignores_consumer_prefetch() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Qos(prefetch_count=1))
    await c.reply()
    consumer = await _consume(c, no_ack=True)
    assert consumer.credit() == CLAIM_CAP
    assert consumer.deliver([_msg(41), _msg(42)])
    deliver = method_bytes(
        1,
        commands.Basic.Deliver(
            consumer_tag="ctag", delivery_tag=2, redelivered=False, exchange="", routing_key="q"
        ),
    )
    assert c.transport.take().endswith(deliver + _content(1, b""))
    assert c.conn.channels[1].unacked == {}
    assert consumer.credit() == CLAIM_CAP
    c.send_method(1, commands.Basic.Ack(delivery_tag=1))
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 80
    )
    await c.close()


async def test_no_ack_consumer_waits_while_the_global_prefetch_is_used_up() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Qos(prefetch_count=1, global_=True))
    await c.reply()
    acking = await _consume(c, tag="acking")
    free = await _consume(c, tag="free", no_ack=True)
    acking.deliver([_msg(41)])
    assert free.credit() == 0
    c.send_method(1, commands.Basic.Ack(delivery_tag=1))
    await until(lambda: bool(c.broker.acked))
    assert free.credit() == CLAIM_CAP
    await c.close()


async def test_client_cancel_detaches_the_consumer() -> None:
    c = await _opened()
    consumer = await _consume(c)
    c.send_method(1, commands.Basic.Cancel(consumer_tag="ctag"))
    assert await c.reply() == method_bytes(1, commands.Basic.CancelOk(consumer_tag="ctag"))
    assert c.broker.queues["q"].consumers == []
    assert consumer.credit() == 0
    assert not consumer.deliver([_msg(41)])
    assert c.transport.take() == b""
    await c.close()


async def test_reused_consumer_tag_is_530() -> None:
    c = await _opened()
    await _consume(c)
    c.send_method(1, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    assert await c.reply() == _connection_close(
        530, "NOT_ALLOWED - attempt to reuse consumer tag 'ctag'", 60, 20
    )
    await c.close()


async def test_server_cancel_is_sent_to_a_client_that_understands_it() -> None:
    c = await _opened()
    consumer = await _consume(c)
    consumer.cancel_by_server()
    assert c.transport.take() == method_bytes(
        1, commands.Basic.Cancel(consumer_tag="ctag", nowait=True)
    )
    assert c.conn.channels[1].consumers == {}
    await c.close()


async def test_server_cancel_is_not_sent_without_consumer_cancel_notify() -> None:
    c = await _opened(cancel_notify=False)
    consumer = await _consume(c)
    consumer.cancel_by_server()
    assert c.transport.take() == b""
    assert c.conn.channels[1].consumers == {}
    await c.close()


async def test_queue_delete_answers_delete_ok_before_cancelling_our_consumer() -> None:
    c = await _opened()
    await _consume(c)
    c.send_method(1, commands.Queue.Delete(queue="q"))
    assert await c.reply() == method_bytes(
        1, commands.Queue.DeleteOk(message_count=0)
    ) + method_bytes(1, commands.Basic.Cancel(consumer_tag="ctag", nowait=True))
    await c.close()


async def test_basic_get() -> None:
    c = await _opened()
    c.broker.queues["q"] = FakeQueue("q", id=7, messages=[_msg(41), _msg(42)])
    c.send_method(1, commands.Basic.Get(queue="q"))
    get_ok = method_bytes(
        1,
        commands.Basic.GetOk(
            delivery_tag=1, redelivered=False, exchange="", routing_key="q", message_count=1
        ),
    )
    assert await c.reply() == get_ok + _content(1, b"")
    assert c.conn.channels[1].unacked == {1: (41, 7, None)}
    c.send_method(1, commands.Basic.Get(queue="q", no_ack=True))
    await c.reply()
    assert list(c.conn.channels[1].unacked) == [1]  # no-ack: not tracked
    c.send_method(1, commands.Basic.Get(queue="q"))
    assert await c.reply() == method_bytes(1, commands.Basic.GetEmpty())
    await c.close()


async def test_basic_get_on_the_last_declared_queue() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Get(queue=""))
    refused = _channel_close(404, "NOT_FOUND - no previously declared queue", 60, 70)
    assert await c.reply() == refused
    await c.close()


# -- the channel ---------------------------------------------------------------------------


async def test_channel_flow() -> None:
    c = await _opened()
    c.send_method(1, commands.Channel.Flow(active=True))
    assert await c.reply() == method_bytes(1, commands.Channel.FlowOk(active=True))
    c.send_method(1, commands.Channel.Flow(active=False))
    assert await c.reply() == _connection_close(540, "NOT_IMPLEMENTED - active=false", 20, 20)
    await c.close()


# -- direct reply-to ------------------------------------------------------------------------


async def test_direct_reply_to_rewrites_the_reply_to_of_publishes() -> None:
    c = await _opened()
    reply = "amq.rabbitmq.reply-to"
    _publish(c, "q", b"ask", reply_to=reply)
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - fast reply consumer does not exist", 60, 40
    )
    await c.close()
    c = await _opened()
    c.broker.queues["amq.rabbitmq.reply-to.fake"] = FakeQueue("amq.rabbitmq.reply-to.fake")
    c.send_method(1, commands.Basic.Consume(queue=reply, consumer_tag="r", no_ack=True))
    assert await c.reply() == method_bytes(1, commands.Basic.ConsumeOk(consumer_tag="r"))
    _publish(c, "q", b"ask", reply_to=reply)
    await until(lambda: bool(c.broker.published))
    assert c.broker.published[0][2].reply_to == "amq.rabbitmq.reply-to.fake"
    c.send_method(1, commands.Basic.Consume(queue=reply, consumer_tag="r2", no_ack=True))
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - reply consumer already set", 60, 20
    )
    await c.close()


async def test_direct_reply_to_consumer_must_be_no_ack() -> None:
    c = await _opened()
    c.send_method(1, commands.Basic.Consume(queue="amq.rabbitmq.reply-to", consumer_tag="r"))
    assert await c.reply() == _channel_close(
        406, "PRECONDITION_FAILED - reply consumer cannot acknowledge", 60, 20
    )
    await c.close()
