"""Exchanges: declare, delete, exchange-to-exchange bindings, auto-delete."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from cavalcade.domain.arguments import (
    EXCHANGE_EQUIVALENCE_KEYS,
    assert_equivalent,
    assert_flag,
    check_exchange_type,
    check_headers_binding,
    check_reserved,
    json_safe,
)
from cavalcade.domain.routing import BindingInfo, ExchangeInfo, routing_type
from cavalcade.errors import AccessRefused, ChannelError, NotFound, PreconditionFailed
from cavalcade.storage.rows import as_stored
from cavalcade.storage.topology_log import TopologyChange, TopologyRows

from .node import NodeState
from .sessions import Access, Session, Sessions, permit
from .topology import VhostTopology


def no_default_exchange() -> ChannelError:
    return AccessRefused("operation not permitted on the default exchange")


class Exchanges:
    """Exchange use-cases of one node."""

    def __init__(self, node: NodeState, sessions: Sessions) -> None:
        self.node = node
        self.sessions = sessions

    async def find(self, s: Session, name: str) -> ExchangeInfo:
        """The exchange as routed with (404 if there is none), re-reading the topology
        once if the cache may have missed it."""
        repo = self.node.repo
        vh = await s.vhost.fresh(repo)
        ex = vh.exchanges_by_name.get(name)
        if ex is None:
            vh.stale = True
            vh = await vh.fresh(repo)
            ex = vh.exchanges_by_name.get(name)
        if ex is None and await repo.find_exchange(vh.id, name) is not None:
            vh.force_reload()  # changed without an event (SQL, an older node): read it all
            vh = await vh.fresh(repo)
            ex = vh.exchanges_by_name.get(name)
        if ex is None:
            raise NotFound(f"no exchange '{name}' in vhost '{vh.name}'")
        return ex

    async def declare(
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
            raise no_default_exchange()
        if passive:
            await self.find(s, name)
            return
        # RabbitMQ: configure, even on a redeclare
        await self.sessions.require(s, Access.CONFIGURE, "exchange", name)
        args = json_safe(arguments or {})
        check_exchange_type(type_, args)
        repo = self.node.repo
        existing = await repo.find_exchange(s.vhost.id, name)
        if existing is None:
            check_reserved("exchange", name)
            ae = args.get("alternate-exchange")
            if isinstance(ae, str):  # routing there needs read here and write there
                permit(s, Access.READ, "exchange", name)
                permit(s, Access.WRITE, "exchange", ae)
            await repo.insert_exchange(
                s.vhost.id, name, type_, durable, auto_delete, internal, args
            )
            existing = await repo.find_exchange(s.vhost.id, name)
            assert existing is not None
            await self.node.changed(s.vhost, change=TopologyChange(exchanges={existing.id}))
            if existing.type == type_ and existing.durable == durable:
                return
        assert_flag("exchange", name, vhost, "type", type_, existing.type)
        assert_flag("exchange", name, vhost, "durable", durable, existing.durable)
        assert_flag("exchange", name, vhost, "auto_delete", auto_delete, existing.auto_delete)
        assert_flag("exchange", name, vhost, "internal", internal, existing.internal)
        assert_equivalent(
            "exchange", name, vhost, existing.arguments, args, EXCHANGE_EQUIVALENCE_KEYS
        )

    async def delete(self, s: Session, name: str, if_unused: bool) -> None:
        if name == "":
            raise no_default_exchange()
        if name.startswith("amq."):
            raise AccessRefused(
                f"deletion of system exchange '{name}' in vhost '{s.vhost.name}' not allowed"
            )
        # access before existence, as RabbitMQ
        await self.sessions.require(s, Access.CONFIGURE, "exchange", name)
        repo = self.node.repo
        ex = await repo.find_exchange(s.vhost.id, name)
        if ex is None:
            return  # RabbitMQ: deleting a missing exchange succeeds
        vh = await s.vhost.fresh(repo)
        sources = sources_into(vh, ex.id)
        if not await repo.delete_exchange(ex.id, if_unused):
            raise PreconditionFailed(f"exchange '{name}' in vhost '{s.vhost.name}' in use")
        deleted = await self.drop_unused_auto_delete(sources, vh)  # their bindings into it went
        await self.node.changed(s.vhost, change=TopologyChange(exchanges={ex.id} | deleted))

    async def bind(
        self,
        s: Session,
        destination: str,
        source: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None:
        # access first, as RabbitMQ
        await self.sessions.require(s, Access.WRITE, "exchange", destination)
        for n in (destination, source):
            if n == "":
                raise no_default_exchange()
        permit(s, Access.READ, "exchange", source)
        if unbind:
            # RabbitMQ: unbinding what does not exist (or no longer does) succeeds.
            try:
                dest = await self.find(s, destination)
                src = await self.find(s, source)
            except NotFound:
                return
        else:
            dest = await self.find(s, destination)
            src = await self.find(s, source)
        args = json_safe(arguments or {})
        await self.edge(s, src, None, dest.id, routing_key, args, unbind)

    async def edge(
        self,
        s: Session,
        src: ExchangeInfo,
        queue_id: int | None,
        exchange_id: int | None,
        routing_key: str,
        args: dict[str, Any],
        unbind: bool,
    ) -> None:
        """Add or remove one binding from ``src`` (to a queue or an exchange)."""
        repo = self.node.repo
        change = TopologyChange(edges={(src.id, queue_id or 0, exchange_id or 0)})
        if not unbind and routing_type(src) == "headers":
            check_headers_binding(args)
        if unbind:
            # Shielded: cancelled between the delete and its bump, no node would hear of it.
            await asyncio.shield(self._unbind(s, src, queue_id, exchange_id, routing_key, args))
        else:
            write = repo.binding_insert(src.id, queue_id, exchange_id, routing_key, args)
            edge = (src.id, queue_id or 0, exchange_id or 0)
            stored = as_stored(args)
            added = BindingInfo(src.id, routing_key, stored or {}, queue_id, exchange_id)

            def bound(_id: int | None, vh: VhostTopology) -> tuple[TopologyChange, TopologyRows]:
                now = [*vh.edges.get(edge, ())]  # the edge's bindings, as of then
                if added not in now:
                    now.append(added)
                return TopologyChange(edges={edge}), TopologyRows({}, {}, {edge: now})

            own = None if stored is None else bound
            await self.node.changed(s.vhost, change=change, write=write, own=own)

    async def _unbind(
        self,
        s: Session,
        src: ExchangeInfo,
        queue_id: int | None,
        exchange_id: int | None,
        routing_key: str,
        args: dict[str, Any],
    ) -> None:
        repo = self.node.repo
        change = TopologyChange(edges={(src.id, queue_id or 0, exchange_id or 0)})
        await repo.delete_binding(src.id, queue_id, exchange_id, routing_key, args)
        change.exchanges |= await self.drop_unused_auto_delete([src], s.vhost)
        if src.auto_delete:
            change.exchanges.add(src.id)
        await self.node.changed(s.vhost, change=change)

    async def drop_unused_auto_delete(
        self, exchanges: Iterable[ExchangeInfo], vh: VhostTopology | None = None
    ) -> set[int]:
        """An auto-delete exchange goes with its last binding (as a source). Its going
        removes the bindings into it, so auto-delete exchanges bound to it may follow
        (found in ``vh``, as read before the change), as on RabbitMQ."""
        repo = self.node.repo
        todo = list(exchanges)
        deleted: set[int] = set()
        while todo:
            ex = todo.pop()
            if ex.id in deleted or not ex.auto_delete:
                continue
            if await repo.exchange_has_bindings(ex.id):
                continue
            if await repo.delete_exchange(ex.id, if_unused=True):
                deleted.add(ex.id)
                if vh is not None:
                    todo += sources_into(vh, ex.id)
        return deleted


def sources_into(vh: VhostTopology, exchange_id: int) -> list[ExchangeInfo]:
    """Exchanges with a binding to exchange ``exchange_id``."""
    return [
        e for e in vh.exchanges.values() if any(b.exchange_id == exchange_id for b in e.bindings)
    ]
