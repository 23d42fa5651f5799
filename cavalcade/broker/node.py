"""What every use-case of one node shares: the repository, the write batcher, the cached
topologies, the dispatchers and the connections being closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cavalcade.storage.admin import AdminStore
from cavalcade.storage.notify import TopologyChanged
from cavalcade.storage.records import QueueRow
from cavalcade.storage.repository import Repository
from cavalcade.storage.topology_log import TopologyChange, TopologyRows, Write

from .dispatch import DatabaseClock, HoldBudget, QueueDispatcher
from .group_commit import WriteBatcher
from .liveness import Liveness
from .outage import Outage
from .stats import NodeStats
from .topology import VhostTopology


def _nothing_held() -> set[int]:
    return set()


def _deaf() -> bool:
    return False


@dataclass(eq=False)
class NodeState:
    """The state the use-case modules of one broker node share (owned by the facade)."""

    repo: Repository
    node_id: uuid.UUID
    admin_store: AdminStore
    batcher: WriteBatcher
    outage: Outage
    stats: NodeStats
    poll_interval: float
    vhosts: dict[str, VhostTopology] = field(default_factory=dict)
    vhosts_by_id: dict[int, VhostTopology] = field(default_factory=dict)
    dispatchers: dict[int, QueueDispatcher] = field(default_factory=dict)
    # The database clock as every dispatcher of this node maps onto it (zero TTL).
    clock: DatabaseClock = field(default_factory=DatabaseClock)
    # The bodies its dispatchers hold for their consumers (dispatch.py), bounded.
    hold_budget: HoldBudget = field(default_factory=HoldBudget)
    closing: dict[int, asyncio.Event] = field(default_factory=dict)
    # Message ids the protocol layer holds as unacked (given by the server).
    held: Callable[[], set[int]] = _nothing_held
    # Settles exclusive owners on other nodes (set by the app; None: never in doubt).
    liveness: Liveness | None = None
    # Whether other nodes' commits are heard as they come (NOTIFY; set by the app).
    # Without that, what this node knows of a queue's ready rows may be a poll old.
    listening: Callable[[], bool] = _deaf

    # -- cached topology ----------------------------------------------------

    def vhost(self, vhost_id: int, name: str) -> VhostTopology:
        """This node's cached topology of a vhost (created empty and stale)."""
        vh = self.vhosts.get(name)
        if vh is None or vh.id != vhost_id:
            vh = VhostTopology(id=vhost_id, name=name)
            self.vhosts[name] = vh
            self.vhosts_by_id[vhost_id] = vh
        return vh

    def queue_by_id(self, queue_id: int) -> tuple[VhostTopology, QueueRow] | None:
        """A queue of any cached vhost, with its vhost."""
        for vh in self.vhosts.values():
            q = vh.queues_by_id.get(queue_id)
            if q is not None:
                return vh, q
        return None

    async def changed(
        self,
        vh: VhostTopology,
        queue_deleted: int | None = None,
        change: TopologyChange | None = None,
        write: Write | None = None,
        own: Callable[[int | None, VhostTopology], tuple[TopologyChange, TopologyRows]]
        | None = None,
    ) -> int | None:
        """A topology change is committed (or ``write`` makes it, in the same statement):
        bump the vhost's version (every node checks it before routing a batch), record
        what it touched (``change``: nodes catch up on just that; None: they reload the
        vhost) and tell the others now (NOTIFY). ``own``, given the id ``write``
        returned, says what the change and its rows are, so this node's cache takes it
        without reading it back (see :meth:`VhostTopology.apply_own`). Returns that id."""
        was_fresh = not vh.stale
        vh.stale = True
        marks = vh.marks
        if queue_deleted is not None and change is None:
            change = TopologyChange(queues={queue_deleted})
        event = TopologyChanged(self.node_id, vh.id, queue_deleted)
        version, written = await self.repo.topology.bump(vh.id, change, event, write)
        # Again: a fresh() during the bump (the sweeper's, another session's) read the
        # version before it and cleared ``stale``; it would miss this change for good.
        vh.stale = True
        if own is not None and version and (write is None or written is not None):
            wrote = written
            await vh.apply_own(version, marks + 1, lambda: own(wrote, vh))
        elif write is not None and not version and was_fresh:
            await vh.apply_own(vh.version + 1, marks + 1, None)  # it changed nothing
        return written

    # -- dispatchers ----------------------------------------------------------

    def wake(self, queue_id: int) -> None:
        d = self.dispatchers.get(queue_id)
        if d is not None:
            d.wake()

    def wake_queues(self, queue_ids: Iterable[int]) -> None:
        for qid in queue_ids:
            self.wake(qid)

    def credit_freed(self, queue_id: int) -> None:
        d = self.dispatchers.get(queue_id)
        if d is not None:
            d.credit_freed()

    def wake_all(self) -> None:
        for d in self.dispatchers.values():
            d.wake()

    def cancel_local_consumers(self, queue_id: int) -> None:
        """The queue is gone: tell this node's consumers on it (basic.cancel)."""
        d = self.dispatchers.pop(queue_id, None)
        if d is None:
            return
        for c in list(d.consumers):
            cancel = getattr(c, "cancel_by_server", None)
            if cancel is not None:
                cancel()
        d.consumers.clear()
        asyncio.get_running_loop().create_task(d.stop())
