"""Freed credit claims only while a queue may hold ready rows (a real dispatcher on a
real PostgreSQL): an early-acking consumer of a drained queue runs no empty claims, and
no arrival is missed because of it. Rows held for the consumers (written for them, or
claimed ahead of their credit from a backlog) go out as credit frees, with no claim."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cavalcade.broker.dispatch import QueueDispatcher
from cavalcade.storage.dsn import normalize_dsn
from cavalcade.storage.notify import Listener
from cavalcade.storage.records import ClaimedMessage
from cavalcade.storage.repository import NewMessage, Repository


class Target:
    """A consumer with a prefetch of ``prefetch`` that acks when told to."""

    tag = "c1"
    channel_key = 1
    no_ack = False
    priority = 0

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.unacked: list[ClaimedMessage] = []
        self.reserved = 0
        self.blocked = False
        self.got = asyncio.Event()

    def credit(self) -> int:
        return 0 if self.blocked else self.prefetch - len(self.unacked) - self.reserved

    def deliver(self, messages: list[ClaimedMessage]) -> bool:
        self.unacked += messages
        self.got.set()
        return True

    def reserve(self, n: int) -> None:
        self.reserved += n

    def release(self, n: int) -> None:
        self.reserved -= n


class Counting(Repository):
    """The repository, counting claims; ``during_claim`` runs while one is in flight."""

    claims = 0
    ahead = 0
    during_claim: Callable[[], None] | None = None

    async def claim(self, *args: object, **kwargs: object) -> list[ClaimedMessage]:  # type: ignore[override]
        self.claims += 1
        rows = await super().claim(*args, **kwargs)  # type: ignore[arg-type]
        if self.during_claim is not None:
            self.during_claim()
        return rows

    async def claim_ahead(self, *args: object, **kwargs: object) -> list[ClaimedMessage]:  # type: ignore[override]
        self.ahead += 1
        return await super().claim_ahead(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[tuple[Counting, int, uuid.UUID]]:
    base = await Repository.connect(database_url, size=4)
    repo = Counting(base.durable_pool, base.async_commit_pool)
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    name = f"drained-{uuid.uuid4().hex[:8]}"
    await repo.write_alone(repo.queue_insert(vhost, name, True, False, None, None, {}))
    q = await repo.find_queue(vhost, name)
    assert q is not None
    node = uuid.uuid4()
    await repo.register_node(node, "drained-test")
    try:
        yield repo, q.id, node
    finally:
        await repo.delete_queue(q.id)
        await base.close()


async def _publish(repo: Repository, qid: int, n: int) -> None:
    rows = [
        NewMessage(qid, 0, True, "", "q", b"\x00\x00", None, None, None, None, b"%d" % i)
        for i in range(n)
    ]
    async with repo.write_transaction() as tx:
        await tx.insert(rows)


@contextlib.asynccontextmanager
async def _dispatching(
    repo: Repository, qid: int, node: uuid.UUID, prefetch: int, **options: Any
) -> AsyncIterator[tuple[QueueDispatcher, Target]]:
    """A dispatcher of ``qid`` with one consumer, once its first claim is done."""
    d = QueueDispatcher(repo, node, qid, poll_interval=60.0, **options)
    t = Target(prefetch)
    d.add(t)
    try:
        await _settle(d)
        yield d, t
    finally:
        await d.stop()


async def _settle(d: QueueDispatcher) -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)
        await d.settled()


async def _ack(repo: Repository, node: uuid.UUID, t: Target) -> None:
    await repo.delete_messages([m.id for m in t.unacked], node)
    t.unacked.clear()


async def test_freed_credit_on_a_drained_queue_claims_nothing(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    await _publish(repo, qid, 2)
    async with _dispatching(repo, qid, node, prefetch=1) as (d, t):
        assert len(t.unacked) == 1 and not d.drained  # full claim: more may be there
        await _ack(repo, node, t)
        d.credit_freed()
        await _settle(d)
        assert len(t.unacked) == 1
        await _ack(repo, node, t)
        d.credit_freed()
        await _settle(d)
        assert d.drained  # that claim came back empty
        before = repo.claims
        for _ in range(5):  # acks of a drained queue: no claims
            d.credit_freed()
            await _settle(d)
        assert repo.claims == before
        await _publish(repo, qid, 1)
        d.wake()  # the commit's wake-up
        await _settle(d)
        assert len(t.unacked) == 1 and repo.claims == before + 1


async def test_an_arrival_during_a_short_claim_is_not_lost(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=1) as (d, t):
        assert d.drained  # the first claim found nothing

        def meanwhile() -> None:  # a commit's wake-up, while the consumer's credit goes
            t.blocked = True
            d.wake()

        repo.during_claim = meanwhile
        d.wake()
        await _settle(d)
        repo.during_claim = None
        assert not d.drained
        await _publish(repo, qid, 1)  # the row that wake-up was about
        t.blocked = False
        d.credit_freed()  # credit comes back: this must claim
        await asyncio.wait_for(t.got.wait(), 5)
        assert [m.body for m in t.unacked] == [b"0"]


async def test_rows_go_to_local_consumers_directly_only_if_no_other_node_consumes(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=3) as (d, t):
        assert d.drained
        shares = d.take_direct([1] * 5)  # the first three: the consumer's credit
        assert shares == [(t, 3)]
        d.deliver_direct(shares, [])  # nothing written: the credit is given back
        assert t.credit() == 3
        other = uuid.uuid4()
        await repo.register_node(other, "other")
        await repo.add_consumer(qid, other, 1, "elsewhere", False, False, 0)
        d.wake()  # an arrival: the next short claim reads the consumers again
        d._alone_read -= 2  # as if a second had passed
        await _settle(d)
        assert d.drained
        assert d.take_direct([1] * 5) == []  # the other node's consumer gets its turn


async def test_a_drained_queue_consumed_here_alone_counts_without_the_database(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """``consumers_if_empty`` (what answers a declare-ok from memory) gives a count only
    while the queue is known to hold no ready row and no other node consumes it."""
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=1) as (d, t):
        assert d.drained and d.consumers_if_empty() == 1
        await _publish(repo, qid, 3)
        d.arrived()  # a local commit into the queue: the database must count
        assert d.consumers_if_empty() is None
        d.wake()
        await _settle(d)
        assert len(t.unacked) == 1 and d.consumers_if_empty() is None  # two still ready
        for _ in range(2):
            await _ack(repo, node, t)
            d.credit_freed()
            await _settle(d)
        assert d.consumers_if_empty() is None  # that claim was full: one more may be there
        await _ack(repo, node, t)
        d.credit_freed()
        await _settle(d)
        assert d.drained and d.consumers_if_empty() == 1
        d._alone_read -= 2  # a stale look at the other nodes: the database counts, and
        assert d.consumers_if_empty() is None  # a claim reads them again
        await _settle(d)
        assert d.consumers_if_empty() == 1
        t.blocked = True  # no credit: a row another node commits would stay ready
        assert d.consumers_if_empty() is None


async def test_a_consumer_heard_of_on_another_node_is_never_forgotten_by_a_read(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """The NOTIFY of a consumer added elsewhere ends counting from memory at once, even
    when it comes while a read of the other nodes' consumers (begun before) is on."""
    repo, qid, node = setup

    class Racing(Counting):
        async def consumed_elsewhere(self, queue_id: int, node_id: uuid.UUID) -> bool:
            before = await super().consumed_elsewhere(queue_id, node_id)
            d.consumed_elsewhere()  # heard while the answer was on its way
            return before

    racing = Racing(repo.durable_pool, repo.async_commit_pool)
    async with _dispatching(racing, qid, node, prefetch=1) as (d, _t):
        assert d.consumers_if_empty() is None
        assert d.take_direct([1]) == []
        await _settle(d)
        assert d.consumers_if_empty() is None  # the read did not undo what was heard


