"""Each vhost's topology, cached in memory and reloaded when it changes (locally or via NOTIFY)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cavalcade.domain.routing import ExchangeInfo
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

    async def fresh(self, repo: Repository) -> VhostTopology:
        """This topology, reloaded first if something changed since the last load."""
        if self.stale:
            async with self.lock:
                if self.stale:
                    self.stale = False
                    try:
                        version, exchanges, queues = await repo.load_topology(self.id)
                    except BaseException:
                        self.stale = True
                        raise
                    self.version = version
                    self.exchanges = exchanges
                    self.exchanges_by_name = {e.name: e for e in exchanges.values()}
                    self.queues = queues
                    self.queues_by_id = {q.id: q for q in queues.values()}
        return self
