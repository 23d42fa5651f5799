"""Idle queues cost nothing per queue: no claim or next-due round trips while nothing happens."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from cavalcade.broker.service import Broker
from cavalcade.storage.repository import ClaimedMessage, NewMessage, Repository
from tests.waiting import wait_until_async

QUEUES = 40


class CountingRepository(Repository):
    """The real repository, counting the per-queue statements a dispatcher runs."""

    claims = 0
    next_dues = 0

    async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedMessage]:
        CountingRepository.claims += 1
        return await super().claim(*args, **kwargs)

    async def next_due(self, queue_id: int) -> float | None:
        CountingRepository.next_dues += 1
        return await super().next_due(queue_id)


class Target:
    """A consumer with room for ten messages."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.channel_key = 1
        self.no_ack = False
        self.priority = 0
        self.got: list[ClaimedMessage] = []

    def credit(self) -> int:
        return 10 - len(self.got)

    def deliver(self, messages: list[ClaimedMessage]) -> bool:
        self.got += messages
        return True

    def reserve(self, n: int) -> None:
        pass

    def release(self, n: int) -> None:
        pass


async def _insert(repo: Repository, rows: list[NewMessage]) -> None:
    """Publish ``rows`` as the broker's write path does (one write transaction)."""
    async with repo.write_transaction() as tx:
        await tx.insert(rows)


async def test_idle_dispatchers_run_no_statements(database_url: str) -> None:
    base = await Repository.connect(database_url, size=4)
    repo = CountingRepository(base.durable_pool, base.async_commit_pool, notify=True)
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    broker = Broker(repo, node, poll_interval=0.05)
    broker.start()
    try:
        user_id, user = await broker.authenticate("guest", "guest", "127.0.0.1")
        s = await broker.open_session(user_id, user, "/")
        targets = []
        for i in range(QUEUES):
            await broker.declare_queue(s, f"idle-{i}", False, False, False, False, {})
            targets.append(Target(f"c{i}"))
            await broker.consume(s, f"idle-{i}", targets[-1], False)
        await wait_until_async(  # each queue's first (empty) drain
            lambda: CountingRepository.claims >= QUEUES, 30, "the first drains"
        )
        await asyncio.sleep(0.2)
        before = CountingRepository.claims, CountingRepository.next_dues
        start = broker.poller.polls
        await wait_until_async(lambda: broker.poller.polls >= start + 20, 30, "20 polls")
        assert (CountingRepository.claims, CountingRepository.next_dues) == before
        # A message published meanwhile by "another node" (straight into the table,
        # with no wake-up at all) is still found by the one poll.
        q = await repo.find_queue(s.vhost.id, "idle-7")
        assert q is not None
        await _insert(
            repo,
            [NewMessage(q.id, 0, True, "", "idle-7", b"\x00\x00", None, None, None, None, b"m")],
        )
        await wait_until_async(lambda: targets[7].got, 10, "the delivery")
        assert [m.body for m in targets[7].got] == [b"m"]
    finally:
        await broker.stop()
        await base.close()
