"""SQL of the statistics each node publishes (table ``node_stats``, migration 0006)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import queries
from .repository import Repository


@dataclass(slots=True)
class NodeRow:
    """A live node, its heartbeat age (database time) and its last published stats."""

    id: uuid.UUID
    name: str
    started_at: datetime
    heartbeat_age: float
    stats: dict[str, Any]
    stats_age: float | None


async def publish_node_stats(repo: Repository, node_id: uuid.UUID, stats: dict[str, Any]) -> None:
    """Upsert this node's snapshot (async commit: it is rewritten every interval)."""
    await repo.async_commit_pool.execute(
        "INSERT INTO node_stats (node_id, updated_at, stats) VALUES ($1, now(), $2::jsonb)"
        " ON CONFLICT (node_id) DO UPDATE SET updated_at = now(), stats = EXCLUDED.stats",
        node_id,
        json.dumps(stats, default=str),
    )


async def nodes_with_stats(repo: Repository) -> list[NodeRow]:
    """Every node row with what it published (``{}`` if nothing yet)."""
    rows = await repo.durable_pool.fetch(
        "SELECT n.id, n.name, n.started_at,"
        " extract(epoch FROM now() - n.heartbeat_at)::float8 AS heartbeat_age,"
        " s.stats, extract(epoch FROM now() - s.updated_at)::float8 AS stats_age"
        " FROM nodes n LEFT JOIN node_stats s ON s.node_id = n.id ORDER BY n.started_at, n.id"
    )
    return [
        NodeRow(
            id=r["id"],
            name=r["name"],
            started_at=r["started_at"],
            heartbeat_age=float(r["heartbeat_age"]),
            stats=json.loads(r["stats"]) if r["stats"] else {},
            stats_age=r["stats_age"],
        )
        for r in rows
    ]


async def database_ping(repo: Repository) -> bool:
    """Is the database answering right now?"""
    return bool(await repo.durable_pool.fetchval("SELECT true"))


def pool_stats(repo: Repository) -> dict[str, dict[str, int]]:
    """Size, idle connections and waiting acquirers of the durable ("write") and
    async-commit ("claim") pools: the names the management API has always shown."""
    out: dict[str, dict[str, int]] = {}
    pools = {"write": repo.durable_pool, "claim": repo.async_commit_pool}
    for name, pool in pools.items():
        if name == "claim" and pool is repo.durable_pool:
            continue
        free = getattr(pool, "_queue", None)
        waiting = len(getattr(free, "_getters", ()) or ())
        out[name] = {
            "size": pool.get_size(),
            "idle": pool.get_idle_size(),
            "max": pool.get_max_size(),
            "waiting": waiting,
        }
    return out


@dataclass(slots=True)
class QueueDepth:
    """A queue with its message and consumer counts, as the management API lists it."""

    id: int
    vhost: str
    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    exclusive_node: uuid.UUID | None
    exclusive_connection: int | None
    arguments: dict[str, Any]
    ready: int
    unacked: int
    ready_bytes: int
    unacked_bytes: int
    persistent: int
    consumers: int
    last_used_at: datetime | None


async def queue_depths(
    repo: Repository, vhost: str | None = None, name: str | None = None
) -> list[QueueDepth]:
    """Every queue (of one vhost, or one queue) with its counts, in one statement
    (bounded per queue at any backlog: see ``queries.QUEUE_DEPTHS``)."""
    async with repo.durable_pool.acquire() as conn, conn.transaction():
        await conn.execute(queries.NO_JIT)
        rows = await conn.fetch(queries.QUEUE_DEPTHS, vhost, name)
    return [
        QueueDepth(
            id=int(r["id"]),
            vhost=r["vhost"],
            name=r["name"],
            durable=r["durable"],
            auto_delete=r["auto_delete"],
            exclusive=r["exclusive_node"] is not None,
            exclusive_node=r["exclusive_node"],
            exclusive_connection=r["exclusive_connection"],
            arguments=_json(r["arguments"]),
            ready=int(r["ready"]),
            unacked=int(r["unacked"]),
            ready_bytes=int(r["ready_bytes"]),
            unacked_bytes=int(r["unacked_bytes"]),
            persistent=int(r["persistent"]),
            consumers=int(r["consumers"]),
            last_used_at=r["last_used_at"],
        )
        for r in rows
    ]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return dict(value or {})


async def consumer_rows(repo: Repository, vhost: str | None = None) -> list[dict[str, Any]]:
    """Every consumer with its queue, vhost, node and channel key."""
    rows = await repo.durable_pool.fetch(
        "SELECT c.node_id, c.channel, c.tag, c.exclusive, c.no_ack, c.priority,"
        " q.name AS queue, v.name AS vhost"
        " FROM consumers c JOIN queues q ON q.id = c.queue_id JOIN vhosts v ON v.id = q.vhost_id"
        " WHERE ($1::text IS NULL OR v.name = $1) ORDER BY c.id",
        vhost,
    )
    return [dict(r) for r in rows]


async def connection_rows(repo: Repository) -> list[dict[str, Any]]:
    """Every open client connection, on every node."""
    rows = await repo.durable_pool.fetch(
        "SELECT c.node_id, n.name AS node, c.id, c.peer, c.user_name, v.name AS vhost,"
        " c.client_properties, c.connected_at"
        " FROM connections c JOIN nodes n ON n.id = c.node_id JOIN vhosts v ON v.id = c.vhost_id"
        " ORDER BY c.connected_at, c.id"
    )
    out = []
    for r in rows:
        d = dict(r)
        d["client_properties"] = _json(d["client_properties"])
        out.append(d)
    return out


@dataclass(slots=True)
class Totals:
    """Cluster-wide object and message counts (``object_totals``, ``queue_totals``)."""

    exchanges: int
    queues: int
    consumers: int
    connections: int
    messages_ready: int
    messages_unacknowledged: int


async def totals(repo: Repository, vhost_ids: list[int] | None = None) -> Totals:
    """Counts over every vhost, or over ``vhost_ids`` only."""
    async with repo.durable_pool.acquire() as conn, conn.transaction():
        await conn.execute(queries.NO_JIT)
        if vhost_ids is None:
            row = await conn.fetchrow(queries.TOTALS)
        else:
            row = await conn.fetchrow(queries.TOTALS_OF_VHOSTS, vhost_ids)
    assert row is not None
    return Totals(
        exchanges=int(row["exchanges"]),
        queues=int(row["queues"]),
        consumers=int(row["consumers"]),
        connections=int(row["connections"]),
        messages_ready=int(row["ready"]),
        messages_unacknowledged=int(row["unacked"]),
    )