async def test_a_look_at_the_other_nodes_under_way_does_not_extend_the_last_one(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """While the once-a-second read of other nodes' consumers is on its way, the last
    answer is too old to count from memory: nothing is counted in the meantime."""
    repo, qid, node = setup
    during: list[int | None] = []
    box: list[QueueDispatcher] = []

    class Slow(Counting):
        async def consumed_elsewhere(self, queue_id: int, node_id: uuid.UUID) -> bool:
            if box:
                during.append(box[0].consumers_if_empty())
            return await super().consumed_elsewhere(queue_id, node_id)

    slow = Slow(repo.durable_pool, repo.async_commit_pool)
    async with _dispatching(slow, qid, node, prefetch=1) as (d, _t):
        box.append(d)
        assert d.consumers_if_empty() == 1
        d._alone_read -= 2
        d.wake()
        await _settle(d)
        assert during and all(n is None for n in during)
        assert d.consumers_if_empty() == 1


async def test_the_listener_counts_as_listening_only_once_all_was_assumed_changed(
    database_url: str,
) -> None:
    """While a (re)connected listener has not yet told the broker that anything may have
    changed, what the node knows from before (drained queues, topology) must not count
    as current: ``listening()`` stays false until then."""
    seen: list[bool] = []

    class Target:
        def wake_queues(self, queue_ids: object) -> None: ...
        def wake_all(self) -> None:
            seen.append(listener.listening())

        def topology_changed(self, vhost_id: int | None = None) -> None:
            seen.append(listener.listening())

        def queue_deleted_elsewhere(self, queue_id: int) -> None: ...
        def consumed_elsewhere(self, queue_id: int) -> None: ...

    listener = Listener(normalize_dsn(database_url), uuid.uuid4(), Target())
    assert not listener.listening()
    try:
        await listener.ensure()
        assert seen == [False, False] and listener.listening()
        assert listener.conn is not None
        await listener.conn.close()
        assert not listener.listening()
        await listener.ensure()
        assert seen == [False, False, False, False] and listener.listening()
    finally:
        await listener.close()


async def _held_rows(repo: Repository, qid: int, node: uuid.UUID, n: int) -> list[ClaimedMessage]:
    """``n`` rows written as node's deliveries (as a batch writes the rows a queue
    holds), as the write path hands them to the dispatcher."""
    rows = [
        NewMessage(qid, 0, True, "", "q", b"\x00\x00", None, None, None, None, b"h%d" % i)
        for i in range(n)
    ]
    written = await repo.write_plain(rows, [], {}, node, True, list(range(n)))
    assert written is not None and len(written) == n
    return [
        ClaimedMessage(mid, qid, False, "", "q", b"\x00\x00", r.body, 0)
        for (_, mid), r in zip(written, rows, strict=True)
    ]


async def test_held_rows_go_to_the_consumer_as_credit_frees_without_a_claim(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=2) as (d, t):
        d.holds = True
        shares = d.take_direct([2] * 5)
        assert [(c is t, n) for c, n in shares] == [(True, 2), (False, 3)]
        assert d.budget.bytes == 6  # the held rows' bytes, reserved
        rows = await _held_rows(repo, qid, node, 5)
        d.deliver_direct(shares, rows)
        assert [m.body for m in t.unacked] == [b"h0", b"h1"] and len(d.held) == 3
        assert d.consumers_if_empty() is None  # held rows are ready ones to a client
        before = repo.claims
        for _ in range(2):
            await _ack(repo, node, t)
            d.credit_freed()
        assert [m.body for m in t.unacked] == [b"h4"] and not d.held
        await _settle(d)
        assert repo.claims == before and d.budget.bytes == 0
        await _ack(repo, node, t)
        d.credit_freed()
        assert d.drained and d.consumers_if_empty() == 1


async def test_held_rows_go_back_as_never_delivered_when_another_node_consumes(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=1) as (d, t):
        d.holds = True
        shares = d.take_direct([2] * 3)
        d.deliver_direct(shares, await _held_rows(repo, qid, node, 3))
        assert len(t.unacked) == 1 and len(d.held) == 2
        d.consumed_elsewhere()  # their consumers get their turn at the held rows
        assert not d.held and d.budget.bytes == 0
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            rows = await repo.durable_pool.fetch(
                "SELECT body, redelivered, delivery_count FROM messages"
                " WHERE queue_id = $1 AND owner_node IS NULL ORDER BY id",
                qid,
            )
            if len(rows) == 2:
                break
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.02)
        assert [tuple(r) for r in rows] == [(b"h1", False, 0), (b"h2", False, 0)]


