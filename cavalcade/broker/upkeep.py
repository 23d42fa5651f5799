"""Upkeep of one node: the expiry sweep (messages and queues), reconciling what the node
owns after an outage, and vacuuming the churning tables."""

from __future__ import annotations

import asyncio
import logging

from . import write_path
from .node import NodeState
from .queue_rules import QueueRules

log = logging.getLogger(__name__)

SETTLE_WAIT = 5.0  # seconds the reconcile waits for claims in flight to end

# Vacuums between two orphan sweeps (one every ``vacuum_interval``, 10 s by default).
ORPHAN_SWEEP_EVERY = 30


class Upkeep:
    """Background use-cases the app's loops call."""

    def __init__(self, node: NodeState, rules: QueueRules) -> None:
        self.node = node
        self.rules = rules
        self._vacuums = 0

    async def reconcile(self) -> int:
        """After a database outage: rows this node owns that no channel holds (a claim or
        an ack lost in a crash) go back to their queues. Returns how many."""
        node = self.node
        await node.batcher.flush()
        # What channels and dispatchers hold is read before the rows owned (a row acked
        # meanwhile is in the first read; its delete may not be committed yet) and again
        # once the claims in flight have ended (their rows are in ``owned`` and only then
        # delivered or held). Rows held for consumers are delivered later: not orphans.
        held = self._holding()
        owned = await node.repo.owned_messages(node.node_id)
        waits = [asyncio.ensure_future(d.settled()) for d in node.dispatchers.values()]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=SETTLE_WAIT)
            for w in pending:
                w.cancel()
        held |= self._holding()
        orphans = [m for m in owned if m not in held]
        await node.repo.requeue(orphans, node.node_id)
        if orphans:
            node.wake_all()
        return len(orphans)

    def _holding(self) -> set[int]:
        """Message ids this node's channels track as unacked, or its dispatchers hold."""
        node = self.node
        return set(node.held()).union(*(d.kept() for d in node.dispatchers.values()))

    async def sweep(self, limit: int = 1000) -> None:
        """Expire messages past their TTL and queues past their ``x-expires``. Expired
        messages of any vhost may be swept here, so every vhost's topology is loaded
        (dead-lettering routes with it)."""
        node = self.node
        for vhost_id, name in await node.repo.vhosts():
            await node.vhost(vhost_id, name).fresh(node.repo)
        for _ in range(5):  # bounded: the next sweep goes on
            async with node.repo.write_transaction() as tx:
                touched = await write_path.expire(tx, limit, self.rules.dead_letter)
            node.wake_queues(touched)
            if not touched:
                break
        expires = {
            q.id: q.arguments["x-expires"]
            for vh in node.vhosts.values()
            for q in vh.queues.values()
            if isinstance(q.arguments.get("x-expires"), int)
        }
        for vhost_id, qid in await node.repo.expire_queues(expires):
            node.cancel_local_consumers(qid)
            gone_from = node.vhosts_by_id.get(vhost_id)
            if gone_from is not None:
                await node.changed(gone_from, queue_deleted=qid)

    async def next_expiry(self) -> float | None:
        """Seconds until the next ready message of any queue expires (None: none has a TTL)."""
        return await self.node.repo.next_expiry()

    async def vacuum(self) -> None:
        """VACUUM the tables whose rows die as fast as they are born; every
        ``ORPHAN_SWEEP_EVERY`` times (the first included), delete messages whose queue is
        gone (``Repository.delete_orphans``)."""
        if self._vacuums % ORPHAN_SWEEP_EVERY == 0:
            try:
                await self.node.repo.delete_orphans()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("orphan sweep failed: %s", exc)
        self._vacuums += 1
        await self.node.repo.vacuum_messages()
