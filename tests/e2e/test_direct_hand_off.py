"""A no-ack consumer waiting on a drained queue takes new messages straight from the
publish (nothing is written or claimed for them), in order, on both brokers; what
an ack-mode consumer gets still goes through the queue."""

from __future__ import annotations

import time

import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cavalcade.storage.batch import LARGE_BODY as STORAGE_LARGE
from cavalcade.storage.dsn import normalize_dsn
from tests.conftest import free_port

from .conftest import connect, drain, safe_close, settle, unique

pytestmark = pytest.mark.timeout(60)


def _last_message_id(dsn: str) -> int:
    """The messages id sequence: it moves with every row written, committed or not."""
    import asyncio

    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM messages_id_seq"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(read())


_BODIES = [b"m%02d" % i for i in range(20)]


def _scenario(
    url: str,
    no_ack: bool,
    bodies: list[bytes] = _BODIES,
    arguments: dict[str, object] | None = None,
    headers: list[object] | None = None,
) -> list[bytes]:
    """Consume (waiting) on a fresh queue (declared with ``arguments``), publish
    ``bodies`` confirmed from another connection, return what the consumer got, in
    order (and the headers of each into ``headers``)."""
    consumer_conn, publisher_conn = connect(url), connect(url)
    try:
        ch = consumer_conn.channel()
        q = unique("hand-off")
        ch.queue_declare(q, durable=True, auto_delete=arguments is None, arguments=arguments)
        got: list[bytes] = []

        def on(c, method, props, body: bytes) -> None:
            got.append(body)
            if headers is not None:
                headers.append(props.headers)
            if not no_ack:
                c.basic_ack(method.delivery_tag)

        ch.basic_consume(q, on, auto_ack=no_ack)
        settle(consumer_conn, 0.3)  # the first claim finds the queue empty
        pch = publisher_conn.channel()
        pch.confirm_delivery()
        for body in bodies:
            pch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
        assert drain(consumer_conn, lambda: len(got) == len(bodies))
        settle(consumer_conn, 0.2)
        assert ch.queue_declare(q, passive=True).method.message_count == 0
        if arguments is not None:
            ch.queue_delete(q)
        return got
    finally:
        safe_close(publisher_conn)
        safe_close(consumer_conn)


def test_waiting_no_ack_consumer_gets_every_message_in_order(amqp_url: str) -> None:
    assert _scenario(amqp_url, no_ack=True) == [b"m%02d" % i for i in range(20)]


def test_hand_off_writes_nothing_and_ack_mode_still_queues(database_url, start_broker) -> None:
    node = start_broker(database_url)
    dsn = normalize_dsn(database_url)
    start = _last_message_id(dsn)
    assert _scenario(node.url, no_ack=True) == [b"m%02d" % i for i in range(20)]
    assert _last_message_id(dsn) == start  # no row was written for them
    assert _scenario(node.url, no_ack=False) == [b"m%02d" % i for i in range(20)]
    assert _last_message_id(dsn) >= start + 20


def test_a_backlog_is_delivered_before_new_messages(database_url, start_broker) -> None:
    """Messages already queued go first: a queue with ready rows hands nothing off."""
    node = start_broker(database_url)
    conn = connect(node.url)
    try:
        ch = conn.channel()
        q = unique("hand-off-backlog")
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", q, b"old%d" % i, pika.BasicProperties(delivery_mode=2))
        got: list[bytes] = []
        ch.basic_consume(q, lambda _c, _m, _p, body: got.append(body), auto_ack=True)
        pch = conn.channel()
        pch.confirm_delivery()
        for i in range(5):
            pch.basic_publish("", q, b"new%d" % i)
        assert drain(conn, lambda: len(got) == 10)
        assert got == [b"old%d" % i for i in range(5)] + [b"new%d" % i for i in range(5)]
        ch.queue_delete(q)
    finally:
        safe_close(conn)


