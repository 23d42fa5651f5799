"""SQL of the statistics each node publishes (table ``node_stats``, migration 0006)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    """Upsert this node's snapshot (no disk flush needed: it is rewritten every interval)."""
    await repo.claim_pool.execute(
        "INSERT INTO node_stats (node_id, updated_at, stats) VALUES ($1, now(), $2::jsonb)"
        " ON CONFLICT (node_id) DO UPDATE SET updated_at = now(), stats = EXCLUDED.stats",
        node_id,
        json.dumps(stats, default=str),
    )


async def nodes_with_stats(repo: Repository) -> list[NodeRow]:
    """Every node row with what it published (``{}`` if nothing yet)."""
    rows = await repo.pool.fetch(
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
    return bool(await repo.pool.fetchval("SELECT true"))


def pool_stats(repo: Repository) -> dict[str, dict[str, int]]:
    """Size, idle connections and waiting acquirers of the write and claim pools."""
    out: dict[str, dict[str, int]] = {}
    pools = {"write": repo.pool, "claim": repo.claim_pool}
    for name, pool in pools.items():
        if name == "claim" and pool is repo.pool:
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
    """Every queue (of one vhost, or one queue) with its counts, in one statement."""
    rows = await repo.pool.fetch(
        "SELECT q.id, v.name AS vhost, q.name, q.durable, q.auto_delete, q.exclusive_node,"
        " q.exclusive_connection, q.arguments, q.last_used_at,"
        " coalesce(m.ready, 0) AS ready, coalesce(m.unacked, 0) AS unacked,"
        " coalesce(m.ready_bytes, 0) AS ready_bytes,"
        " coalesce(m.unacked_bytes, 0) AS unacked_bytes,"
        " coalesce(m.persistent, 0) AS persistent, coalesce(c.n, 0) AS consumers"
        " FROM queues q JOIN vhosts v ON v.id = q.vhost_id"
        " LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE owner_node IS NULL) AS ready,"
        "   count(*) FILTER (WHERE owner_node IS NOT NULL) AS unacked,"
        "   sum(octet_length(body)) FILTER (WHERE owner_node IS NULL) AS ready_bytes,"
        "   sum(octet_length(body)) FILTER (WHERE owner_node IS NOT NULL) AS unacked_bytes,"
        "   count(*) FILTER (WHERE persistent) AS persistent"
        "   FROM messages WHERE queue_id = q.id) m ON true"
        " LEFT JOIN LATERAL (SELECT count(*) AS n FROM consumers WHERE queue_id = q.id) c ON true"
        " WHERE ($1::text IS NULL OR v.name = $1) AND ($2::text IS NULL OR q.name = $2)"
        " ORDER BY v.name, q.name",
        vhost,
        name,
    )
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
    rows = await repo.pool.fetch(
        "SELECT c.node_id, c.channel, c.tag, c.exclusive, c.no_ack, c.priority,"
        " q.name AS queue, v.name AS vhost"
        " FROM consumers c JOIN queues q ON q.id = c.queue_id JOIN vhosts v ON v.id = q.vhost_id"
        " WHERE ($1::text IS NULL OR v.name = $1) ORDER BY c.id",
        vhost,
    )
    return [dict(r) for r in rows]


async def connection_rows(repo: Repository) -> list[dict[str, Any]]:
    """Every open client connection, on every node."""
    rows = await repo.pool.fetch(
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
    where = "" if vhost_ids is None else " WHERE vhost_id = ANY($1::int[])"
    qwhere = "" if vhost_ids is None else " WHERE q.vhost_id = ANY($1::int[])"
    args: list[Any] = [] if vhost_ids is None else [vhost_ids]
    row = await repo.pool.fetchrow(
        f"SELECT (SELECT count(*) FROM exchanges{where}) AS exchanges,"
        f" (SELECT count(*) FROM queues{where}) AS queues,"
        f" (SELECT count(*) FROM consumers c JOIN queues q ON q.id = c.queue_id{qwhere})"
        " AS consumers,"
        f" (SELECT count(*) FROM connections{where}) AS connections,"
        " (SELECT count(*) FILTER (WHERE m.owner_node IS NULL)"
        f" FROM messages m JOIN queues q ON q.id = m.queue_id{qwhere}) AS ready,"
        " (SELECT count(*) FILTER (WHERE m.owner_node IS NOT NULL)"
        f" FROM messages m JOIN queues q ON q.id = m.queue_id{qwhere}) AS unacked",
        *args,
    )
    assert row is not None
    return Totals(
        exchanges=int(row["exchanges"]),
        queues=int(row["queues"]),
        consumers=int(row["consumers"]),
        connections=int(row["connections"]),
        messages_ready=int(row["ready"]),
        messages_unacknowledged=int(row["unacked"]),
    )