async def test_held_rows_wait_for_a_requeue_and_go_back_with_it(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """A requeue coming (older than every held row) stops hand-outs from memory at
    once; once it is committed the held rows go back to the queue, never delivered."""
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=1) as (d, t):
        d.holds = True
        shares = d.take_direct([2] * 3)
        d.deliver_direct(shares, await _held_rows(repo, qid, node, 3))
        assert len(d.held) == 2
        d.requeue_coming()
        assert not d.held and not d.drained and d.kept()  # still this node's rows
        await _ack(repo, node, t)
        d.credit_freed()
        assert not t.unacked  # nothing from memory ahead of the requeued row
        d.requeued()
        deadline = asyncio.get_running_loop().time() + 5
        while d.kept() or not t.unacked:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        assert [(m.body, m.redelivered) for m in t.unacked] == [(b"h1", False)]


class NoAck(Target):
    tag = "c2"
    no_ack = True


async def test_a_no_ack_consumer_never_gets_held_rows(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """Held rows are written as deliveries, which only an ack deletes: a no-ack consumer
    joining sends them back to the queue (it claims them, deleting them)."""
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=1) as (d, t):
        d.holds = True
        shares = d.take_direct([2] * 3)
        d.deliver_direct(shares, await _held_rows(repo, qid, node, 3))
        assert len(d.held) == 2
        other = NoAck(10)
        d.add(other)
        assert not d.held
        deadline = asyncio.get_running_loop().time() + 5
        while len(other.unacked) < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await _settle(d)
        owned = await repo.durable_pool.fetchval(
            "SELECT count(*) FROM messages WHERE queue_id = $1 AND owner_node IS NOT NULL", qid
        )
        assert owned == 1  # the ack-mode consumer's delivery alone
        shares = d.take_direct([2] * 3)  # a no-ack consumer waits: nothing is held now
        assert all(c.no_ack for c, _ in shares)
        d.deliver_direct(shares, [])


