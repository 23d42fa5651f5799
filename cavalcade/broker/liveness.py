"""Which other nodes are alive: reap a killed node at once, and settle exclusive owners
in doubt before anyone is told 405.

Every node holds an advisory lock on its own key for as long as it lives
(:class:`cavalcade.storage.liveness.NodeLock`). A node seen holding its lock that no
longer does has lost its database session: the process is gone (or its connection was
cut, after which it would be fenced anyway), so it is reaped right away instead of
after the heartbeat threshold. The heartbeat threshold still catches what sessions
cannot show (a partition where the old session lingers) and nodes that hold no lock
(databases without advisory locks, older versions during a rolling upgrade).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from cavalcade.storage.liveness import LivenessStore, NodeLock, Observation
from cavalcade.storage.repository import Repository
from cavalcade.storage.sqlstate import is_unavailable

log = logging.getLogger(__name__)

SETTLE_STEP = 0.1  # seconds between looks while an exclusive owner is in doubt


class Liveness:
    """This node's view of the others (``seen_locked``) and the immediate reaper."""

    def __init__(
        self,
        repo: Repository,
        store: LivenessStore,
        node_id: uuid.UUID,
        heartbeat: float,
        threshold: float,
        on_reaped: Callable[[list[uuid.UUID]], None],
    ) -> None:
        self.repo = repo
        self.store = store
        self.me = node_id
        self.heartbeat = heartbeat
        self.threshold = threshold
        self.on_reaped = on_reaped
        # A heartbeat younger than this (with the lock held) means "alive".
        self.fresh = heartbeat + max(heartbeat, 1.0)
        # Nodes seen holding their lock since the database (this postmaster) started. Only
        # those are reaped when their lock is free: a node that never held one (no
        # advisory locks, an older version) or has not re-taken it after a database
        # restart is left to the heartbeat threshold.
        self.seen_locked: set[uuid.UUID] = set()
        self.server_started: object = None
        self.last: Observation | None = None
        self._look_task: asyncio.Future[list[uuid.UUID]] | None = None

    def reset(self) -> None:
        """Our own session ended (database restart, lost connection): forget who held locks."""
        self.seen_locked.clear()

    async def check(self) -> list[uuid.UUID]:
        """Look at every other node once; reap those whose lock was held and is free now.
        Concurrent callers share one look. Returns the nodes reaped."""
        if self._look_task is None or self._look_task.done():
            self._look_task = asyncio.ensure_future(self._look())
        return await asyncio.shield(self._look_task)

    async def _look(self) -> list[uuid.UUID]:
        obs = await self.store.observe(self.me)
        if obs.server_started != self.server_started:
            # A new postmaster (restart, failover): every lock was dropped and re-taken.
            self.seen_locked.clear()
            self.server_started = obs.server_started
        dead = [p.id for p in obs.peers.values() if p.locked is False and p.id in self.seen_locked]
        self.seen_locked = {p.id for p in obs.peers.values() if p.locked} | set(dead)
        self.last = obs
        if not dead:
            return []
        reaped = await self.repo.reap_nodes(dead, self.me)
        for node in reaped:
            obs.peers.pop(node, None)
            self.seen_locked.discard(node)
        if reaped:
            log.warning(
                "node %s is gone (its database session ended): its deliveries are requeued",
                ", ".join(map(str, reaped)),
            )
            self.on_reaped(reaped)
        return reaped

    async def reap_by_threshold(self) -> list[uuid.UUID]:
        """Reap the nodes (never this one) whose heartbeat is older than the threshold."""
        reaped = await self.repo.reap_dead_nodes(self.threshold, self.me)
        if reaped:
            log.warning(
                "node %s stopped heartbeating for %.0f s: its deliveries are requeued",
                ", ".join(map(str, reaped)),
                self.threshold,
            )
            self.on_reaped(reaped)
        return reaped

    async def settle(self, owner: uuid.UUID) -> bool:
        """An exclusive owner (queue or consumer) on another node: is it gone? Its lock
        free: reaped now, True. Alive (lock held, fresh heartbeat; or, without a lock, a
        heartbeat that moves): False, at once or within two heartbeats. In doubt: wait,
        bounded by the death threshold, until it is reaped (True) or shows it is alive."""
        if owner == self.me:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.threshold + self.heartbeat
        first_beat = None
        while True:
            await self.check()
            assert self.last is not None
            peer = self.last.peers.get(owner)
            if peer is None:
                return True  # reaped (here or by another node), or never was
            if peer.locked and peer.age < self.fresh:
                return False
            if not peer.locked and owner not in self.seen_locked:
                # No lock to go by: alive if its heartbeat moves while we watch.
                if first_beat is None:
                    first_beat = peer.heartbeat_at
                elif peer.heartbeat_at != first_beat and peer.age < self.fresh:
                    return False
            if peer.age > self.threshold and owner in await self.reap_by_threshold():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SETTLE_STEP)

    async def settle_any(self, owners: set[uuid.UUID]) -> bool:
        """:meth:`settle` each of ``owners`` (other nodes); True if any of them is gone."""
        gone = False
        for owner in owners - {self.me}:
            gone = await self.settle(owner) or gone
        return gone

    async def run(self, lock: NodeLock | None, interval: float) -> None:
        """Hold our lock and look at the others every ``interval`` seconds. Failures
        while the database is away are left to the heartbeat loop to report."""
        while True:
            await asyncio.sleep(interval)
            try:
                if lock is not None and await lock.ensure():
                    self.reset()  # our previous session ended: so did everyone's, maybe
                if not self.store.locks_supported:
                    return
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while
                if is_unavailable(exc):
                    continue  # the heartbeat loop reports the outage, once
                log.warning("liveness check failed: %r", exc)
