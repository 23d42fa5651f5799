"""Consuming: consumers and their dispatchers, basic.get, and settling deliveries
(ack, requeue, discard)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from cavalcade.domain.deadletter import with_delivery_count
from cavalcade.domain.limits import queue_limit
from cavalcade.errors import AccessRefused
from cavalcade.storage.records import ClaimedMessage, QueueRow

from .dispatch import DeliveryTarget, QueueDispatcher
from .node import NodeState
from .queue_rules import QueueRules
from .queues import Queues
from .sessions import Access, Session, Sessions

INT4 = 2**31


def is_quorum(q: QueueRow) -> bool:
    return q.arguments.get("x-queue-type") == "quorum"


class Consuming:
    """Consume, cancel, get and settle use-cases of one node."""

    def __init__(
        self, node: NodeState, sessions: Sessions, queues: Queues, rules: QueueRules
    ) -> None:
        self.node = node
        self.sessions = sessions
        self.queues = queues
        self.rules = rules

    async def consume(self, s: Session, queue: str, target: DeliveryTarget, exclusive: bool) -> int:
        """Register a consumer; returns the queue id. Pending requeues and publishes of
        this node are committed first, so the consumer starts from the queue's true head."""
        node = self.node
        await self.sessions.require(s, Access.READ, "queue", queue)
        await node.batcher.flush()
        for attempt in range(2):
            q = await self.queues.get(s, queue)
            refused = await node.repo.add_consumer(
                q.id,
                node.node_id,
                target.channel_key,
                target.tag,
                exclusive,
                target.no_ack,
                max(-INT4, min(target.priority, INT4 - 1)),  # any integer; stored as int4
            )
            if not refused:
                break
            # An exclusive consumer (or, for an exclusive one, any consumer) in the way:
            # if it is on a node that turns out to be dead, look again once it is reaped.
            if attempt or not await self._owner_dead(q.id):
                raise AccessRefused(f"queue '{queue}' in vhost '{s.vhost.name}' in exclusive use")
        self._dispatcher(q).add(target)
        return q.id

    async def _owner_dead(self, queue_id: int) -> bool:
        liveness = self.node.liveness
        return liveness is not None and await liveness.settle_any(
            await liveness.store.consumer_nodes(queue_id)
        )

    def _dispatcher(self, q: QueueRow) -> QueueDispatcher:
        node = self.node
        d = node.dispatchers.get(q.id)
        if d is None:
            d = QueueDispatcher(
                node.repo,
                node.node_id,
                q.id,
                node.poll_interval,
                single_active=bool(q.arguments.get("x-single-active-consumer")),
                quorum=is_quorum(q),
                outage=node.outage,
                stats=node.stats,
                clock=node.clock,
                # A priority queue's next row may have to jump the held ones.
                holds=not q.arguments.get("x-max-priority"),
                budget=node.hold_budget,
                ahead=lambda: self._may_claim_ahead(q.id),
            )
            node.dispatchers[q.id] = d
        return d

    def _may_claim_ahead(self, queue_id: int) -> bool:
        """Whether a queue's dispatcher may hold rows of a backlog (its rules as cached
        now: policies change): no length limit, which counts them as ready, and no
        message TTL (every row would stop the claim ahead, which locks its head)."""
        found = self.node.queue_by_id(queue_id)
        if found is None:
            return False
        args = found[1].arguments
        return queue_limit(args) is None and args.get("x-message-ttl") is None

    @staticmethod
    def is_single_active(s: Session, queue_id: int) -> bool:
        q = s.vhost.queues_by_id.get(queue_id)
        return q is not None and bool(q.arguments.get("x-single-active-consumer"))

    async def detach(self, queue_id: int, target: DeliveryTarget) -> None:
        """Stop dispatching to a consumer, once a claim in flight is handed out; its row
        (and so its place as the single active consumer) stays until :meth:`cancel`."""
        d = self.node.dispatchers.get(queue_id)
        if d is not None:
            d.remove(target)
            if not d.consumers:
                self.node.dispatchers.pop(queue_id, None)
                await d.stop()
            else:
                await d.settled()  # a claim in flight may hold a share for it

    async def cancel(self, s: Session, queue_id: int, target: DeliveryTarget) -> None:
        """Remove a consumer; an auto-delete queue goes with its last consumer."""
        node = self.node
        await self.detach(queue_id, target)
        left = await node.repo.remove_consumer(
            queue_id, node.node_id, target.channel_key, target.tag
        )
        if left:
            # Another consumer (maybe on another node) may be the single active one now.
            node.wake(queue_id)
            await node.repo.notify_wake(node.node_id, queue_id)
        if left == 0:
            vh = await s.vhost.fresh(node.repo)
            q = vh.queues_by_id.get(queue_id)
            if q is not None and q.auto_delete:
                await node.batcher.flush()
                await self.queues.delete_row(vh, q)
                s.exclusive_queues.discard(q.id)

    async def get(
        self, s: Session, queue: str, no_ack: bool, channel_key: int
    ) -> tuple[ClaimedMessage, int] | None:
        """basic.get: one message and how many are left ready (None: empty)."""
        node = self.node
        await self.sessions.require(s, Access.READ, "queue", queue)
        await node.batcher.flush()
        q = await self.queues.get(s, queue)
        await node.repo.touch_queue(q.id)
        d = node.dispatchers.get(q.id)
        async with d.held_back() if d is not None else contextlib.nullcontext():
            if d is not None:
                await d.caught_up()  # as on RabbitMQ, waiting consumers get new ones first
            rows = await node.repo.claim(q.id, node.node_id, channel_key, 1, no_ack)
        node.stats.got(q.id, bool(rows), no_ack, bool(rows) and rows[0].redelivered)
        if not rows:
            return None
        if is_quorum(q):
            rows[0].properties = with_delivery_count(rows[0].properties, rows[0].delivery_count)
        remaining = await node.repo.ready_count(q.id)
        return rows[0], remaining

    def ack(self, ids: Sequence[int], queue_ids: Sequence[int] = ()) -> None:
        """Acked message ids (and, for the statistics, the queue of each)."""
        self.node.batcher.ack(ids)
        self.node.stats.acked(queue_ids)

    def requeue(self, messages: Sequence[tuple[int, int]]) -> None:
        """Return (queue id, message id) pairs to their queues as redelivered (next commit)."""
        self.node.batcher.requeue(messages)

    def discard(self, messages: Sequence[tuple[int, int]]) -> None:
        """Rejected without requeue: dead-lettered if the queue has a DLX, else dropped."""
        dead: list[int] = []
        drop: list[int] = []
        for qid, mid in messages:
            (dead if self.rules.has_dead_letter_exchange(qid) else drop).append(mid)
        self.node.batcher.reject(dead)
        self.node.batcher.ack(drop)
