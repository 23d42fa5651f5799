"""Ready counts for declare-ok: exact below 2 * CAP, a close estimate above, bounded work."""

from __future__ import annotations

import uuid
from dataclasses import replace

from cavalcade.storage.counting import CAP
from cavalcade.storage.repository import NewMessage, Repository

from .rows import queue as _queue
from .rows import rows as _rows


async def _insert(repo: Repository, rows: list[NewMessage]) -> None:
    """Publish ``rows`` as the broker's write path does (one write transaction)."""
    async with repo.write_transaction() as tx:
        await tx.insert(rows)


async def test_counts_are_exact_when_small_and_close_when_large(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=4)
    try:
        vhost = await repo.find_vhost("/")
        assert vhost is not None
        a, b, p = [await _queue(repo, vhost, n) for n in ("a", "b", "prio")]
        assert await repo.ready_count(a) == 0
        await _insert(repo, _rows(a, 1))
        assert await repo.ready_count(a) == 1
        await _insert(repo, _rows(a, CAP - 2))
        assert await repo.ready_count(a) == CAP - 1  # the head window alone
        await _insert(repo, _rows(a, 1))
        assert await repo.ready_count(a) == CAP  # the head window full: the tail read too
        await _insert(repo, _rows(a, 1))
        assert await repo.ready_count(a) == CAP + 1
        await _insert(repo, _rows(a, CAP - 2))
        assert await repo.ready_count(a) == 2 * CAP - 1  # the largest exact count
        # Priorities shuffle the index order; small counts stay exact.
        for prio in (0, 5, 2, 9, 0, 5):
            await _insert(repo, _rows(p, 300, prio))
        assert await repo.ready_count(p) == 1800
        # Large: a queue published to alone, then two interleaved ones.
        await _insert(repo, _rows(a, 20_000))
        total_a = 2 * CAP - 1 + 20_000
        # (the priority queue's 1800 ids between its windows count as its own: ~8% high)
        assert abs(await repo.ready_count(a) - total_a) <= total_a * 0.1
        for _ in range(20):
            await _insert(repo, _rows(a, 500) + _rows(b, 500))
        total_a += 10_000
        assert abs(await repo.ready_count(a) - total_a) <= total_a * 0.1
        # Blocks of 500 interleaved: the windows see density 2/3 where it is 1/2. An
        # estimate, never below what the windows hold (2 * CAP).
        assert 2 * CAP <= await repo.ready_count(b) <= 10_000 * 1.35
        # Claimed messages are not ready: the head moves, counts follow.
        node = uuid.uuid4()
        await repo.register_node(node, "n")
        await repo.claim(b, node, 1, 256, no_ack=False)
        assert 2 * CAP <= await repo.ready_count(b) <= 9744 * 1.35
        # queue.declare's round trip uses the same count.
        used = await repo.use_queue_named(vhost, "prio")
        assert used is not None and used[1] == 1800
    finally:
        await repo.close()


async def test_one_ready_for_declare_get_purge_and_delete(database_url: str) -> None:
    """Delayed (not yet due) and expired (not yet swept) messages are not ready: declare-ok,
    get-ok, purge-ok and delete-ok all count the same messages, and purge leaves the
    delayed one for later (it is still "in the exchange", as with RabbitMQ's plugin)."""
    repo = await Repository.connect(database_url, size=4)
    try:
        vhost = await repo.find_vhost("/")
        assert vhost is not None
        q = await _queue(repo, vhost, "ready-defs")
        node = uuid.uuid4()
        await repo.register_node(node, "n")
        await _insert(repo, _rows(q, 4))
        await _insert(repo, [replace(_rows(q, 1)[0], delay_ms=60_000)])
        await _insert(repo, [replace(_rows(q, 1)[0], ttl_ms=60_000)])
        await repo.durable_pool.execute(
            "UPDATE messages SET expires_at = now() - interval '1 second'"
            " WHERE queue_id = $1 AND expires_at IS NOT NULL",
            q,
        )
        await repo.claim(q, node, 1, 1, no_ack=False)  # one unacked
        used = await repo.use_queue_named(vhost, "ready-defs")
        assert used is not None and used[1] == 3
        assert await repo.ready_count(q) == 3
        assert await repo.use_queue(q) == (3, 0)
        assert await repo.queue_counts(q) == (3, 0)
        assert [r[1] for r in await repo.ready_queues([q])] == [True]
        due = await repo.next_due(q)
        assert due is not None and due > 0
        assert await repo.purge_queue(q) == 3
        assert await repo.purge_queue(q) == 0
        left = await repo.durable_pool.fetchval(
            "SELECT count(*) FROM messages WHERE queue_id = $1", q
        )
        assert left == 3  # the unacked, the delayed and the expired (for the sweep)
        await _insert(repo, _rows(q, 2))
        assert await repo.delete_queue(q) == 2
    finally:
        await repo.close()
