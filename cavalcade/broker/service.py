"""The broker facade: every use-case the protocol layer may call, and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cavalcade.domain.arguments import (
    EXCHANGE_EQUIVALENCE_KEYS,
    QUEUE_EQUIVALENCE_KEYS,
    assert_equivalent,
    assert_flag,
    check_exchange_type,
    check_headers_binding,
    check_reserved,
    json_safe,
    server_generated_name,
    validate_dead_letter_arguments,
    validate_queue_arguments,
)
from cavalcade.domain.deadletter import dead_letter_properties, with_delivery_count
from cavalcade.domain.expiration import expiration_error
from cavalcade.domain.passwords import check_password
from cavalcade.domain.properties import MalformedProperties, Properties, parse_properties
from cavalcade.domain.routing import DELAYED_TYPE, ExchangeInfo, route, routing_type
from cavalcade.domain.sender_selected import (
    InvalidRoutingHeader,
    extra_routing_keys,
    without_bcc,
)
from cavalcade.errors import (
    AccessRefused,
    ConnectionAccessRefused,
    NotAllowed,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from cavalcade.storage import sqlstate
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.batch import BatchRules, QueueLimit
from cavalcade.storage.records import DeadRow
from cavalcade.storage.repository import ClaimedMessage, NewMessage, QueueRow, Repository
from cavalcade.storage.sqlstate import is_unavailable
from cavalcade.storage.topology_log import TopologyChange

from . import permissions
from .batcher import PendingPublish, WriteBatcher
from .dispatch import DeliveryTarget, QueueDispatcher
from .limits import check_connection_limits, check_queue_limit
from .liveness import Liveness
from .outage import Outage
from .poller import ReadyPoller
from .stats import NodeStats
from .topology import VhostTopology

log = logging.getLogger(__name__)

_LOOPBACK_ONLY_USERS = frozenset({"guest"})
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


@dataclass(slots=True)
class Session:
    """One client connection as the broker knows it."""

    id: int
    user: str
    user_id: int
    vhost: VhostTopology
    permissions: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]
    exclusive_queues: set[int] = field(default_factory=set)
    grants_at: float = field(default_factory=time.monotonic)
    vhost_name: str = ""
    max_channels: int | None = None  # the user's limit (refreshed by broker/control.py)
    channels_elsewhere: int = 0  # the user's channels on other nodes (likewise)


@dataclass(slots=True)
class DeclaredQueue:
    name: str
    message_count: int
    consumer_count: int


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
        self.admin_store = AdminStore(repo.pool)
        self.poll_interval = poll_interval
        self.batcher = WriteBatcher(
            repo,
            node_id,
            self.wake_queues,
            backlog_limit,
            rules_for=self.rules_for,
            router=self,
            memory_limit=memory_limit,
        )
        self.outage = Outage()
        self.batcher.outage = self.outage
        self.stats: NodeStats = self.batcher.stats
        self._vhosts: dict[str, VhostTopology] = {}
        self._vhosts_by_id: dict[int, VhostTopology] = {}
        self._dispatchers: dict[int, QueueDispatcher] = {}
        self.poller = ReadyPoller(repo, self._dispatchers, poll_interval, self.outage)
        self._closing: dict[int, asyncio.Event] = {}
        # Message ids the protocol layer holds as unacked (set by the server).
        self.held: Callable[[], set[int]] = set
        self._next_id = 0
        # Settles exclusive owners on other nodes (set by the app; None: never in doubt).
        self.liveness: Liveness | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()
        self.poller.start()

    async def stop(self) -> None:
        await self.poller.stop()
        await self.batcher.stop()
        for d in list(self._dispatchers.values()):
            await d.stop()

    async def reconcile(self) -> int:
        """After a database outage: rows this node owns that no channel holds (a claim or
        an ack lost in a crash) go back to their queues. Returns how many."""
        await self.batcher.flush()
        held = self.held()
        orphans = [m for m in await self.repo.owned_messages(self.node_id) if m not in held]
        await self.repo.requeue(orphans, self.node_id)
        if orphans:
            self.wake_all()
        return len(orphans)

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
        self._next_id += 1
        return self._next_id

    # -- wake-ups and invalidation (from commits and NOTIFY) ------------------

    def wake_queues(self, queue_ids: Iterable[int]) -> None:
        for qid in queue_ids:
            d = self._dispatchers.get(qid)
            if d is not None:
                d.wake()

    def wake_all(self) -> None:
        for d in self._dispatchers.values():
            d.wake()

    def topology_changed(self, vhost_id: int | None = None) -> None:
        """Mark cached topology stale (one vhost, or all)."""
        targets = self._vhosts.values() if vhost_id is None else [self._vhosts_by_id.get(vhost_id)]
        for vh in targets:
            if vh is not None:
                vh.stale = True

    def nodes_reaped(self, _nodes: list[uuid.UUID]) -> None:
        """Other nodes were reaped: their deliveries are ready again, queues may be gone."""
        self.topology_changed()
        self.wake_all()

    def dispatched_queues(self) -> list[int]:
        """Ids of the queues this node has consumers on."""
        return list(self._dispatchers)

    def cached_versions(self) -> dict[int, int]:
        """The topology version each cached vhost was read at."""
        return {vid: vh.version for vid, vh in self._vhosts_by_id.items()}

    def queue_deleted_elsewhere(self, queue_id: int) -> None:
        """Another node deleted a queue: cancel our consumers on it."""
        self._cancel_local_consumers(queue_id)

    async def _changed(
        self,
        vh: VhostTopology,
        queue_deleted: int | None = None,
        change: TopologyChange | None = None,
    ) -> None:
        """A topology change is committed: bump the vhost's version (every node checks it
        before routing a batch), record what it touched (``change``: nodes catch up on
        just that; None: they reload the vhost) and tell the others now (NOTIFY)."""
        vh.stale = True
        payload = f"{self.node_id}:{vh.id}"
        if queue_deleted is not None:
            payload += f":{queue_deleted}"
            if change is None:
                change = TopologyChange(queues={queue_deleted})
        await self.repo.topology.bump(vh.id, change, payload)

    # -- connections ---------------------------------------------------------

    async def authenticate(self, username: str, password: str, peer: str | None) -> tuple[int, str]:
        """Check credentials; RabbitMQ lets ``guest`` in from loopback only."""
        row = await self.repo.find_user(username)
        if (
            row is None
            or not row["password_hash"]
            or not check_password(password, row["password_hash"])
        ):
            raise ConnectionAccessRefused("login refused")
        if username in _LOOPBACK_ONLY_USERS and not _is_loopback(peer):
            raise ConnectionAccessRefused("guest may only log in from loopback")
        return int(row["id"]), username

    async def authenticate_external(self, username: str, peer: str | None) -> tuple[int, str]:
        """SASL EXTERNAL: the user named by a verified client certificate must exist."""
        row = await self.repo.find_user(username)
        if row is None:
            raise ConnectionAccessRefused(f"user '{username}' does not exist")
        if username in _LOOPBACK_ONLY_USERS and not _is_loopback(peer):
            raise ConnectionAccessRefused("guest may only log in from loopback")
        return int(row["id"]), username

    async def open_session(
        self,
        user_id: int,
        user: str,
        vhost_name: str,
        peer: str | None = None,
        client_properties: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Session:
        """Open a connection on a vhost (530 if unknown or not permitted); it is listed
        in the ``connections`` table while open."""
        vhost_id = await self.repo.find_vhost(vhost_name)
        if vhost_id is None:
            raise NotAllowed(f"vhost {vhost_name} not found")
        max_channels = await check_connection_limits(self.admin_store, user, vhost_name, vhost_id)
        perm = await self.repo.find_permission(user_id, vhost_id)
        if perm is None:
            raise NotAllowed(f"access to vhost '{vhost_name}' refused for user '{user}'")
        vh = self._vhost(vhost_id, vhost_name)
        session = Session(self.next_id(), user, user_id, vh, permissions.compile_grants(perm))
        session.vhost_name, session.max_channels = vhost_name, max_channels
        await self.repo.add_connection(
            self.node_id,
            session.id,
            peer,
            user,
            vhost_id,
            json_safe(client_properties or {}),
            details,
        )
        return session

    def session_closing(self, session: Session) -> None:
        """The socket is gone; until close_session ends, its exclusive queues are in limbo."""
        self._closing.setdefault(session.id, asyncio.Event())

    def vhost_topology(self, vhost_id: int, name: str) -> VhostTopology:
        """This node's cached topology of a vhost (for publishes that come from SQL)."""
        return self._vhost(vhost_id, name)

    def _vhost(self, vhost_id: int, name: str) -> VhostTopology:
        """This node's cached topology of a vhost (created empty and stale)."""
        vh = self._vhosts.get(name)
        if vh is None or vh.id != vhost_id:
            vh = VhostTopology(id=vhost_id, name=name)
            self._vhosts[name] = vh
            self._vhosts_by_id[vhost_id] = vh
        return vh

    async def close_session(self, session: Session) -> None:
        """The connection is gone: drop its exclusive queues and its listing."""
        try:
            await self.repo.remove_connection(self.node_id, session.id)
            if session.exclusive_queues:
                await self.batcher.flush()
                dropped = await self.repo.delete_exclusive_queues(self.node_id, session.id)
                for _, qid, _ in dropped:
                    self._cancel_local_consumers(qid)
                if dropped:
                    await self._changed(
                        session.vhost, change=TopologyChange(queues={q for _, q, _ in dropped})
                    )
        finally:
            done = self._closing.pop(session.id, None)
            if done is not None:
                done.set()

    def _permit(self, s: Session, which: int, kind: str, name: str) -> None:
        permissions.check(s.permissions, which, kind, name, s.vhost.name, s.user)

    async def _grants(self, s: Session) -> None:
        """Re-read the session's permissions when they are older than a second."""
        if permissions.stale(s.grants_at):
            row = await self.repo.find_permission(s.user_id, s.vhost.id)
            s.permissions, s.grants_at = permissions.compile_grants(row), time.monotonic()

    # -- exchanges -----------------------------------------------------------

    async def _exchange(self, s: Session, name: str) -> ExchangeInfo:
        vh = await s.vhost.fresh(self.repo)
        ex = vh.exchanges_by_name.get(name)
        if ex is None:
            vh.stale = True
            vh = await vh.fresh(self.repo)
            ex = vh.exchanges_by_name.get(name)
        if ex is None and await self.repo.find_exchange(vh.id, name) is not None:
            vh.force_reload()  # changed without an event (SQL, an older node): read it all
            vh = await vh.fresh(self.repo)
            ex = vh.exchanges_by_name.get(name)
        if ex is None:
            raise NotFound(f"no exchange '{name}' in vhost '{vh.name}'")
        return ex

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
        vhost = s.vhost.name
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if passive:
            await self._exchange(s, name)
            return
        await self._grants(s)
        self._permit(s, 0, "exchange", name)  # RabbitMQ: configure, even on a redeclare
        args = json_safe(arguments or {})
        check_exchange_type(type_, args)
        existing = await self.repo.find_exchange(s.vhost.id, name)
        if existing is None:
            check_reserved("exchange", name)
            ae = args.get("alternate-exchange")
            if isinstance(ae, str):  # routing there needs read here and write there
                self._permit(s, 2, "exchange", name)
                self._permit(s, 1, "exchange", ae)
            await self.repo.insert_exchange(
                s.vhost.id, name, type_, durable, auto_delete, internal, args
            )
            existing = await self.repo.find_exchange(s.vhost.id, name)
            assert existing is not None
            await self._changed(s.vhost, change=TopologyChange(exchanges={existing.id}))
            if existing.type == type_ and existing.durable == durable:
                return
        assert_flag("exchange", name, vhost, "type", type_, existing.type)
        assert_flag("exchange", name, vhost, "durable", durable, existing.durable)
        assert_flag("exchange", name, vhost, "auto_delete", auto_delete, existing.auto_delete)
        assert_flag("exchange", name, vhost, "internal", internal, existing.internal)
        assert_equivalent(
            "exchange", name, vhost, existing.arguments, args, EXCHANGE_EQUIVALENCE_KEYS
        )

    async def delete_exchange(self, s: Session, name: str, if_unused: bool) -> None:
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise AccessRefused(
                f"deletion of system exchange '{name}' in vhost '{s.vhost.name}' not allowed"
            )
        await self._grants(s)
        self._permit(s, 0, "exchange", name)  # access before existence, as RabbitMQ
        ex = await self.repo.find_exchange(s.vhost.id, name)
        if ex is None:
            return  # RabbitMQ: deleting a missing exchange succeeds
        vh = await s.vhost.fresh(self.repo)
        sources = _sources_into(vh, ex.id)
        if not await self.repo.delete_exchange(ex.id, if_unused):
            raise PreconditionFailed(f"exchange '{name}' in vhost '{s.vhost.name}' in use")
        deleted = await self._drop_unused_auto_delete(sources, vh)  # their bindings into it went
        await self._changed(s.vhost, change=TopologyChange(exchanges={ex.id} | deleted))

    async def bind_exchange(
        self,
        s: Session,
        destination: str,
        source: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None:
        await self._grants(s)
        self._permit(s, 1, "exchange", destination)  # access first, as RabbitMQ
        for n in (destination, source):
            if n == "":
                raise AccessRefused("operation not permitted on the default exchange")
        self._permit(s, 2, "exchange", source)
        if unbind:
            # RabbitMQ: unbinding what does not exist (or no longer does) succeeds.
            try:
                dest = await self._exchange(s, destination)
                src = await self._exchange(s, source)
            except NotFound:
                return
        else:
            dest = await self._exchange(s, destination)
            src = await self._exchange(s, source)
        args = json_safe(arguments or {})
        change = TopologyChange(edges={(src.id, 0, dest.id)})
        if not unbind and routing_type(src) == "headers":
            check_headers_binding(args)
        if unbind:
            await self.repo.delete_binding(src.id, None, dest.id, routing_key, args)
            change.exchanges |= await self._drop_unused_auto_delete([src], s.vhost)
            if src.auto_delete:
                change.exchanges.add(src.id)
        else:
            await self.repo.insert_binding(src.id, None, dest.id, routing_key, args)
        await self._changed(s.vhost, change=change)

    async def _drop_unused_auto_delete(
        self, exchanges: Iterable[ExchangeInfo], vh: VhostTopology | None = None
    ) -> set[int]:
        """An auto-delete exchange goes with its last binding (as a source). Its going
        removes the bindings into it, so auto-delete exchanges bound to it may follow
        (found in ``vh``, as read before the change), as on RabbitMQ."""
        todo = list(exchanges)
        deleted: set[int] = set()
        while todo:
            ex = todo.pop()
            if ex.id in deleted or not ex.auto_delete:
                continue
            if await self.repo.exchange_has_bindings(ex.id):
                continue
            if await self.repo.delete_exchange(ex.id, if_unused=True):
                deleted.add(ex.id)
                if vh is not None:
                    todo += _sources_into(vh, ex.id)
        return deleted

    # -- queues --------------------------------------------------------------

    def _check_exclusive(self, s: Session, q: QueueRow) -> None:
        if q.exclusive_node is not None and (
            q.exclusive_node != self.node_id or q.exclusive_connection != s.id
        ):
            self._locked(s, q)

    @staticmethod
    def _locked(s: Session, q: QueueRow) -> None:
        raise ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{q.name}' in vhost "
            f"'{s.vhost.name}'. It could be originally declared on another connection or "
            "the exclusive property value does not match that of the original declaration."
        )

    async def _owner_closed(self, q: QueueRow | None) -> bool:
        """If ``q`` is exclusive to a connection of this node that is closing, wait for
        that cleanup (which drops the queue) and say so: the caller looks again. If its
        owner is another node whose liveness is in doubt, settle that first (a dead owner
        is reaped, and its exclusive queues with it)."""
        if q is None or q.exclusive_node is None:
            return False
        if q.exclusive_node != self.node_id:
            return self.liveness is not None and await self.liveness.settle(q.exclusive_node)
        if q.exclusive_connection not in self._closing:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing[q.exclusive_connection].wait(), 5.0)
        return True

    async def _find_queue(self, s: Session, name: str) -> QueueRow | None:
        """The queue, once any cleanup of its (closed) exclusive owner on this node is done."""
        q = await self.repo.find_queue(s.vhost.id, name)
        if await self._owner_closed(q):
            q = await self.repo.find_queue(s.vhost.id, name)
        return q

    async def _use_queue(self, s: Session, name: str) -> tuple[QueueRow, int, int] | None:
        """Like :meth:`_find_queue`, also marking the queue used and counting it."""
        used = await self.repo.use_queue_named(s.vhost.id, name)
        if used is not None and await self._owner_closed(used[0]):
            used = await self.repo.use_queue_named(s.vhost.id, name)
        return used

    async def _queue(self, s: Session, name: str, exclusive_check: bool = True) -> QueueRow:
        q = await self._find_queue(s, name)
        if q is None:
            raise NotFound(f"no queue '{name}' in vhost '{s.vhost.name}'")
        if exclusive_check:
            self._check_exclusive(s, q)
        return q

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
        # No wait for this node's pending publishes: like RabbitMQ's, the count may trail
        # publishes not yet confirmed (Celery declares before every send_task).
        vhost = s.vhost.name
        if passive:
            if name == DIRECT_REPLY_TO:
                return DeclaredQueue(name, 0, 0)  # the pseudo-queue always "exists"
            used = await self._use_queue(s, name)
            if used is None:
                raise NotFound(f"no queue '{name}' in vhost '{s.vhost.name}'")
            self._check_exclusive(s, used[0])
            return DeclaredQueue(name, used[1], used[2])
        generated = name == "" or name.startswith(DIRECT_REPLY_TO + ".")
        if name == "":
            name = server_generated_name("amq.gen-")
        if not name.startswith(DIRECT_REPLY_TO + "."):  # the broker's own reply queues
            await self._grants(s)
            self._permit(s, 0, "queue", name)  # RabbitMQ: configure, even on a redeclare
        args = json_safe(arguments or {})
        validate_queue_arguments(args)
        validate_dead_letter_arguments(args, name, vhost)
        used = await self._use_queue(s, name)
        q = used[0] if used is not None else None
        if q is None:
            if not generated:
                check_reserved("queue", name)
            dlx = args.get("x-dead-letter-exchange")
            if isinstance(dlx, str):  # dead-lettering needs read here and write there
                self._permit(s, 2, "queue", name)
                self._permit(s, 1, "exchange", dlx)
            await check_queue_limit(self.admin_store, await s.vhost.fresh(self.repo), name)
            await self.repo.insert_queue(
                s.vhost.id,
                name,
                durable,
                auto_delete,
                self.node_id if exclusive else None,
                s.id if exclusive else None,
                args,
            )
            q = await self.repo.find_queue(s.vhost.id, name)
            assert q is not None
            if q.exclusive_node == self.node_id and q.exclusive_connection == s.id:
                s.exclusive_queues.add(q.id)
            await self._changed(s.vhost, change=TopologyChange(queues={q.id}))
        self._check_exclusive(s, q)
        if exclusive != (q.exclusive_node is not None):
            self._locked(s, q)  # RabbitMQ answers 405 here, not "inequivalent arg"
        if q.exclusive_node is None:  # an exclusive queue's durable flag is not compared
            assert_flag("queue", name, vhost, "durable", durable, q.durable)
        assert_flag("queue", name, vhost, "auto_delete", auto_delete, q.auto_delete)
        assert_equivalent("queue", name, vhost, q.arguments, args, QUEUE_EQUIVALENCE_KEYS)
        if used is not None:
            return DeclaredQueue(name, used[1], used[2])
        msgs, consumers = await self.repo.use_queue(q.id)
        return DeclaredQueue(name, msgs, consumers)

    async def bind_queue(
        self,
        s: Session,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None:
        await self._grants(s)
        self._permit(s, 1, "queue", queue)  # access before existence, as RabbitMQ
        if exchange == "":
            raise AccessRefused("operation not permitted on the default exchange")
        self._permit(s, 2, "exchange", exchange)
        if unbind:
            # RabbitMQ: unbinding what does not exist (or no longer does) succeeds.
            try:
                q = await self._queue(s, queue)
                ex = await self._exchange(s, exchange)
            except NotFound:
                return
        else:
            q = await self._queue(s, queue)
            ex = await self._exchange(s, exchange)
        args = json_safe(arguments or {})
        change = TopologyChange(edges={(ex.id, q.id, 0)})
        if not unbind and routing_type(ex) == "headers":
            check_headers_binding(args)
        if unbind:
            await self.repo.delete_binding(ex.id, q.id, None, routing_key, args)
            change.exchanges |= await self._drop_unused_auto_delete([ex], s.vhost)
            if ex.auto_delete:
                change.exchanges.add(ex.id)
        else:
            await self.repo.insert_binding(ex.id, q.id, None, routing_key, args)
        await self._changed(s.vhost, change=change)

    async def purge_queue(self, s: Session, name: str) -> int:
        await self._grants(s)
        self._permit(s, 2, "queue", name)
        await self.batcher.flush()
        q = await self._queue(s, name)
        return await self.repo.purge_queue(q.id)

    async def delete_queue(self, s: Session, name: str, if_unused: bool, if_empty: bool) -> int:
        await self._grants(s)
        self._permit(s, 0, "queue", name)  # access before existence, as RabbitMQ
        await self.batcher.flush()
        q = await self._find_queue(s, name)
        if q is None:
            return 0  # RabbitMQ: deleting a missing queue succeeds
        self._check_exclusive(s, q)
        msgs, consumers = await self.repo.queue_counts(q.id)
        if if_unused and consumers:
            raise PreconditionFailed(f"queue '{name}' in vhost '{s.vhost.name}' in use")
        if if_empty and msgs:
            raise PreconditionFailed(f"queue '{name}' in vhost '{s.vhost.name}' not empty")
        await self._delete_queue(s.vhost, q)
        s.exclusive_queues.discard(q.id)
        return msgs

    async def _delete_queue(self, vh: VhostTopology, q: QueueRow) -> None:
        vh = await vh.fresh(self.repo)
        into = vh.edges_into.get((q.id, 0), set())
        sources = [e for e in (vh.exchanges.get(edge[0]) for edge in into) if e and e.auto_delete]
        await self.repo.delete_queue(q.id)
        self._cancel_local_consumers(q.id)
        deleted = await self._drop_unused_auto_delete(sources, vh)
        change = TopologyChange(queues={q.id}, exchanges={e.id for e in sources} | deleted)
        await self._changed(vh, queue_deleted=q.id, change=change)

    def _cancel_local_consumers(self, queue_id: int) -> None:
        d = self._dispatchers.pop(queue_id, None)
        if d is None:
            return
        for c in list(d.consumers):
            cancel = getattr(c, "cancel_by_server", None)
            if cancel is not None:
                cancel()
        d.consumers.clear()
        asyncio.get_running_loop().create_task(d.stop())

    # -- publish ---------------------------------------------------------------

    async def check_exchange(self, s: Session, exchange: str) -> None:
        """Publishing needs write on it (403; ``amq.default`` for ``""``), the exchange
        (404), and it must not be internal (403)."""
        if permissions.stale(s.grants_at):
            await self._grants(s)
            self._permit(s, 1, "exchange", exchange)
        if exchange == "":
            return
        ex = s.vhost.exchanges_by_name.get(exchange)
        if ex is None or s.vhost.stale:
            ex = await self._exchange(s, exchange)
        if ex.internal:
            raise AccessRefused(
                f"cannot publish to internal exchange '{exchange}' in vhost '{s.vhost.name}'"
            )

    @staticmethod
    def check_message(props: Properties) -> None:
        """What RabbitMQ refuses in a message (406): a bad ``expiration``, a ``CC`` or
        ``BCC`` header that is not an array."""
        if props.expiration is not None:
            error = expiration_error(props.expiration)
            if error is not None:
                raise PreconditionFailed(error, 60, 40)
        try:
            extra_routing_keys(props)
        except InvalidRoutingHeader as exc:
            raise PreconditionFailed(str(exc), 60, 40) from exc

    def publish(
        self, s: Session, exchange: str, routing_key: str, props: Properties, body: bytes
    ) -> asyncio.Future[int]:
        """Hand a publish to the write batcher. It is routed there, against a topology at
        least as new as any change committed before the batch (so a binding made on
        another node applies at once); the future gives the number of queues reached,
        once committed."""
        cc = tuple(extra_routing_keys(props))  # valid: see check_message
        if cc:
            props = without_bcc(props) or props
        p = PendingPublish(s.vhost, exchange, routing_key, props, body, cc=cc)
        if not s.vhost.stale:
            # Route now, off the write path; the batch re-routes it if the version moved.
            p.rows, p.version = self._route(p), s.vhost.version
        return self.batcher.submit(p)

    async def prepare(self, pending: Sequence[PendingPublish]) -> None:
        """Before writing a batch: re-read every vhost whose topology moved since."""
        vhosts = {p.vhost.id: p.vhost for p in pending}
        versions = await self.repo.topology_versions(list(vhosts))
        for vid, vh in vhosts.items():
            if vh.stale or versions.get(vid, vh.version) != vh.version:
                vh.stale = True
                await vh.fresh(self.repo)

    def route_pending(self, p: PendingPublish) -> list[NewMessage]:
        """The rows a publish becomes (one per queue reached), as of the fresh topology."""
        if p.rows is not None and p.version == p.vhost.version and not p.vhost.stale:
            return p.rows
        return self._route(p)

    def _route(self, p: PendingPublish) -> list[NewMessage]:
        vh = p.vhost
        keys = (p.routing_key, *p.cc) if p.cc else p.routing_key
        if p.exchange == "":
            found = (vh.queues.get(k) for k in (p.routing_key, *p.cc))
            queue_ids = sorted({q.id for q in found if q is not None})  # once per queue
        else:
            ex = vh.exchanges_by_name.get(p.exchange)
            if ex is None:
                return []  # deleted since the publish was accepted: unroutable
            queue_ids = sorted(route(vh.exchanges, ex, keys, p.props.headers, vh.exchanges_by_name))
        return self.rows_for(vh, queue_ids, p.exchange, p.routing_key, p.props, p.body)

    def rows_for(
        self,
        vh: VhostTopology,
        queue_ids: Sequence[int],
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
    ) -> list[NewMessage]:
        """Rows of one routed publish: priority clamped, TTL and delay per queue."""
        delay = None
        if exchange:
            ex = vh.exchanges_by_name.get(exchange)
            if ex is not None and ex.type == DELAYED_TYPE:
                delay = _int_header(props.headers().get("x-delay"))
                for qid in queue_ids:  # its dispatcher must look for due times
                    d = self._dispatchers.get(qid)
                    if d is not None:
                        d.delayed = True
        message_ttl = _expiration_ms(props.expiration)
        rows = []
        for qid in queue_ids:
            q = vh.queues_by_id.get(qid)
            args = q.arguments if q is not None else {}
            prio = _clamp_priority(args, props.priority)
            ttl = _min_ttl(args.get("x-message-ttl"), message_ttl)
            rows.append(
                NewMessage(
                    queue_id=qid,
                    priority=prio,
                    persistent=props.persistent,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=props.raw,
                    content_type=props.content_type,
                    message_id=props.message_id,
                    correlation_id=props.correlation_id,
                    expiration=props.expiration,
                    body=body,
                    ttl_ms=ttl,
                    delay_ms=delay,
                )
            )
        return rows

    # -- queue rules inside the write batch ---------------------------------------

    def _queue_by_id(self, queue_id: int) -> tuple[VhostTopology, QueueRow] | None:
        for vh in self._vhosts.values():
            q = vh.queues_by_id.get(queue_id)
            if q is not None:
                return vh, q
        return None

    def rules_for(self, messages: Sequence[NewMessage], requeued: set[int]) -> BatchRules:
        """Limits of the queues a batch publishes to, delivery limits, dead-lettering."""
        rules = BatchRules(dead_letter=self.dead_letter)
        for qid in {m.queue_id for m in messages} | requeued:
            found = self._queue_by_id(qid)
            if found is None:
                continue
            args = found[1].arguments
            max_len, max_bytes = args.get("x-max-length"), args.get("x-max-length-bytes")
            if isinstance(max_len, int) or isinstance(max_bytes, int):
                rules.limits[qid] = QueueLimit(
                    max_len if isinstance(max_len, int) else None,
                    max_bytes if isinstance(max_bytes, int) else None,
                    str(args.get("x-overflow") or "drop-head"),
                )
        for qid in requeued:
            found = self._queue_by_id(qid)
            limit = found[1].arguments.get("x-delivery-limit") if found else None
            if isinstance(limit, int) and not isinstance(limit, bool):
                rules.delivery_limits[qid] = limit
        return rules

    def dead_letter(self, rows: list[DeadRow], reason: str) -> list[NewMessage]:
        """Copies of dead messages for their queue's ``x-dead-letter-exchange`` (none: dropped)."""
        copies: list[NewMessage] = []
        for row in rows:
            found = self._queue_by_id(row.queue_id)
            if found is None:
                continue
            vh, q = found
            dlx = q.arguments.get("x-dead-letter-exchange")
            if not isinstance(dlx, str):
                continue
            key = q.arguments.get("x-dead-letter-routing-key")
            key = key if isinstance(key, str) else row.routing_key
            try:
                raw = dead_letter_properties(
                    row.properties,
                    queue=q.name,
                    reason=reason,
                    exchange=row.exchange,
                    routing_keys=[row.routing_key],
                )
                props = parse_properties(raw)
            except MalformedProperties:
                props = parse_properties(row.properties)
            if dlx == "":
                target = vh.queues.get(key)
                targets = [target.id] if target is not None else []
            else:
                ex = vh.exchanges_by_name.get(dlx)
                if ex is None:
                    continue
                targets = sorted(route(vh.exchanges, ex, key, props.headers, vh.exchanges_by_name))
            for qid in targets:
                tq = vh.queues_by_id.get(qid)
                if reason != "rejected" and qid == q.id:
                    continue  # a cycle that no client breaks: RabbitMQ drops it too
                targs = tq.arguments if tq is not None else {}
                copies.append(
                    NewMessage(
                        queue_id=qid,
                        priority=_clamp_priority(targs, props.priority),
                        persistent=row.persistent,
                        exchange=dlx,
                        routing_key=key,
                        properties=props.raw,
                        content_type=props.content_type,
                        message_id=props.message_id,
                        correlation_id=props.correlation_id,
                        expiration=None,
                        body=row.body,
                        ttl_ms=_min_ttl(targs.get("x-message-ttl"), None),
                    )
                )
        return copies

    async def sweep(self, limit: int = 1000) -> None:
        """Expire messages past their TTL and queues past their ``x-expires``. Expired
        messages of any vhost may be swept here, so every vhost's topology is loaded
        (dead-lettering routes with it)."""
        for vhost_id, name in await self.repo.vhosts():
            await self._vhost(vhost_id, name).fresh(self.repo)
        rules = BatchRules(dead_letter=self.dead_letter)
        for _ in range(5):  # bounded: the next sweep goes on
            touched = await self.repo.expire_messages(limit, rules)
            self.wake_queues(touched)
            if not touched:
                break
        expires = {
            q.id: q.arguments["x-expires"]
            for vh in self._vhosts.values()
            for q in vh.queues.values()
            if isinstance(q.arguments.get("x-expires"), int)
        }
        for vhost_id, qid in await self.repo.expire_queues(expires):
            self._cancel_local_consumers(qid)
            gone_from = self._vhosts_by_id.get(vhost_id)
            if gone_from is not None:
                await self._changed(gone_from, queue_deleted=qid)

    def check_publish(self, s: Session, exchange: str) -> None:
        self._permit(s, 1, "exchange", exchange)

    # -- consume -------------------------------------------------------------

    async def reply_queue(self, s: Session) -> str:
        """Direct reply-to: a private queue behind ``amq.rabbitmq.reply-to`` (exclusive to
        the connection, gone with its consumer), so replies reach it from any node."""
        name = server_generated_name(DIRECT_REPLY_TO + ".")
        await self.declare_queue(s, name, False, False, True, True, {})
        return name

    async def consume(self, s: Session, queue: str, target: DeliveryTarget, exclusive: bool) -> int:
        """Register a consumer; returns the queue id. Pending requeues and publishes of
        this node are committed first, so the consumer starts from the queue's true head."""
        await self._grants(s)
        self._permit(s, 2, "queue", queue)
        await self.batcher.flush()
        for attempt in range(2):
            q = await self._queue(s, queue)
            refused = await self.repo.add_consumer(
                q.id,
                self.node_id,
                target.channel_key,
                target.tag,
                exclusive,
                target.no_ack,
                max(-(2**31), min(target.priority, 2**31 - 1)),  # any integer; stored as int4
            )
            if not refused:
                break
            # An exclusive consumer (or, for an exclusive one, any consumer) in the way:
            # if it is on a node that turns out to be dead, look again once it is reaped.
            if (
                attempt
                or self.liveness is None
                or not await self.liveness.settle_any(
                    await self.liveness.store.consumer_nodes(q.id)
                )
            ):
                raise AccessRefused(f"queue '{queue}' in vhost '{s.vhost.name}' in exclusive use")
        d = self._dispatchers.get(q.id)
        if d is None:
            d = QueueDispatcher(
                self.repo,
                self.node_id,
                q.id,
                self.poll_interval,
                single_active=bool(q.arguments.get("x-single-active-consumer")),
                quorum=_is_quorum(q),
                outage=self.outage,
                stats=self.stats,
            )
            self._dispatchers[q.id] = d
        d.add(target)
        return q.id

    def is_single_active(self, s: Session, queue_id: int) -> bool:
        q = s.vhost.queues_by_id.get(queue_id)
        return q is not None and bool(q.arguments.get("x-single-active-consumer"))

    async def detach(self, queue_id: int, target: DeliveryTarget) -> None:
        """Stop dispatching to a consumer, once a claim in flight is handed out; its row
        (and so its place as the single active consumer) stays until :meth:`cancel`."""
        d = self._dispatchers.get(queue_id)
        if d is not None:
            d.remove(target)
            if not d.consumers:
                self._dispatchers.pop(queue_id, None)
                await d.stop()
            else:
                await d.settled()  # a claim in flight may hold a share for it

    async def cancel(self, s: Session, queue_id: int, target: DeliveryTarget) -> None:
        """Remove a consumer; an auto-delete queue goes with its last consumer."""
        await self.detach(queue_id, target)
        left = await self.repo.remove_consumer(
            queue_id, self.node_id, target.channel_key, target.tag
        )
        if left:
            # Another consumer (maybe on another node) may be the single active one now.
            self.wake(queue_id)
            await self.repo.notify_wake(self.node_id, queue_id)
        if left == 0:
            vh = await s.vhost.fresh(self.repo)
            q = vh.queues_by_id.get(queue_id)
            if q is not None and q.auto_delete:
                await self.batcher.flush()
                await self._delete_queue(vh, q)
                s.exclusive_queues.discard(q.id)

    def wake(self, queue_id: int) -> None:
        d = self._dispatchers.get(queue_id)
        if d is not None:
            d.wake()

    async def get(
        self, s: Session, queue: str, no_ack: bool, channel_key: int
    ) -> tuple[ClaimedMessage, int] | None:
        await self._grants(s)
        self._permit(s, 2, "queue", queue)
        await self.batcher.flush()
        q = await self._queue(s, queue)
        await self.repo.touch_queue(q.id)
        d = self._dispatchers.get(q.id)
        if d is not None:
            await d.caught_up()  # as on RabbitMQ, waiting consumers get new messages first
        rows = await self.repo.claim(q.id, self.node_id, channel_key, 1, no_ack)
        self.stats.got(q.id, bool(rows), no_ack, bool(rows) and rows[0].redelivered)
        if not rows:
            return None
        if _is_quorum(q):
            rows[0].properties = with_delivery_count(rows[0].properties, rows[0].delivery_count)
        remaining = await self.repo.ready_count(q.id)
        return rows[0], remaining

    def ack(self, ids: Sequence[int], queue_ids: Sequence[int] = ()) -> None:
        """Acked message ids (and, for the statistics, the queue of each)."""
        self.batcher.ack(ids)
        self.stats.acked(queue_ids)

    def requeue(self, messages: Sequence[tuple[int, int]]) -> None:
        """Return (queue id, message id) pairs to their queues as redelivered (next commit)."""
        self.batcher.requeue(messages)

    def discard(self, messages: Sequence[tuple[int, int]]) -> None:
        """Rejected without requeue: dead-lettered if the queue has a DLX, else dropped."""
        dead: list[int] = []
        drop: list[int] = []
        for qid, mid in messages:
            found = self._queue_by_id(qid)
            has_dlx = found is not None and "x-dead-letter-exchange" in found[1].arguments
            (dead if has_dlx else drop).append(mid)
        self.batcher.reject(dead)
        self.batcher.ack(drop)


def _sources_into(vh: VhostTopology, exchange_id: int) -> list[ExchangeInfo]:
    """Exchanges with a binding to exchange ``exchange_id``."""
    return [
        e for e in vh.exchanges.values() if any(b.exchange_id == exchange_id for b in e.bindings)
    ]


def _clamp_priority(queue_args: dict[str, Any], priority: int | None) -> int:
    """A message's priority in a queue: 0 without ``x-max-priority``, else clamped to it."""
    cap = queue_args.get("x-max-priority")
    return min(priority or 0, cap) if isinstance(cap, int) and cap > 0 else 0


def _is_quorum(q: QueueRow) -> bool:
    return q.arguments.get("x-queue-type") == "quorum"


def _int_header(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | str | bytes):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def _expiration_ms(expiration: str | None) -> int | None:
    """The ``expiration`` property in ms (RabbitMQ: a non-negative integer string)."""
    if expiration is None:
        return None
    try:
        value = int(expiration)
    except ValueError:
        return None
    return value if value >= 0 else None


def _min_ttl(queue_ttl: object, message_ttl: int | None) -> int | None:
    ttls = [t for t in (queue_ttl, message_ttl) if isinstance(t, int) and not isinstance(t, bool)]
    return min(ttls) if ttls else None


def _is_loopback(peer: str | None) -> bool:
    if not peer:
        return True
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return peer in ("localhost",)
