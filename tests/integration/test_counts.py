"""Ready counts for declare-ok: exact below 2 * CAP, a close estimate above, bounded work."""

from __future__ import annotations

import uuid

from cavalcade.storage.counting import CAP
from cavalcade.storage.repository import NewMessage, Repository


def _rows(qid: int, n: int, priority: int = 0) -> list[NewMessage]:
    return [
        NewMessage(qid, priority, False, "", "k", b"\x00\x00", None, None, None, None, b"x")
        for _ in range(n)
    ]


async def _queue(repo: Repository, vhost: int, name: str) -> int:
    await repo.insert_queue(vhost, name, True, False, None, None, {})
    q = await repo.find_queue(vhost, name)
    assert q is not None
    return q.id


async def test_counts_are_exact_when_small_and_close_when_large(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=4)
    try:
        vhost = await repo.find_vhost("/")
        assert vhost is not None
        a, b, p = [await _queue(repo, vhost, n) for n in ("a", "b", "prio")]
        assert await repo.ready_count(a) == 0
        await repo.write_batch(_rows(a, 1))
        assert await repo.ready_count(a) == 1
        await repo.write_batch(_rows(a, 2 * CAP - 2))
        assert await repo.ready_count(a) == 2 * CAP - 1  # the largest exact count
        # Priorities shuffle the index order; small counts stay exact.
        for prio in (0, 5, 2, 9, 0, 5):
            await repo.write_batch(_rows(p, 300, prio))
        assert await repo.ready_count(p) == 1800
        # Large: a queue published to alone, then two interleaved ones.
        await repo.write_batch(_rows(a, 20_000))
        total_a = 2 * CAP - 1 + 20_000
        # (the priority queue's 1800 ids between its windows count as its own: ~8% high)
        assert abs(await repo.ready_count(a) - total_a) <= total_a * 0.1
        for _ in range(20):
            await repo.write_batch(_rows(a, 500) + _rows(b, 500))
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
