"""Queues: declare, bind, purge, delete; exclusive owners and auto-delete."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from cavalcade.domain.arguments import (
    QUEUE_EQUIVALENCE_KEYS,
    assert_equivalent,
    assert_flag,
    check_reserved,
    json_safe,
    server_generated_name,
    validate_dead_letter_arguments,
    validate_queue_arguments,
)
from cavalcade.errors import ChannelError, NotFound, PreconditionFailed, ResourceLocked
from cavalcade.storage.records import QueueRow
from cavalcade.storage.rows import as_stored
from cavalcade.storage.topology_log import TopologyChange, TopologyRows

from .exchanges import Exchanges, no_default_exchange
from .limits import check_queue_limit
from .node import NodeState
from .sessions import Access, Session, Sessions, permit
from .topology import VhostTopology

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


@dataclass(slots=True)
class DeclaredQueue:
    name: str
    message_count: int
    consumer_count: int


def locked(s: Session, q: QueueRow) -> ChannelError:
    return ResourceLocked(
        f"cannot obtain exclusive access to locked queue '{q.name}' in vhost "
        f"'{s.vhost.name}'. It could be originally declared on another connection or "
        "the exclusive property value does not match that of the original declaration."
    )


def not_found(s: Session, name: str) -> ChannelError:
    return NotFound(f"no queue '{name}' in vhost '{s.vhost.name}'")


class Queues:
    """Queue use-cases of one node."""

    def __init__(self, node: NodeState, sessions: Sessions, exchanges: Exchanges) -> None:
        self.node = node
        self.sessions = sessions
        self.exchanges = exchanges

    # -- finding ---------------------------------------------------------------

    def check_exclusive(self, s: Session, q: QueueRow) -> None:
        if q.exclusive_node is not None and (
            q.exclusive_node != self.node.node_id or q.exclusive_connection != s.id
        ):
            raise locked(s, q)

    async def _owner_closed(self, s: Session, q: QueueRow | None) -> bool:
        """If ``q`` is exclusive to another connection of this node that is closing, wait
        for that cleanup (which drops the queue) and say so: the caller looks again. If
        its owner is another node whose liveness is in doubt, settle that first (a dead
        owner is reaped, and its exclusive queues with it). A closing connection's own
        last methods (finished before its cleanup) never wait for that cleanup."""
        if q is None or q.exclusive_node is None:
            return False
        node = self.node
        if q.exclusive_node != node.node_id:
            return node.liveness is not None and await node.liveness.settle(q.exclusive_node)
        if q.exclusive_connection == s.id or q.exclusive_connection not in node.closing:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(node.closing[q.exclusive_connection].wait(), 5.0)
        return True

    async def find(self, s: Session, name: str) -> QueueRow | None:
        """The queue, once any cleanup of its (closed) exclusive owner on this node is done."""
        q = await self.node.repo.find_queue(s.vhost.id, name)
        if await self._owner_closed(s, q):
            q = await self.node.repo.find_queue(s.vhost.id, name)
        return q

    async def _use(self, s: Session, name: str) -> tuple[QueueRow, int, int] | None:
        """Like :meth:`find`, also marking the queue used and counting it."""
        known = self._known_empty(s, name)
        if known is not None:
            return known
        used = await self.node.repo.use_queue_named(s.vhost.id, name)
        if used is not None and await self._owner_closed(s, used[0]):
            used = await self.node.repo.use_queue_named(s.vhost.id, name)
        if used is None:
            return None
        return used[0], used[1] + self.held(used[0].id), used[2]

    def held(self, queue_id: int) -> int:
        """Rows this node holds for the queue's consumers: ready ones to a client."""
        d = self.node.dispatchers.get(queue_id)
        return 0 if d is None else len(d.held)

    def _known_empty(self, s: Session, name: str) -> tuple[QueueRow, int, int] | None:
        """(queue, 0, consumers) without the database, for a queue this node consumes
        alone and knows to hold no ready row (its dispatcher drained it and has heard of
        no arrival since; other nodes' commits are heard by NOTIFY). As RabbitMQ's, that
        count may trail commits not yet heard of, by a NOTIFY's delay. Nothing is marked
        used: a queue with consumers does not expire, and its last consumer's leaving
        (or its node's death) starts the clock. None: ask the database."""
        node, vh = self.node, s.vhost
        if vh.stale or not node.listening():
            return None
        q = vh.queues.get(name)
        if q is None or (q.exclusive_node is not None and q.exclusive_connection != s.id):
            return None
        if q.exclusive_node is not None and q.exclusive_node != node.node_id:
            return None
        d = node.dispatchers.get(q.id)
        consumers = None if d is None else d.consumers_if_empty()
        return None if consumers is None else (q, 0, consumers)

    async def get(self, s: Session, name: str, exclusive_check: bool = True) -> QueueRow:
        """The queue (404 if missing; 405 if exclusive to another connection)."""
        q = await self.find(s, name)
        if q is None:
            raise not_found(s, name)
        if exclusive_check:
            self.check_exclusive(s, q)
        return q

    # -- declare -------------------------------------------------------------

    async def declare(
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
        if passive:
            return await self._declare_passive(s, name)
        vhost = s.vhost.name
        generated = name == "" or name.startswith(DIRECT_REPLY_TO + ".")
        if name == "":
            name = server_generated_name("amq.gen-")
        if not name.startswith(DIRECT_REPLY_TO + "."):  # the broker's own reply queues
            # RabbitMQ: configure, even on a redeclare
            await self.sessions.require(s, Access.CONFIGURE, "queue", name)
        args = json_safe(arguments or {})
        validate_queue_arguments(args)
        validate_dead_letter_arguments(args, name, vhost)
        used = await self._use(s, name)
        if used is not None:
            q, created = used[0], False
        else:
            q, created = await self._create(
                s, name, generated, durable, exclusive, auto_delete, args
            )
        self.check_exclusive(s, q)
        if exclusive != (q.exclusive_node is not None):
            raise locked(s, q)  # RabbitMQ answers 405 here, not "inequivalent arg"
        if q.exclusive_node is None:  # an exclusive queue's durable flag is not compared
            assert_flag("queue", name, vhost, "durable", durable, q.durable)
        assert_flag("queue", name, vhost, "auto_delete", auto_delete, q.auto_delete)
        declared = q.arguments if q.declared is None else q.declared  # not the policies'
        assert_equivalent("queue", name, vhost, declared, args, QUEUE_EQUIVALENCE_KEYS)
        if used is not None:
            return DeclaredQueue(name, used[1], used[2])
        if created:  # this statement made it: nothing in it, nobody on it
            return DeclaredQueue(name, 0, 0)
        msgs, consumers = await self.node.repo.use_queue(q.id)
        return DeclaredQueue(name, msgs + self.held(q.id), consumers)

    async def _declare_passive(self, s: Session, name: str) -> DeclaredQueue:
        if name == DIRECT_REPLY_TO:
            return DeclaredQueue(name, 0, 0)  # the pseudo-queue always "exists"
        used = await self._use(s, name)
        if used is None:
            raise not_found(s, name)
        self.check_exclusive(s, used[0])
        return DeclaredQueue(name, used[1], used[2])

    async def _create(
        self,
        s: Session,
        name: str,
        generated: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        args: dict[str, Any],
    ) -> tuple[QueueRow, bool]:
        node, repo = self.node, self.node.repo
        if not generated:
            check_reserved("queue", name)
        dlx = args.get("x-dead-letter-exchange")
        if isinstance(dlx, str):  # dead-lettering needs read here and write there
            permit(s, Access.READ, "queue", name)
            permit(s, Access.WRITE, "exchange", dlx)
        await check_queue_limit(node.admin_store, await s.vhost.fresh(repo), name)
        owner, owner_connection = (node.node_id, s.id) if exclusive else (None, None)
        write = repo.queue_insert(
            s.vhost.id, name, durable, auto_delete, owner, owner_connection, args
        )
        stored = as_stored(args)

        def created(qid: int | None, _vh: VhostTopology) -> tuple[TopologyChange, TopologyRows]:
            assert qid is not None
            assert stored is not None
            row = QueueRow(qid, name, durable, auto_delete, owner, owner_connection, stored)
            return TopologyChange(queues={qid}), TopologyRows({qid: row}, {}, {})

        # The insert commits with its topology bump: one statement, one commit.
        own = None if stored is None else created
        qid = await node.changed(s.vhost, change=TopologyChange(), write=write, own=own)
        if qid is None:  # declared meanwhile by another session: answer with that one
            q = await repo.find_queue(s.vhost.id, name)
            assert q is not None
            return q, False
        if exclusive:
            s.exclusive_queues.add(qid)
        return QueueRow(qid, name, durable, auto_delete, owner, owner_connection, args), True

    async def reply_queue(self, s: Session) -> str:
        """Direct reply-to: a private queue behind ``amq.rabbitmq.reply-to`` (exclusive to
        the connection, gone with its consumer), so replies reach it from any node."""
        name = server_generated_name(DIRECT_REPLY_TO + ".")
        await self.declare(s, name, False, False, True, True, {})
        return name

    # -- bind, purge, delete ---------------------------------------------------

    async def bind(
        self,
        s: Session,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None:
        # access before existence, as RabbitMQ
        await self.sessions.require(s, Access.WRITE, "queue", queue)
        if exchange == "":
            raise no_default_exchange()
        permit(s, Access.READ, "exchange", exchange)
        if unbind:
            # RabbitMQ: unbinding what does not exist (or no longer does) succeeds.
            try:
                q = await self.get(s, queue)
                ex = await self.exchanges.find(s, exchange)
            except NotFound:
                return
        else:
            q = await self.get(s, queue)
            ex = await self.exchanges.find(s, exchange)
        args = json_safe(arguments or {})
        await self.exchanges.edge(s, ex, q.id, None, routing_key, args, unbind)

    async def purge(self, s: Session, name: str) -> int:
        await self.sessions.require(s, Access.READ, "queue", name)
        await self.node.batcher.flush()
        q = await self.get(s, name)
        d = self.node.dispatchers.get(q.id)
        if d is None:
            return await self.node.repo.purge_queue(q.id)
        async with d.held_back():  # held rows are ready messages: purged too
            return await self.node.repo.purge_queue(q.id)

    async def delete(self, s: Session, name: str, if_unused: bool, if_empty: bool) -> int:
        # access before existence, as RabbitMQ
        await self.sessions.require(s, Access.CONFIGURE, "queue", name)
        await self.node.batcher.flush()
        q = await self.find(s, name)
        if q is None:
            return 0  # RabbitMQ: deleting a missing queue succeeds
        self.check_exclusive(s, q)
        msgs, consumers = await self.node.repo.queue_counts(q.id)
        msgs += self.held(q.id)
        if if_unused and consumers:
            raise PreconditionFailed(f"queue '{name}' in vhost '{s.vhost.name}' in use")
        if if_empty and msgs:
            raise PreconditionFailed(f"queue '{name}' in vhost '{s.vhost.name}' not empty")
        await self.delete_row(s.vhost, q)
        s.exclusive_queues.discard(q.id)
        return msgs

    async def delete_row(self, vh: VhostTopology, q: QueueRow) -> None:
        """Delete a queue (no checks): its consumers here are cancelled, auto-delete
        exchanges it was the last binding of go too, and every node hears of it."""
        # Shielded: cancelled between the delete and its bump, no node would hear of it.
        await asyncio.shield(self._delete_row(vh, q))

    async def _delete_row(self, vh: VhostTopology, q: QueueRow) -> None:
        repo = self.node.repo
        vh = await vh.fresh(repo)
        into = vh.edges_into.get((q.id, 0), set())
        sources = [e for e in (vh.exchanges.get(edge[0]) for edge in into) if e and e.auto_delete]
        await repo.delete_queue(q.id)
        self.node.cancel_local_consumers(q.id)
        deleted = await self.exchanges.drop_unused_auto_delete(sources, vh)
        change = TopologyChange(queues={q.id}, exchanges={e.id for e in sources} | deleted)

        def gone(_id: int | None, _vh: VhostTopology) -> tuple[TopologyChange, TopologyRows]:
            return change, TopologyRows({}, {}, {})  # the queue and its bindings are gone

        # With auto-delete sources (gone or not), the next use reads them back.
        own = None if sources else gone
        await self.node.changed(vh, queue_deleted=q.id, change=change, own=own)