def _claims(port: int) -> float:
    """Claims the node has run (``cavalcade_claim_seconds`` observations)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "no management listener"
            time.sleep(0.1)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cavalcade_claim_seconds_count":
                return s.value
    raise AssertionError("no cavalcade_claim_seconds_count in /metrics")


def test_a_waiting_ack_mode_consumer_needs_no_claim(database_url, start_broker) -> None:
    """Its rows are written as delivered and handed over once committed; its acks
    delete them as any delivery's."""
    port = free_port()
    node = start_broker(database_url, management_port=port)
    before = _claims(port)
    got = _scenario(node.url, no_ack=False)
    assert got == [b"m%02d" % i for i in range(20)]
    assert _claims(port) - before <= 2  # the consumer's first (empty) claim, maybe one more
    dsn = normalize_dsn(database_url)
    deadline = time.monotonic() + 10
    while _rows(dsn):  # the acks are committed a moment later
        assert time.monotonic() < deadline, "acked rows left behind"
        time.sleep(0.05)


@pytest.mark.parametrize("no_ack", [False, True], ids=["ack", "no-ack"])
def test_a_waiting_quorum_consumer_needs_no_claim(database_url, start_broker, no_ack) -> None:
    """Quorum queues hand off too: a first delivery carries no x-delivery-count, so a
    handed row looks as a claimed one would."""
    port = free_port()
    node = start_broker(database_url, management_port=port)
    before = _claims(port)
    headers: list[object] = []
    got = _scenario(node.url, no_ack, arguments={"x-queue-type": "quorum"}, headers=headers)
    assert got == _BODIES
    assert headers == [None] * len(_BODIES)
    assert _claims(port) - before <= 2


@pytest.mark.parametrize("no_ack", [False, True], ids=["ack", "no-ack"])
def test_large_bodies_are_handed_off_in_their_place(
    database_url, start_broker, no_ack: bool
) -> None:
    """Bodies of 1 MiB and more (inserted by COPY, storage/large.py) are handed off as
    small ones are: in order among them, whole, and with no claim."""
    port = free_port()
    node = start_broker(database_url, management_port=port)
    big = [bytes([i]) * (STORAGE_LARGE + 7919 * i) for i in range(1, 4)]
    bodies = [b"a", big[0], b"b", big[1], big[2], b"c"]
    before = _claims(port)
    got = _scenario(node.url, no_ack=no_ack, bodies=bodies)
    assert [len(b) for b in got] == [len(b) for b in bodies]
    assert got == bodies
    assert _claims(port) - before <= 2


def _rows(dsn: str) -> int:
    import asyncio

    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM messages"))
        finally:
            await conn.close()

    return asyncio.run(read())


def test_a_channel_wide_prefetch_holds_for_handed_messages(amqp_url: str) -> None:
    """Two consumers on one channel with basic.qos(1, global): new messages handed
    over while both wait still leave one unacked delivery at a time on the channel."""
    conn, publisher = connect(amqp_url), connect(amqp_url)
    try:
        ch = conn.channel()
        q = unique("hand-off-global")
        ch.queue_declare(q, auto_delete=True)
        ch.basic_qos(prefetch_count=1, global_qos=True)
        got: list[tuple[object, bytes]] = []
        for tag in ("a", "b"):
            ch.basic_consume(q, lambda c, m, _p, body: got.append((m, body)), consumer_tag=tag)
        settle(conn, 0.3)
        pch = publisher.channel()
        for i in range(4):  # one batch, or close to it
            pch.basic_publish("", q, b"%d" % i)
        for n in range(1, 5):
            assert drain(conn, lambda n=n: len(got) == n)
            settle(conn, 0.2)
            assert len(got) == n  # nothing more until the one held is acked
            ch.basic_ack(got[-1][0].delivery_tag)
        assert sorted(body for _, body in got) == [b"0", b"1", b"2", b"3"]
    finally:
        safe_close(publisher)
        safe_close(conn)


