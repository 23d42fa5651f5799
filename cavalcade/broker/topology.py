"""Each vhost's topology, cached in memory and reloaded when it changes (locally or via NOTIFY)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cavalcade.domain.policies import apply_to_exchange, apply_to_queue, make_policy
from cavalcade.domain.routing import ExchangeInfo
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.repository import QueueRow, Repository


@dataclass(slots=True)
class VhostTopology:
    """Exchanges (with bindings) and queues of one vhost, as last loaded."""

    id: int
    name: str
    exchanges: dict[int, ExchangeInfo] = field(default_factory=dict)
    exchanges_by_name: dict[str, ExchangeInfo] = field(default_factory=dict)
    queues: dict[str, QueueRow] = field(default_factory=dict)
    queues_by_id: dict[int, QueueRow] = field(default_factory=dict)
    stale: bool = True
    version: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    limits: dict[str, Any] = field(default_factory=dict)  # max-connections, max-queues

    async def fresh(self, repo: Repository) -> VhostTopology:
        """This topology, reloaded first if something changed since the last load."""
        if self.stale:
            async with self.lock:
                if self.stale:
                    self.stale = False
                    try:
                        version, exchanges, queues = await repo.load_topology(self.id)
                        rows, self.limits = await AdminStore(repo.pool).vhost_settings(self.id)
                    except BaseException:
                        self.stale = True
                        raise
                    self.version = version
                    if rows:
                        _apply_policies(rows, exchanges, queues)
                    self.exchanges = exchanges
                    self.exchanges_by_name = {e.name: e for e in exchanges.values()}
                    self.queues = queues
                    self.queues_by_id = {q.id: q for q in queues.values()}
        return self


def _apply_policies(
    rows: list[dict[str, Any]], exchanges: dict[int, ExchangeInfo], queues: dict[str, QueueRow]
) -> None:
    """Queues and exchanges behave by their effective arguments (policies applied): every
    rule that reads ``arguments`` from the cached topology sees them."""
    policies = [
        make_policy(
            r["name"], r["pattern"], r["definition"], r["priority"], r["apply_to"], r["operator"]
        )
        for r in rows
    ]
    for q in queues.values():
        q.arguments = apply_to_queue(q.name, q.arguments, policies).arguments
    for e in exchanges.values():
        e.arguments = apply_to_exchange(e.name, e.arguments, policies).arguments
