"""The broker facade: one node's use-cases, composed from the modules that hold them.

Sessions and permissions (sessions.py), exchanges (exchanges.py), queues (queues.py),
publishing (publishing.py), consuming (consuming.py), queue rules of the write batch
(queue_rules.py) and upkeep (upkeep.py) share one :class:`NodeState`. The protocol
layer sees this class through the protocols of broker/api.py; the admin CLI and the
management API call the same use-case objects (``broker.queues``, ``broker.sessions``...).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cavalcade.domain.limits import BatchRules
from cavalcade.domain.properties import Properties
from cavalcade.storage import sqlstate
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.records import ClaimedMessage, DeadRow, NewMessage
from cavalcade.storage.repository import Repository
from cavalcade.storage.sqlstate import is_unavailable

from .api import BrokerPort
from .consuming import Consuming
from .dispatch import DeliveryTarget, QueueDispatcher
from .exchanges import Exchanges
from .group_commit import PendingPublish, PublishBacklog, WriteBatcher
from .liveness import Liveness
from .node import NodeState
from .outage import Outage
from .poller import ReadyPoller
from .publishing import Publishing, check_message
from .queue_rules import QueueRules
from .queues import DIRECT_REPLY_TO, DeclaredQueue, Queues
from .sessions import Access, Session, Sessions, _is_loopback
from .stats import NodeStats
from .topology import VhostTopology
from .upkeep import Upkeep

__all__ = ["DIRECT_REPLY_TO", "Access", "Broker", "DeclaredQueue", "Session", "_is_loopback"]


class Broker:
    """Use-cases over the repository, the write batcher and the dispatchers of one node."""

    def __init__(
        self,
        repo: Repository,
        node_id: uuid.UUID,
        poll_interval: float = 1.0,
        backlog_limit: int = 64 * 1024 * 1024,
        memory_limit: int = 0,
    ) -> None:
        self.repo = repo
        self.node_id = node_id
        self.admin_store = AdminStore(repo.durable_pool)
        self.poll_interval = poll_interval
        self.batcher = WriteBatcher(
            repo,
            node_id,
            self.wake_queues,
            backlog_limit,
            memory_limit=memory_limit,
        )
        self.outage = Outage()
        self.batcher.outage = self.outage
        self.stats: NodeStats = self.batcher.stats
        node = self.node = NodeState(
            repo, node_id, self.admin_store, self.batcher, self.outage, self.stats, poll_interval
        )
        self.sessions = Sessions(node)
        self.exchanges = Exchanges(node, self.sessions)
        self.queues = Queues(node, self.sessions, self.exchanges)
        self.publishing = Publishing(node, self.sessions, self.exchanges)
        self.queue_rules = QueueRules(node)
        self.consuming = Consuming(node, self.sessions, self.queues, self.queue_rules)
        self.upkeep = Upkeep(node, self.queue_rules)
        self.batcher.connect(self.publishing, self.queue_rules, node.dispatchers)
        self.poller = ReadyPoller(repo, node.dispatchers, poll_interval, self.outage)

    # -- lifecycle and wiring ------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()
        self.poller.start()

    async def stop(self) -> None:
        await self.poller.stop()
        await self.batcher.stop()
        for d in list(self.node.dispatchers.values()):
            await d.stop()

    def attach(
        self,
        held: Callable[[], set[int]],
        on_blocked: Callable[[bool], None],
        describe_connections: Callable[[], list[dict[str, Any]]] | None = None,
        blocked_connections: Callable[[], int] | None = None,
    ) -> None:
        """The protocol server tells the broker what its channels hold unacked (kept
        through :meth:`reconcile`), whom to tell when publishers are (un)blocked, and
        how to describe its connections for the statistics."""
        self.node.held = held
        self.batcher.on_blocked = on_blocked
        if describe_connections is not None:
            self.stats.describe_connections = describe_connections
        if blocked_connections is not None:
            self.stats.blocked_connections = blocked_connections

    @property
    def held(self) -> Callable[[], set[int]]:
        """Message ids the protocol layer holds as unacked."""
        return self.node.held

    @held.setter
    def held(self, value: Callable[[], set[int]]) -> None:
        self.node.held = value

    @property
    def liveness(self) -> Liveness | None:
        """Settles exclusive owners on other nodes (set by the app)."""
        return self.node.liveness

    @liveness.setter
    def liveness(self, value: Liveness | None) -> None:
        self.node.liveness = value

    @property
    def listening(self) -> Callable[[], bool]:
        """Whether other nodes' commits are heard as they come (set by the app)."""
        return self.node.listening

    @listening.setter
    def listening(self, value: Callable[[], bool]) -> None:
        self.node.listening = value

    @property
    def _dispatchers(self) -> dict[int, QueueDispatcher]:
        return self.node.dispatchers

    @property
    def publishing_blocked(self) -> bool:
        """Are publishers blocked (backlog over its limit, or a resource alarm)?"""
        return self.batcher.blocked

    async def flush(self) -> None:
        """Wait until every publish and settlement queued so far is committed."""
        await self.batcher.flush()

    def hurry(self) -> None:
        """A client now waits for publishes queued so far: commit without gathering more."""
        self.batcher.hurry()

    def publish_backlog(self) -> PublishBacklog:
        """Bytes published and not yet committed, and the backlog that blocks publishers."""
        return PublishBacklog(self.batcher.backlog_bytes, self.batcher.backlog_limit)

    @staticmethod
    def amqp_error(exc: BaseException) -> BaseException:
        """A database error as the AMQP error RabbitMQ gives in that situation (the
        database's own text goes to the log only); anything else unchanged."""
        return sqlstate.to_amqp(exc) if sqlstate.is_database_error(exc) else exc

    @staticmethod
    def database_unavailable(exc: BaseException) -> bool:
        """Does this error mean "the database is away" (hold the client and retry)?"""
        return is_unavailable(exc)

    def next_id(self) -> int:
        """A node-local id for connections and channels."""
        return self.sessions.next_id()

    # -- upkeep -------------------------------------------------------------

    async def reconcile(self) -> int:
        return await self.upkeep.reconcile()

    async def sweep(self, limit: int = 1000) -> None:
        await self.upkeep.sweep(limit)

    async def next_expiry(self) -> float | None:
        return await self.upkeep.next_expiry()

    async def vacuum(self) -> None:
        await self.upkeep.vacuum()

    # -- wake-ups and invalidation (from commits and NOTIFY) ------------------

    def credit_freed(self, queue_id: int) -> None:
        """Consumers of the queue may take more (an ack, basic.qos, a writable socket)."""
        self.node.credit_freed(queue_id)

    def wake_queues(self, queue_ids: Iterable[int]) -> None:
        self.node.wake_queues(queue_ids)

    def wake_all(self) -> None:
        self.node.wake_all()

    def topology_changed(self, vhost_id: int | None = None) -> None:
        """Mark cached topology stale (one vhost, or all)."""
        node = self.node
        targets = node.vhosts.values() if vhost_id is None else [node.vhosts_by_id.get(vhost_id)]
        for vh in targets:
            if vh is not None:
                vh.stale = True

    def nodes_reaped(self, _nodes: list[uuid.UUID]) -> None:
        """Other nodes were reaped: their deliveries are ready again, queues may be gone."""
        self.topology_changed()
        self.wake_all()

    def dispatched_queues(self) -> list[int]:
        """Ids of the queues this node has consumers on."""
        return list(self.node.dispatchers)

    def cached_versions(self) -> dict[int, int]:
        """The topology version each cached vhost was read at."""
        return {vid: vh.version for vid, vh in self.node.vhosts_by_id.items()}

    def queue_deleted_elsewhere(self, queue_id: int) -> None:
        """Another node deleted a queue: cancel our consumers on it."""
        self.node.cancel_local_consumers(queue_id)

    def consumed_elsewhere(self, queue_id: int) -> None:
        """Another node registered a consumer of a queue: ours no longer have it alone."""
        d = self.node.dispatchers.get(queue_id)
        if d is not None:
            d.consumed_elsewhere()

    def vhost_topology(self, vhost_id: int, name: str) -> VhostTopology:
        """This node's cached topology of a vhost (for publishes that come from SQL)."""
        return self.node.vhost(vhost_id, name)

    _vhost = vhost_topology

    # -- sessions ------------------------------------------------------------

    async def authenticate(self, username: str, password: str, peer: str | None) -> tuple[int, str]:
        return await self.sessions.authenticate(username, password, peer)

    async def authenticate_external(self, username: str, peer: str | None) -> tuple[int, str]:
        return await self.sessions.authenticate_external(username, peer)

    async def open_session(
        self,
        user_id: int,
        user: str,
        vhost_name: str,
        peer: str | None = None,
        client_properties: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Session:
        return await self.sessions.open(user_id, user, vhost_name, peer, client_properties, details)

    def session_closing(self, session: Session) -> None:
        self.sessions.closing(session)

    async def close_session(self, session: Session) -> None:
        await self.sessions.close(session)

    # -- exchanges and queues ------------------------------------------------------

    async def declare_exchange(
        self,
        s: Session,
        name: str,
        type_: str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        await self.exchanges.declare(
            s, name, type_, passive, durable, auto_delete, internal, arguments
        )

    async def delete_exchange(self, s: Session, name: str, if_unused: bool) -> None:
        await self.exchanges.delete(s, name, if_unused)

    async def bind_exchange(
        self,
        s: Session,
        destination: str,
        source: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None:
        await self.exchanges.bind(s, destination, source, routing_key, arguments, unbind)

    async def declare_queue(
        self,
        s: Session,
        name: str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> DeclaredQueue:
        return await self.queues.declare(
            s, name, passive, durable, exclusive, auto_delete, arguments
        )

    async def bind_queue(
        self,
        s: Session,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None:
        await self.queues.bind(s, queue, exchange, routing_key, arguments, unbind)

    async def purge_queue(self, s: Session, name: str) -> int:
        return await self.queues.purge(s, name)

    async def delete_queue(self, s: Session, name: str, if_unused: bool, if_empty: bool) -> int:
        return await self.queues.delete(s, name, if_unused, if_empty)

    # -- publishing ------------------------------------------------------------

    def check_publish(self, s: Session, exchange: str) -> None:
        self.publishing.check_publish(s, exchange)

    async def check_exchange(self, s: Session, exchange: str) -> None:
        await self.publishing.check_exchange(s, exchange)

    def check_exchange_cached(self, s: Session, exchange: str) -> bool:
        return self.publishing.check_exchange_cached(s, exchange)

    check_message = staticmethod(check_message)

    def publish(
        self,
        s: Session,
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
        waited: bool = True,
    ) -> asyncio.Future[int]:
        return self.publishing.publish(s, exchange, routing_key, props, body, waited)

    async def prepare(self, pending: Sequence[PendingPublish]) -> None:
        await self.publishing.prepare(pending)

    def route_pending(self, p: PendingPublish) -> list[NewMessage]:
        return self.publishing.route_pending(p)

    def rows_for(
        self,
        vh: VhostTopology,
        queue_ids: Sequence[int],
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
    ) -> list[NewMessage]:
        return self.publishing.rows_for(vh, queue_ids, exchange, routing_key, props, body)

    def rules_for(self, messages: Sequence[NewMessage], requeued: set[int]) -> BatchRules:
        return self.queue_rules.rules_for(messages, requeued)

    def dead_letter(self, rows: list[DeadRow], reason: str) -> list[NewMessage]:
        return self.queue_rules.dead_letter(rows, reason)

    # -- consuming -------------------------------------------------------------

    async def reply_queue(self, s: Session) -> str:
        return await self.queues.reply_queue(s)

    async def consume(self, s: Session, queue: str, target: DeliveryTarget, exclusive: bool) -> int:
        return await self.consuming.consume(s, queue, target, exclusive)

    def is_single_active(self, s: Session, queue_id: int) -> bool:
        return self.consuming.is_single_active(s, queue_id)

    async def detach(self, queue_id: int, target: DeliveryTarget) -> None:
        await self.consuming.detach(queue_id, target)

    async def cancel(self, s: Session, queue_id: int, target: DeliveryTarget) -> None:
        await self.consuming.cancel(s, queue_id, target)

    async def get(
        self, s: Session, queue: str, no_ack: bool, channel_key: int
    ) -> tuple[ClaimedMessage, int] | None:
        return await self.consuming.get(s, queue, no_ack, channel_key)

    def ack(self, ids: Sequence[int], queue_ids: Sequence[int] = ()) -> None:
        self.consuming.ack(ids, queue_ids)

    def requeue(self, messages: Sequence[tuple[int, int]]) -> None:
        self.consuming.requeue(messages)

    def discard(self, messages: Sequence[tuple[int, int]]) -> None:
        self.consuming.discard(messages)


def _conforms(broker: Broker) -> BrokerPort:
    """Checked by mypy: the facade offers everything the protocol port asks for."""
    return broker
