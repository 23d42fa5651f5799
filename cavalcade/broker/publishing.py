"""Publishing: what a publish must pass, and routing it into rows at write time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cavalcade.domain.expiration import expiration_error
from cavalcade.domain.properties import Properties
from cavalcade.domain.routing import DELAYED_TYPE, ExchangeInfo, route
from cavalcade.domain.sender_selected import InvalidRoutingHeader, extra_routing_keys, without_bcc
from cavalcade.errors import AccessRefused, PreconditionFailed
from cavalcade.storage.records import NewMessage

from . import permissions
from .exchanges import Exchanges
from .group_commit import PendingPublish
from .node import NodeState
from .rows import expiration_ms, int_header, message_row
from .sessions import Access, Session, Sessions, permit
from .topology import VhostTopology


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


class Publishing:
    """Publish use-cases of one node; also the batcher's router (see batcher.Router)."""

    def __init__(self, node: NodeState, sessions: Sessions, exchanges: Exchanges) -> None:
        self.node = node
        self.sessions = sessions
        self.exchanges = exchanges

    def check_publish(self, s: Session, exchange: str) -> None:
        """Write on the exchange (``amq.default`` for ``""``), with the grants as loaded."""
        permit(s, Access.WRITE, "exchange", exchange)

    async def check_exchange(self, s: Session, exchange: str) -> None:
        """Publishing needs write on it (403; ``amq.default`` for ``""``), the exchange
        (404), and it must not be internal (403)."""
        if self.check_exchange_cached(s, exchange):
            return
        if permissions.stale(s.grants_at):
            await self.sessions.require(s, Access.WRITE, "exchange", exchange)
        if exchange == "":
            return
        ex = s.vhost.exchanges_by_name.get(exchange)
        if ex is None or s.vhost.stale:
            ex = await self.exchanges.find(s, exchange)
        _check_not_internal(s, ex, exchange)

    def check_exchange_cached(self, s: Session, exchange: str) -> bool:
        """:meth:`check_exchange` from what the session holds: False if that takes the
        database (stale grants, an exchange not cached; nothing was checked)."""
        if permissions.stale(s.grants_at):
            return False
        if exchange == "":
            return True
        ex = s.vhost.exchanges_by_name.get(exchange)
        if ex is None or s.vhost.stale:
            return False
        _check_not_internal(s, ex, exchange)
        return True

    def publish(
        self,
        s: Session,
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
        waited: bool = True,
    ) -> asyncio.Future[int]:
        """Hand a publish to the write batcher. It is routed there, against a topology at
        least as new as any change committed before the batch (so a binding made on
        another node applies at once); the future gives the number of queues reached,
        once committed. ``waited``: a client waits for that commit."""
        cc = tuple(extra_routing_keys(props))  # valid: see check_message
        if cc:
            props = without_bcc(props) or props
        p = PendingPublish(s.vhost, exchange, routing_key, props, body, cc=cc, waited=waited)
        if not s.vhost.stale:
            # Route now, off the write path; the batch re-routes it if the version moved.
            p.rows, p.version = self._route(p), s.vhost.version
        return self.node.batcher.submit(p)

    async def prepare(self, pending: Sequence[PendingPublish]) -> None:
        """Before writing a batch: re-read every vhost whose topology moved since."""
        repo = self.node.repo
        vhosts = {p.vhost.id: p.vhost for p in pending}
        versions = await repo.topology_versions(list(vhosts))
        for vid, vh in vhosts.items():
            if vh.stale or versions.get(vid, vh.version) != vh.version:
                vh.stale = True
                await vh.fresh(repo)

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
                delay = int_header(props.headers().get("x-delay"))
                for qid in queue_ids:  # its dispatcher must look for due times
                    d = self.node.dispatchers.get(qid)
                    if d is not None:
                        d.delayed = True
        message_ttl = expiration_ms(props.expiration)
        rows = []
        for qid in queue_ids:
            q = vh.queues_by_id.get(qid)
            rows.append(
                message_row(
                    qid,
                    q.arguments if q is not None else {},
                    props,
                    exchange=exchange,
                    routing_key=routing_key,
                    body=body,
                    persistent=props.persistent,
                    expiration=props.expiration,
                    message_ttl=message_ttl,
                    delay_ms=delay,
                )
            )
        return rows


def _check_not_internal(s: Session, ex: ExchangeInfo, exchange: str) -> None:
    if ex.internal:
        raise AccessRefused(
            f"cannot publish to internal exchange '{exchange}' in vhost '{s.vhost.name}'"
        )