async def test_held_rows_go_back_when_a_look_finds_another_nodes_consumer(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """Without its NOTIFY (poll mode, or lost), the once-a-second look at the other
    nodes' consumers finds one, and the held rows go back to the queue for it."""
    repo, qid, node = setup
    async with _dispatching(repo, qid, node, prefetch=1) as (d, _t):
        d.holds = True
        shares = d.take_direct([2] * 3)
        d.deliver_direct(shares, await _held_rows(repo, qid, node, 3))
        assert len(d.held) == 2
        other = uuid.uuid4()
        await repo.register_node(other, "other")
        await repo.add_consumer(qid, other, 1, "elsewhere", False, False, 0)
        deadline = asyncio.get_running_loop().time() + 5
        while d.held or d.kept():
            assert asyncio.get_running_loop().time() < deadline, "still held"
            await asyncio.sleep(0.05)
        assert await repo.ready_count(qid) == 2


async def _rows(repo: Repository, qid: int) -> list[tuple[bytes, bool, int, bool]]:
    """(body, redelivered, delivery_count, owned) of every row of the queue, in order."""
    rows = await repo.durable_pool.fetch(
        "SELECT body, redelivered, delivery_count, owner_node IS NOT NULL FROM messages"
        " WHERE queue_id = $1 ORDER BY id",
        qid,
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_a_backlog_is_claimed_ahead_and_handed_out_as_credit_frees(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    await _publish(repo, qid, 40)
    async with _dispatching(repo, qid, node, 2, holds=True, ahead=lambda: True) as (d, t):
        deadline = asyncio.get_running_loop().time() + 5
        while len(d.held) < 38:  # the first look at the other nodes comes back first
            assert asyncio.get_running_loop().time() < deadline, len(d.held)
            await asyncio.sleep(0.02)
        assert [m.body for m in t.unacked] == [b"0", b"1"]
        assert [m.body for m in d.held] == [b"%d" % i for i in range(2, 40)]
        assert d.consumers_if_empty() is None and not d.drained
        # Claimed: this node's, counted as one delivery each.
        assert {r[1:] for r in await _rows(repo, qid)} == {(False, 1, True)}
        claims, ahead = repo.claims, repo.ahead
        got: list[bytes] = []
        for _ in range(19):
            got += [m.body for m in t.unacked]
            await _ack(repo, node, t)
            d.credit_freed()
        assert got == [b"%d" % i for i in range(38)] and not d.held
        assert (repo.claims, repo.ahead) == (claims, ahead)  # all from memory
        await _ack(repo, node, t)
        d.credit_freed()
        await _settle(d)
        assert d.drained and await _rows(repo, qid) == []


async def test_rows_claimed_ahead_go_back_as_they_were(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """Released (here before a basic.get), a row claimed ahead is ready again with that
    delivery uncounted, and a redelivered one stays flagged; nothing is held until the
    get is done."""
    repo, qid, node = setup
    await _publish(repo, qid, 6)
    first = await repo.claim(qid, node, 0, 2, False)
    await repo.requeue([m.id for m in first], node)  # b"0", b"1": delivered once, requeued
    async with _dispatching(repo, qid, node, 1, holds=True, ahead=lambda: True) as (d, t):
        deadline = asyncio.get_running_loop().time() + 5
        while len(d.held) < 5:
            assert asyncio.get_running_loop().time() < deadline, len(d.held)
            await asyncio.sleep(0.02)
        assert [(m.body, m.redelivered) for m in t.unacked] == [(b"0", True)]
        assert [(m.body, m.delivery_count) for m in d.held][:2] == [(b"1", 2), (b"2", 1)]
        async with d.held_back():
            assert not d.held and not d.kept()
            assert await _rows(repo, qid) == [
                (b"0", True, 2, True),
                (b"1", True, 1, False),
                *((b"%d" % i, False, 0, False) for i in range(2, 6)),
            ]
            assert d.take_direct([1]) == []  # neither held nor handed off meanwhile
            await _ack(repo, node, t)
            d.credit_freed()
            await _settle(d)
            assert not d.held  # the freed credit claimed b"1" for the consumer, no more
            assert [(m.body, m.redelivered) for m in t.unacked] == [(b"1", True)]


async def test_a_claim_ahead_stops_before_a_ttl_and_within_its_bytes(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    repo, qid, node = setup
    rows = [
        NewMessage(qid, 0, True, "", "q", b"\x00\x00", None, None, None, None, b"x" * 10)
        for _ in range(4)
    ]
    rows[3].ttl_ms = 60_000  # it must expire in the queue, not in a node's memory
    rows.append(NewMessage(qid, 0, True, "", "q", b"\x00\x00", None, None, None, None, b"y"))
    async with repo.write_transaction() as tx:
        await tx.insert(rows)
    assert len(await repo.claim_ahead(qid, node, 10, 25)) == 2  # 20 bytes, not 30
    assert len(await repo.claim_ahead(qid, node, 10, 1000)) == 1  # the TTL row stops it
    assert len(await repo.claim_ahead(qid, node, 10, 1000)) == 0
    assert await repo.ready_count(qid) == 2


async def test_a_requeue_while_rows_are_claimed_ahead_keeps_the_queue_order(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """A nack with requeue while a backlog's rows are held: the requeued row, then the
    held ones, then the rest of the queue (no claim jumps rows on their way back)."""
    repo, qid, node = setup
    await _publish(repo, qid, 700)
    async with _dispatching(repo, qid, node, 2, holds=True, ahead=lambda: True) as (d, t):
        deadline = asyncio.get_running_loop().time() + 5
        while len(d.held) < 512:
            assert asyncio.get_running_loop().time() < deadline, len(d.held)
            await asyncio.sleep(0.02)
        assert [m.body for m in t.unacked] == [b"0", b"1"]
        nacked = t.unacked.pop(0)
        d.requeue_coming()  # as WriteBatcher.requeue, then the channel frees the credit
        d.credit_freed()
        await repo.requeue([nacked.id], node)
        d.requeued()  # the requeue's commit
        order: list[int] = []
        while len(order) < 700:
            deadline = asyncio.get_running_loop().time() + 5
            while not t.unacked:
                assert asyncio.get_running_loop().time() < deadline, order[-5:]
                await asyncio.sleep(0.01)
            order += [int(m.body) for m in t.unacked]
            await _ack(repo, node, t)
            d.credit_freed()
        assert order == [1, 0, *range(2, 700)]


async def test_the_reconcile_leaves_a_row_acked_while_it_reads(
    setup: tuple[Counting, int, uuid.UUID],
) -> None:
    """An ack taken while the reconcile reads what the node owns (the channel has let
    the tag go, the batch's delete is not committed yet) is no orphan: requeued, the
    acked message would be delivered again."""
    from types import SimpleNamespace

    from cavalcade.broker.upkeep import Upkeep

    repo, qid, node = setup
    await _publish(repo, qid, 3)
    async with _dispatching(repo, qid, node, 3) as (d, t):
        assert len(t.unacked) == 3
        read = repo.owned_messages
        acked: list[ClaimedMessage] = []

        async def owned(node_id: uuid.UUID) -> list[int]:
            ids = await read(node_id)
            asyncio.get_running_loop().call_soon(lambda: acked.append(t.unacked.pop(0)))
            return ids

        async def flush() -> None:
            pass

        repo.owned_messages = owned  # type: ignore[method-assign]
        node_state = SimpleNamespace(
            batcher=SimpleNamespace(flush=flush),
            repo=repo,
            node_id=node,
            dispatchers={qid: d},
            held=lambda: {m.id for m in t.unacked},
            wake_all=lambda: None,
        )
        assert await Upkeep(node_state, None).reconcile() == 0  # type: ignore[arg-type]
        assert acked
        await repo.delete_messages([acked[0].id], node)  # the batch's ack commits
        assert (
            await repo.durable_pool.fetchval(
                "SELECT count(*) FROM messages WHERE id = $1", acked[0].id
            )
            == 0
        )
