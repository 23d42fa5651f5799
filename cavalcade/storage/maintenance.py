"""Node maintenance mode in the ``nodes`` table (``draining``, migration 0007)."""

from __future__ import annotations

import uuid
from typing import Protocol

import asyncpg

_SET = """
UPDATE nodes SET draining = $2
 WHERE id::text = $1 OR name = $1
RETURNING id, name
"""


class HasPool(Protocol):
    """``ctl``'s (or a node's) AdminStore: anything holding an asyncpg pool as ``pool``."""

    pool: asyncpg.Pool


async def is_draining(pool: asyncpg.Pool, node_id: uuid.UUID) -> bool:
    """Has an operator put this node into maintenance mode?"""
    return bool(await pool.fetchval("SELECT draining FROM nodes WHERE id = $1", node_id))


async def set_draining(pool: asyncpg.Pool, node: str, draining: bool) -> list[tuple[str, str]]:
    """Set the flag on the live node(s) with this id or name; (id, name) of each."""
    rows = await pool.fetch(_SET, node, draining)
    return [(str(r[0]), str(r[1])) for r in rows]


async def list_nodes(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every registered node with its maintenance flag and heartbeat age (seconds)."""
    return list(
        await pool.fetch(
            "SELECT id, name, draining,"
            " extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age"
            " FROM nodes ORDER BY name, started_at"
        )
    )
