"""The SKIP LOCKED claim on a real PostgreSQL, with real commits on separate connections."""

from __future__ import annotations

import asyncio
import uuid

from cavalcade.storage.repository import NewMessage, Repository


async def _insert(repo: Repository, rows: list[NewMessage]) -> None:
    """Publish ``rows`` as the broker's write path does (one write transaction)."""
    async with repo.write_transaction() as tx:
        await tx.insert(rows)


async def _setup(database_url: str, n: int) -> tuple[Repository, int]:
    repo = await Repository.connect(database_url, size=10)
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    await repo.write_alone(repo.queue_insert(vhost, "claim-test", True, False, None, None, {}))
    q = await repo.find_queue(vhost, "claim-test")
    assert q is not None
    rows = [
        NewMessage(q.id, 0, True, "", "claim-test", b"\x00\x00", None, None, None, None, b"%d" % i)
        for i in range(n)
    ]
    await _insert(repo, rows)
    return repo, q.id


async def test_concurrent_claims_never_share_a_row(database_url: str) -> None:
    repo, qid = await _setup(database_url, 500)
    nodes = [uuid.uuid4() for _ in range(6)]
    for n in nodes:
        await repo.register_node(n, str(n))
    seen: list[int] = []

    async def claimer(node: uuid.UUID) -> None:
        while True:
            got = await repo.claim(qid, node, 1, 7, no_ack=False)
            if not got:
                return
            seen.extend(m.id for m in got)

    try:
        await asyncio.gather(*(claimer(n) for n in nodes))
        assert len(seen) == 500
        assert len(set(seen)) == 500
        assert await repo.ready_count(qid) == 0
    finally:
        await repo.close()


async def test_requeue_keeps_fifo_order_and_flags_redelivered(database_url: str) -> None:
    repo, qid = await _setup(database_url, 10)
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    try:
        first = await repo.claim(qid, node, 1, 4, no_ack=False)
        assert [m.body for m in first] == [b"0", b"1", b"2", b"3"]
        assert not any(m.redelivered for m in first)
        await repo.requeue([m.id for m in first], node)
        again = await repo.claim(qid, node, 1, 10, no_ack=False)
        assert [m.body for m in again] == [b"%d" % i for i in range(10)]
        assert [m.redelivered for m in again] == [True] * 4 + [False] * 6
    finally:
        await repo.close()


async def test_dead_node_deliveries_return_to_the_queue(database_url: str) -> None:
    repo, qid = await _setup(database_url, 3)
    dead = uuid.uuid4()
    await repo.register_node(dead, "dead")
    try:
        claimed = await repo.claim(qid, dead, 1, 3, no_ack=False)
        assert len(claimed) == 3 and await repo.ready_count(qid) == 0
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '1 minute' WHERE id = $1", dead
        )
        me = uuid.uuid4()
        assert await repo.reap_dead_nodes(10.0, me) == [dead]
        assert await repo.ready_count(qid) == 3
        assert not await repo.heartbeat_node(dead)  # fenced: its row is gone
    finally:
        await repo.close()


async def test_a_fenced_node_cannot_settle_what_it_no_longer_owns(database_url: str) -> None:
    repo, qid = await _setup(database_url, 2)
    old, new = uuid.uuid4(), uuid.uuid4()
    await repo.register_node(old, "old")
    await repo.register_node(new, "new")
    try:
        first = await repo.claim(qid, old, 1, 2, no_ack=False)
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '1 minute' WHERE id = $1", old
        )
        await repo.reap_dead_nodes(10.0, new)
        again = await repo.claim(qid, new, 1, 2, no_ack=False)
        assert [m.id for m in again] == [m.id for m in first]
        # The dead node's late ack and requeue touch nothing; the new owner's ack works.
        async with repo.write_transaction(old) as tx:
            await tx.ack([first[0].id])
            await tx.requeue([first[1].id])
        assert (
            await repo.durable_pool.fetchval(
                "SELECT count(*) FROM messages WHERE owner_node = $1", new
            )
            == 2
        )
        async with repo.write_transaction(new) as tx:
            await tx.ack([m.id for m in again])
        assert await repo.durable_pool.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await repo.close()


async def test_reconcile_requeues_what_no_channel_holds(database_url: str) -> None:
    from cavalcade.broker.service import Broker

    repo, qid = await _setup(database_url, 3)
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    broker = Broker(repo, node)
    broker.start()
    try:
        claimed = await repo.claim(qid, node, 1, 3, no_ack=False)
        broker.held = lambda: {claimed[0].id}  # one is still held by a channel
        assert await broker.reconcile() == 2
        assert await repo.ready_count(qid) == 2
        assert await repo.owned_messages(node) == [claimed[0].id]
    finally:
        await broker.stop()
        await repo.close()


async def test_reconcile_leaves_the_rows_a_dispatcher_holds(database_url: str) -> None:
    """Rows held for a consumer behind its publisher (owned by the node, tracked by no
    channel yet) are not orphans: requeued, they would be delivered twice."""
    from cavalcade.broker.dispatch import QueueDispatcher
    from cavalcade.broker.service import Broker

    repo, qid = await _setup(database_url, 3)
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    broker = Broker(repo, node)
    broker.start()
    try:
        claimed = await repo.claim(qid, node, 0, 3, no_ack=False)
        d = QueueDispatcher(repo, node, qid, poll_interval=60.0)
        broker.node.dispatchers[qid] = d
        d.held.extend(claimed[1:])  # as the write path hands them over
        broker.held = lambda: {claimed[0].id}  # one is delivered, on a channel
        assert await broker.reconcile() == 0
        assert sorted(await repo.owned_messages(node)) == sorted(m.id for m in claimed)
    finally:
        broker.node.dispatchers.pop(qid, None)
        await broker.stop()
        await repo.close()