class _QueueRowLock:
    """Holds a row lock on a queue from a connection of its own (as a long transaction
    of an operator would), until released or 10 s have passed; ``held`` says whether it
    still held the lock when it was asked."""

    def __init__(self, dsn: str, name: str) -> None:
        import threading

        self.dsn, self.name = dsn, name
        self.locked, self.release = threading.Event(), threading.Event()
        self.ending = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.locked.wait(10), "no lock"

    def _run(self) -> None:
        import asyncio

        import asyncpg

        async def hold() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM queues WHERE name = $1 FOR UPDATE", self.name)
                    self.locked.set()
                    await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
                    self.ending.set()  # before the commit: nobody waiting got past it yet
            finally:
                await conn.close()

        asyncio.run(hold())

    def held(self) -> bool:
        return not self.ending.is_set()

    def close(self) -> None:
        self.release.set()
        self.thread.join(15)


def test_the_queue_of_a_waiting_consumer_is_redeclared_from_memory(
    database_url, start_broker
) -> None:
    """A redeclare of a queue this node consumes alone and knows to be empty (Celery's
    rpc reply queue, before every task) is answered without the database: it does not
    wait for a transaction holding the queue's row."""
    node = start_broker(database_url)
    conn, other = connect(node.url), connect(node.url)
    lock = None
    try:
        q = unique("from-memory")
        args = {"x-expires": 60_000}  # a declare marks such a queue used, in its row
        ch = conn.channel()
        ch.queue_declare(q, auto_delete=True, arguments=args)
        ch.basic_consume(q, lambda *a: None, auto_ack=True)
        settle(conn, 0.3)  # its first claim finds the queue empty
        och = other.channel()
        lock = _QueueRowLock(normalize_dsn(database_url), q)
        ok = och.queue_declare(q, auto_delete=True, arguments=args).method
        assert lock.held(), "the declare waited for the database"
        assert (ok.message_count, ok.consumer_count) == (0, 1)
    finally:
        if lock is not None:
            lock.close()
        safe_close(other)
        safe_close(conn)


def test_a_redeclare_from_memory_compares_the_declared_arguments_not_the_policys(
    database_url, start_broker
) -> None:
    """The topology cache holds a queue's arguments with its policy applied; a redeclare
    with the arguments it was declared with is equivalent (RabbitMQ compares those)."""
    from .test_operations import _admin

    node = start_broker(database_url)
    q = unique("policy-redeclare")
    _admin(database_url, lambda a: a.set_policy("/", "ttl", f"^{q}$", {"message-ttl": 60_000}))
    conn, other = connect(node.url), connect(node.url)
    try:
        ch = conn.channel()
        ch.queue_declare(q, arguments={"x-max-length": 50})
        ch.basic_consume(q, lambda *a: None, auto_ack=True)
        settle(conn, 0.3)  # drained: the next declares are answered from memory
        och = other.channel()
        for _ in range(3):
            ok = och.queue_declare(q, arguments={"x-max-length": 50}).method
            assert (ok.message_count, ok.consumer_count) == (0, 1)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            och.queue_declare(q, arguments={"x-max-length": 60})
        assert err.value.reply_code == 406
    finally:
        safe_close(other)
        safe_close(conn)


def test_a_queue_deleted_by_ctl_is_not_redeclared_from_memory(database_url, start_broker) -> None:
    """``ctl delete_queue`` (no node of its own) tells the nodes at its commit: a redeclare
    right after it creates the queue again instead of answering for the deleted one."""
    from .test_operations import _admin

    node = start_broker(database_url)
    q = unique("ctl-deleted")
    conn, other = connect(node.url), connect(node.url)
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.basic_consume(q, lambda *a: None, auto_ack=True)
        settle(conn, 0.3)
        och = other.channel()
        assert och.queue_declare(q).method.consumer_count == 1  # from memory
        _admin(database_url, lambda a: a.delete_queue("/", q))
        time.sleep(0.2)  # the NOTIFY's way to the node, far below the node's 1 s check
        assert och.queue_declare(q).method.consumer_count == 0  # declared again, anew
        och.queue_declare(q, passive=True)  # and it exists
    finally:
        safe_close(other)
        safe_close(conn)
