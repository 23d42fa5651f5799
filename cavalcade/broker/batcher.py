"""The per-node write batcher: many publishes and acks, from all connections, per commit.

While one transaction commits, new work piles up; the next transaction takes
all of it (group commit). A publish's future resolves only after its commit,
so a publisher confirm always means "committed".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg

from cavalcade.storage.repository import NewMessage, Repository

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 2000
MAX_BATCH_BYTES = 16 * 1024 * 1024


class WriteBatcher:
    """Group commit for publishes and acks."""

    def __init__(
        self,
        repo: Repository,
        node_id: UUID,
        on_committed: Callable[[set[int]], None],
        backlog_limit: int = 64 * 1024 * 1024,
    ) -> None:
        self._repo = repo
        self._node_id = node_id
        self._node = str(node_id)
        self._on_committed = on_committed
        self._ops: list[tuple[Sequence[NewMessage], asyncio.Future[None], int]] = []
        self._acks: list[int] = []
        self._requeues: list[int] = []
        self._requeue_queues: set[int] = set()
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.backlog_bytes = 0
        self.backlog_limit = backlog_limit
        self.blocked = False
        self.on_blocked: Callable[[bool], None] = lambda _blocked: None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="write-batcher")

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def publish(self, messages: Sequence[NewMessage]) -> asyncio.Future[None]:
        """Queue rows for the next commit; the future resolves once they are committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        size = sum(len(m.body) + len(m.properties) for m in messages)
        self._ops.append((messages, fut, size))
        self.backlog_bytes += size
        if not self.blocked and self.backlog_bytes > self.backlog_limit:
            self.blocked = True
            self.on_blocked(True)
        self._idle.clear()
        self._work.set()
        return fut

    def ack(self, ids: Sequence[int]) -> None:
        """Queue deletions of acked rows for the next commit."""
        if ids:
            self._acks.extend(ids)
            self._idle.clear()
            self._work.set()

    def requeue(self, messages: Sequence[tuple[int, int]]) -> None:
        """Queue (queue id, message id) pairs to return to ready, redelivered, in order
        with the acks and publishes around them."""
        if messages:
            self._requeues.extend(m for _, m in messages)
            self._requeue_queues.update(q for q, _ in messages)
            self._idle.clear()
            self._work.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._ops or self._acks or self._requeues or not self._idle.is_set():
            fut = self.publish(())
            await fut

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._ops or self._acks or self._requeues:
                await self._write_one()
            self._idle.set()

    def _take(
        self,
    ) -> tuple[list[NewMessage], list[int], list[asyncio.Future[None]], int]:
        """The oldest work that fits in one transaction, and all pending acks."""
        messages: list[NewMessage] = []
        futures: list[asyncio.Future[None]] = []
        size = taken = 0
        for rows, fut, op_size in self._ops:
            if futures and (
                len(messages) + len(rows) > MAX_BATCH_MESSAGES or size + op_size > MAX_BATCH_BYTES
            ):
                break
            messages.extend(rows)
            futures.append(fut)
            size += op_size
            taken += 1
        del self._ops[:taken]
        acks, self._acks = self._acks, []
        return messages, acks, futures, size

    async def _write_one(self) -> None:
        messages, acks, futures, size = self._take()
        requeues, self._requeues = self._requeues, []
        queues = {m.queue_id for m in messages} | self._requeue_queues
        self._requeue_queues = set()
        payload = None
        if queues:
            payload = self._node + ":" + ",".join(str(q) for q in sorted(queues))
            if len(payload) > 7000:  # NOTIFY payloads stop at 8000 bytes
                payload = self._node + ":*"
        delay = 0.05
        failure: Exception | None = None
        rejected = 0
        while True:
            try:
                await self._repo.write_batch(messages, acks, payload, requeues, self._node_id)
                break
            except asyncio.CancelledError:
                raise
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                # A queue deleted under us is skipped on retry; anything else is a bad
                # batch: it is refused (nacked), never retried forever.
                rejected += 1
                if rejected > 2:
                    log.error("write batch refused by the database: %s", exc)
                    failure = exc
                    break
            except Exception as exc:  # noqa: BLE001 - the database may come back
                log.warning("write batch failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.backlog_bytes -= size
        if self.blocked and self.backlog_bytes <= self.backlog_limit // 2:
            self.blocked = False
            self.on_blocked(False)
        for fut in futures:
            if fut.done():
                continue
            if failure is None:
                fut.set_result(None)
            else:
                fut.set_exception(failure)
                fut.exception()  # retrieved: publishers without confirms never look
        if queues:
            self._on_committed(queues)
