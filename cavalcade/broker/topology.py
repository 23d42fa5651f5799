"""Each vhost's topology, cached in memory and kept up to date when it changes.

A change (here or, via NOTIFY and the version check, on another node) marks the
cache stale. The next use catches up from the topology events: only the queues,
exchanges and binding edges changed since the cached version are re-read and
applied, so setting up N bindings costs O(N), not O(N^2). Without events for every
version in between (a bump by an older node, the reaper, a long absence) the whole
vhost is reloaded, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cavalcade.domain.policies import apply_to_exchange, apply_to_queue, make_policy
from cavalcade.domain.routing import BindingInfo, ExchangeInfo
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.repository import QueueRow, Repository
from cavalcade.storage.topology_log import Edge, TopologyChange, TopologyRows


@dataclass(slots=True)
class VhostTopology:
    """Exchanges (with bindings) and queues of one vhost, as of ``version``."""

    id: int
    name: str
    exchanges: dict[int, ExchangeInfo] = field(default_factory=dict)
    exchanges_by_name: dict[str, ExchangeInfo] = field(default_factory=dict)
    queues: dict[str, QueueRow] = field(default_factory=dict)
    queues_by_id: dict[int, QueueRow] = field(default_factory=dict)
    _stale: bool = True
    marks: int = 0  # times marked stale so far (see :meth:`apply_own`)
    version: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reloads: int = 0  # full loads so far (the rest were incremental)
    # Bindings by edge, and the edges into each destination (queue id or 0, exchange
    # id or 0): what an incremental change touches is found without a scan.
    edges: dict[Edge, list[BindingInfo]] = field(default_factory=dict)
    edges_into: dict[tuple[int, int], set[Edge]] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)  # max-connections, max-queues
    policies: list[Any] = field(default_factory=list)  # policies of this vhost, applied

    @property
    def stale(self) -> bool:
        """May the cache have missed a change (the next use catches up first)?"""
        return self._stale

    @stale.setter
    def stale(self, value: bool) -> None:
        if value:
            self.marks += 1
        self._stale = value

    def force_reload(self) -> None:
        """Next use reloads everything (the cache may have missed a change)."""
        self.stale = True
        self.version = -1

    async def fresh(self, repo: Repository) -> VhostTopology:
        """This topology, brought up to date first if something changed. A catch-up
        under way (``stale`` is already cleared) is waited for: it may be applying the
        very change the caller made, and the cache is not yet up to date."""
        if self.stale or self.lock.locked():
            async with self.lock:
                if self.stale:
                    self.stale = False
                    self.marks += 1  # a catch-up now may read an own change half-way
                    try:
                        if self.version < 0 or not await self._catch_up(repo):
                            await self._reload(repo)
                    except BaseException:
                        self.stale = True
                        raise
        return self

    async def apply_own(
        self,
        version: int,
        marks: int,
        own: Callable[[], tuple[TopologyChange, TopologyRows]] | None,
    ) -> None:
        """This node's own change, committed as ``version``: applied without reading it
        back, if the cache holds the version before it (so that change is all that
        moved) and nothing has marked it stale since ``marks`` (no other change was
        heard of meanwhile). ``own`` gives the change and its rows, as of the cache
        then (None: the write changed nothing, and ``version`` is the cache's next).
        Otherwise the next use catches up from the events, as usual."""
        async with self.lock:  # not in the middle of a catch-up
            if self.version != version - 1 or self.marks != marks:
                return
            if own is not None:
                self.apply(*own())
                self.version = version
            self._stale = False

    async def _reload(self, repo: Repository) -> None:
        version, exchanges, queues = await repo.load_topology(self.id)
        rows, self.limits = await AdminStore(repo.durable_pool).vhost_settings(self.id)
        self.policies = _policies(rows)
        _apply_policies(self.policies, exchanges.values(), queues.values())
        self.version = version
        self.exchanges = exchanges
        self.exchanges_by_name = {e.name: e for e in exchanges.values()}
        self.queues = queues
        self.queues_by_id = {q.id: q for q in queues.values()}
        self.edges, self.edges_into = {}, {}
        for ex in exchanges.values():
            for b in ex.bindings:
                self._index_binding(b)
        self.reloads += 1

    @staticmethod
    def _edge(b: BindingInfo) -> Edge:
        return (b.source_id, b.queue_id or 0, b.exchange_id or 0)

    def _index_binding(self, b: BindingInfo) -> None:
        edge = self._edge(b)
        self.edges.setdefault(edge, []).append(b)
        self.edges_into.setdefault(edge[1:], set()).add(edge)

    def _add_binding(self, src: ExchangeInfo, b: BindingInfo) -> None:
        src.add_binding(b)
        self._index_binding(b)

    def _remove_edge(self, edge: Edge) -> None:
        """Forget every binding of one edge."""
        gone = self.edges.pop(edge, [])
        into = self.edges_into.get(edge[1:])
        if into is not None:
            into.discard(edge)
            if not into:
                del self.edges_into[edge[1:]]
        src = self.exchanges.get(edge[0])
        if src is not None:
            for b in gone:
                src.remove_binding(b)

    async def _catch_up(self, repo: Repository) -> bool:
        """Apply what changed since ``version``; False if only a reload will do."""
        version, change = await repo.topology.changes_since(self.id, self.version)
        if change is None:
            return False
        if version > self.version:
            unknown = {x for x in change.exchanges if x not in self.exchanges}
            rows = await repo.topology.read(self.id, change, unknown)
            self.apply(change, rows)
            self.version = version
        return True

    def apply(self, change: TopologyChange, rows: TopologyRows) -> None:
        """Make the changed entities what the database holds now."""
        for qid in change.queues:
            row = rows.queues.get(qid)
            if row is None:
                self._drop_queue(qid)
                continue
            old = self.queues.get(row.name)
            if old is not None and old.id != row.id:
                self._drop_queue(old.id)  # deleted and declared again under a new id
            _apply_policies(self.policies, (), (row,))
            self.queues[row.name] = row
            self.queues_by_id[row.id] = row
        for xid in change.exchanges:
            ex = rows.exchanges.get(xid)
            if ex is None:
                self._drop_exchange(xid)
            elif xid not in self.exchanges:
                _apply_policies(self.policies, (ex,), ())
                old_ex = self.exchanges_by_name.get(ex.name)
                if old_ex is not None:
                    self._drop_exchange(old_ex.id)
                self.exchanges[xid] = ex  # read with every binding it is the source of
                self.exchanges_by_name[ex.name] = ex
                for b in ex.bindings:
                    self._index_binding(b)
        for edge, now in rows.edges.items():
            src = self.exchanges.get(edge[0])
            if src is None:
                continue
            if self.edges.get(edge, []) == now:
                continue
            self._remove_edge(edge)
            for b in now:
                self._add_binding(src, b)

    def _drop_queue(self, queue_id: int) -> None:
        row = self.queues_by_id.pop(queue_id, None)
        if row is not None and self.queues.get(row.name) is row:
            del self.queues[row.name]
        for edge in list(self.edges_into.get((queue_id, 0), ())):
            self._remove_edge(edge)

    def _drop_exchange(self, exchange_id: int) -> None:
        for edge in list(self.edges_into.get((0, exchange_id), ())):
            self._remove_edge(edge)
        ex = self.exchanges.pop(exchange_id, None)
        if ex is None:
            return
        if self.exchanges_by_name.get(ex.name) is ex:
            del self.exchanges_by_name[ex.name]
        for b in ex.bindings:  # its own bindings go with it
            edge = self._edge(b)
            self.edges.pop(edge, None)
            into = self.edges_into.get(edge[1:])
            if into is not None:
                into.discard(edge)
                if not into:
                    del self.edges_into[edge[1:]]


def _policies(rows: list[dict[str, Any]]) -> list[Any]:
    return [
        make_policy(
            r["name"], r["pattern"], r["definition"], r["priority"], r["apply_to"], r["operator"]
        )
        for r in rows
    ]


def _apply_policies(
    policies: list[Any], exchanges: Iterable[ExchangeInfo], queues: Iterable[QueueRow]
) -> None:
    """Queues and exchanges behave by their effective arguments (policies applied): every
    rule that reads ``arguments`` from the cached topology sees them."""
    if not policies:
        return
    for q in queues:
        if q.declared is None:
            q.declared = q.arguments
        q.arguments = apply_to_queue(q.name, q.declared, policies).arguments
    for e in exchanges:
        e.arguments = apply_to_exchange(e.name, e.arguments, policies).arguments
