"""Queues and publishes for the storage tests, made as the broker makes them."""

from __future__ import annotations

from cavalcade.storage.repository import NewMessage, Repository


def rows(qid: int, n: int, priority: int = 0, body: bytes = b"x") -> list[NewMessage]:
    """``n`` publishes into queue ``qid`` (transient: nothing here depends on it)."""
    return [
        NewMessage(qid, priority, False, "", "k", b"\x00\x00", None, None, None, None, body)
        for _ in range(n)
    ]


async def queue(repo: Repository, vhost: int, name: str) -> int:
    """A durable queue, inserted as ``queue.declare`` does; its id."""
    await repo.write_alone(repo.queue_insert(vhost, name, True, False, None, None, {}))
    q = await repo.find_queue(vhost, name)
    assert q is not None
    return q.id
