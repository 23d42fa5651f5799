"""Maintenance mode (RabbitMQ's ``drain`` / ``revive``): the use-cases behind
``cavalcade ctl drain NODE`` and ``cavalcade ctl revive NODE``.

The flag lives in the ``nodes`` table, so it works from any process with the database
URL; the node itself notices it at its next heartbeat (within ``node_heartbeat``, 2 s):
it stops accepting clients, closes the open ones with 320 CONNECTION_FORCED (they
reconnect elsewhere), hands back what it holds, and stops draining the outbox. It
keeps heartbeating, so it is not reaped, and ``revive`` brings it back.
"""

from __future__ import annotations

from cavalcade.storage import maintenance
from cavalcade.storage.maintenance import HasPool


class NodeNotFound(LookupError):
    """No registered node has that name or id (``ctl`` exits 65)."""


async def drain(db: HasPool, node: str) -> list[tuple[str, str]]:
    """Put the node with this name or id into maintenance mode; (id, name) of each match."""
    return await _set(db, node, True)


async def revive(db: HasPool, node: str) -> list[tuple[str, str]]:
    """Take the node with this name or id out of maintenance mode."""
    return await _set(db, node, False)


async def _set(db: HasPool, node: str, draining: bool) -> list[tuple[str, str]]:
    matched = await maintenance.set_draining(db.pool, node, draining)
    if not matched:
        raise NodeNotFound(f"no running node named '{node}'")
    return matched
