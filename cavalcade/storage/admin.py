"""SQL of the operator's use-cases (``cavalcade ctl``, the management API) and of the node
side that applies them (permission re-reads, limits, close requests).

Every change that nodes cache is made visible to them by the database alone (they poll
about once a second, so this works without LISTEN/NOTIFY): topology changes bump
``vhosts.topology_version``, close requests are rows in ``connection_requests``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from cavalcade.domain.passwords import hash_password

from . import notify, queries
from .notify import TopologyChanged

# The exchanges every vhost has (migration 0001 seeds them for '/').
DEFAULT_EXCHANGES = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value if value is not None else {}


def _dump(value: Any) -> str:
    return json.dumps(value, default=str)


Record = dict[str, Any]


def _rows(records: Sequence[asyncpg.Record], *json_columns: str) -> list[Record]:
    out = []
    for r in records:
        d = dict(r)
        for c in json_columns:
            if c in d:
                d[c] = _json(d[c])
        out.append(d)
    return out


# The sender of the admin layer's NOTIFYs (``ctl`` runs on no node): every node acts on them.
NO_NODE = uuid.UUID(int=0)


class AdminStore:
    """All SQL of the admin layer, over an asyncpg pool (a node's, or ``ctl``'s own)."""

    def __init__(self, pool: asyncpg.Pool, own_pool: bool = False) -> None:
        self.pool = pool
        self._own_pool = own_pool

    @classmethod
    async def connect(cls, dsn: str, timeout: float = 10.0) -> AdminStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, timeout=timeout)
        assert pool is not None
        return cls(pool, own_pool=True)

    async def close(self) -> None:
        if self._own_pool:
            await self.pool.close()

    # -- users ---------------------------------------------------------------

    async def add_user(self, name: str, password: str | None, tags: str) -> bool:
        """False if the user exists."""
        row = await self.pool.fetchval(
            "INSERT INTO users (name, password_hash, tags) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO NOTHING RETURNING id",
            name,
            hash_password(password) if password is not None else None,
            tags,
        )
        return row is not None

    async def delete_user(self, name: str) -> bool:
        return (
            await self.pool.fetchval("DELETE FROM users WHERE name = $1 RETURNING id", name)
            is not None
        )

    async def set_password(self, name: str, password: str | None) -> bool:
        status = await self.pool.execute(
            "UPDATE users SET password_hash = $2 WHERE name = $1",
            name,
            hash_password(password) if password is not None else None,
        )
        return bool(status != "UPDATE 0")

    async def set_user_tags(self, name: str, tags: str) -> bool:
        status = await self.pool.execute("UPDATE users SET tags = $2 WHERE name = $1", name, tags)
        return bool(status != "UPDATE 0")

    async def set_user_limits(self, name: str, limits: dict[str, Any]) -> bool:
        status = await self.pool.execute(
            "UPDATE users SET limits = $2::jsonb WHERE name = $1", name, _dump(limits)
        )
        return bool(status != "UPDATE 0")

    async def user(self, name: str) -> Record | None:
        rows = await self.pool.fetch(
            "SELECT id, name, password_hash, tags, limits FROM users WHERE name = $1", name
        )
        return _rows(rows, "limits")[0] if rows else None

    async def users(self) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT id, name, password_hash, tags, limits FROM users ORDER BY name"
        )
        return _rows(rows, "limits")

    # -- vhosts --------------------------------------------------------------

    async def add_vhost(self, name: str, description: str, tags: str) -> bool:
        """Create a vhost with its default exchanges; False if it exists."""
        async with self.pool.acquire() as conn, conn.transaction():
            vid = await conn.fetchval(
                "INSERT INTO vhosts (name, description, tags) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                name,
                description,
                tags,
            )
            if vid is None:
                return False
            await conn.executemany(
                "INSERT INTO exchanges (vhost_id, name, type, durable, auto_delete, internal)"
                " VALUES ($1, $2, $3, true, false, false)",
                [(vid, ex, kind) for ex, kind in DEFAULT_EXCHANGES],
            )
            return True

    async def delete_vhost(self, name: str, reason: str) -> bool:
        """Delete a vhost and all in it; its connections are asked to close (``reason``)."""
        async with self.pool.acquire() as conn, conn.transaction():
            vid = await conn.fetchval("SELECT id FROM vhosts WHERE name = $1 FOR UPDATE", name)
            if vid is None:
                return False
            await conn.execute(
                "INSERT INTO connection_requests (node_id, connection_id, reason)"
                " SELECT node_id, id, $2 FROM connections WHERE vhost_id = $1",
                vid,
                reason,
            )
            await conn.execute("DELETE FROM vhosts WHERE id = $1", vid)
            return True

    async def vhost_id(self, name: str) -> int | None:
        vid = await self.pool.fetchval("SELECT id FROM vhosts WHERE name = $1", name)
        return None if vid is None else int(vid)

    async def vhosts(self) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT v.id, v.name, v.description, v.tags, v.limits,"
            " (SELECT count(*) FROM queues q WHERE q.vhost_id = v.id) AS queues,"
            " (SELECT count(*) FROM connections c WHERE c.vhost_id = v.id) AS connections"
            " FROM vhosts v ORDER BY v.name"
        )
        return _rows(rows, "limits")

    async def set_vhost_limits(self, name: str, limits: dict[str, Any]) -> bool:
        status = await self.pool.execute(
            "UPDATE vhosts SET limits = $2::jsonb, topology_version = topology_version + 1"
            " WHERE name = $1",
            name,
            _dump(limits),
        )
        return bool(status != "UPDATE 0")

    async def bump_topology(self, vhost_id: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await _bump(conn, vhost_id)

    # -- permissions -----------------------------------------------------------

    async def set_permissions(
        self, vhost_id: int, user_id: int, configure: str, write: str, read: str
    ) -> None:
        await self.pool.execute(
            "INSERT INTO permissions (user_id, vhost_id, configure, write, read)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, vhost_id)"
            " DO UPDATE SET configure = $3, write = $4, read = $5",
            user_id,
            vhost_id,
            configure,
            write,
            read,
        )

    async def clear_permissions(self, vhost_id: int, user_id: int) -> bool:
        status = await self.pool.execute(
            "DELETE FROM permissions WHERE user_id = $1 AND vhost_id = $2", user_id, vhost_id
        )
        return bool(status != "DELETE 0")

    async def permissions(
        self, vhost_id: int | None = None, user_id: int | None = None
    ) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT u.name AS user, v.name AS vhost, p.configure, p.write, p.read"
            " FROM permissions p JOIN users u ON u.id = p.user_id"
            " JOIN vhosts v ON v.id = p.vhost_id"
            " WHERE ($1::int IS NULL OR p.vhost_id = $1) AND ($2::int IS NULL OR p.user_id = $2)"
            " ORDER BY v.name, u.name",
            vhost_id,
            user_id,
        )
        return _rows(rows)

    # -- policies ----------------------------------------------------------------

    async def set_policy(
        self,
        vhost_id: int,
        operator: bool,
        name: str,
        pattern: str,
        apply_to: str,
        priority: int,
        definition: dict[str, Any],
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO policies (vhost_id, operator, name, pattern, apply_to, priority,"
                " definition) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
                " ON CONFLICT (vhost_id, operator, name) DO UPDATE SET pattern = $4,"
                " apply_to = $5, priority = $6, definition = $7::jsonb",
                vhost_id,
                operator,
                name,
                pattern,
                apply_to,
                priority,
                _dump(definition),
            )
            await _bump(conn, vhost_id)

    async def clear_policy(self, vhost_id: int, operator: bool, name: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM policies WHERE vhost_id = $1 AND operator = $2 AND name = $3",
                vhost_id,
                operator,
                name,
            )
            await _bump(conn, vhost_id)
            return bool(status != "DELETE 0")

    async def policies(self, vhost_id: int | None = None) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT v.name AS vhost, p.vhost_id, p.operator, p.name, p.pattern, p.apply_to,"
            " p.priority, p.definition FROM policies p JOIN vhosts v ON v.id = p.vhost_id"
            " WHERE $1::int IS NULL OR p.vhost_id = $1 ORDER BY v.name, p.name",
            vhost_id,
        )
        return _rows(rows, "definition")

    # -- what a vhost holds ------------------------------------------------------------

    async def queues(self, vhost_id: int | None) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT q.id, q.vhost_id, v.name AS vhost, q.name, q.durable, q.auto_delete,"
            " q.exclusive_node IS NOT NULL AS exclusive, q.arguments, n.name AS owner_node,"
            " m.ready, m.unacked, m.ready_bytes, m.unacked_bytes, c.consumers"
            " FROM queues q JOIN vhosts v ON v.id = q.vhost_id"
            " LEFT JOIN nodes n ON n.id = q.exclusive_node"
            " LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE owner_node IS NULL) AS ready,"
            "   count(*) FILTER (WHERE owner_node IS NOT NULL) AS unacked,"
            "   coalesce(sum(octet_length(body)) FILTER (WHERE owner_node IS NULL), 0)"
            "     AS ready_bytes,"
            "   coalesce(sum(octet_length(body)) FILTER (WHERE owner_node IS NOT NULL), 0)"
            "     AS unacked_bytes"
            "   FROM messages WHERE queue_id = q.id) m ON true"
            " LEFT JOIN LATERAL (SELECT count(*) AS consumers FROM consumers"
            "   WHERE queue_id = q.id) c ON true"
            " WHERE $1::int IS NULL OR q.vhost_id = $1 ORDER BY v.name, q.name",
            vhost_id,
        )
        return _rows(rows, "arguments")

    async def find_queue(self, vhost_id: int, name: str) -> Record | None:
        row = await self.pool.fetchrow(
            "SELECT q.id,"
            " (SELECT count(*) FROM messages WHERE queue_id = q.id) AS messages,"
            " (SELECT count(*) FROM consumers WHERE queue_id = q.id) AS consumers"
            " FROM queues q WHERE q.vhost_id = $1 AND q.name = $2",
            vhost_id,
            name,
        )
        return None if row is None else dict(row)

    async def purge_queue(self, queue_id: int) -> int:
        """Remove the ready messages (unacked ones stay with their consumers)."""
        status = await self.pool.execute(queries.PURGE, queue_id)
        return int(status.split()[-1])

    async def delete_queue(self, vhost_id: int, queue_id: int) -> int:
        """Delete a queue (its messages, bindings and consumer rows go with it) and the
        auto-delete exchanges that lose their last binding; returns its message count."""
        async with self.pool.acquire() as conn, conn.transaction():
            count = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE queue_id = $1", queue_id
            )
            sources = await conn.fetch(
                "SELECT DISTINCT source_id FROM bindings WHERE queue_id = $1", queue_id
            )
            await conn.execute("DELETE FROM queues WHERE id = $1", queue_id)
            await conn.execute(
                "DELETE FROM exchanges e WHERE e.auto_delete AND e.id = ANY($1::bigint[])"
                " AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.source_id = e.id)",
                [r[0] for r in sources],
            )
            await _bump(conn, vhost_id, queue_id)
            return int(count or 0)

    async def exchanges(self, vhost_id: int | None) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT e.vhost_id, v.name AS vhost, e.name, e.type, e.durable, e.auto_delete,"
            " e.internal, e.arguments FROM exchanges e JOIN vhosts v ON v.id = e.vhost_id"
            " WHERE $1::int IS NULL OR e.vhost_id = $1 ORDER BY v.name, e.name",
            vhost_id,
        )
        return _rows(rows, "arguments")

    async def bindings(self, vhost_id: int | None) -> list[Record]:
        """Every binding, the default exchange's implicit ones first (as RabbitMQ lists)."""
        rows = await self.pool.fetch(
            "SELECT v.name AS vhost, '' AS source_name, 'exchange' AS source_kind,"
            " q.name AS destination_name, 'queue' AS destination_kind, q.name AS routing_key,"
            " '{}'::jsonb AS arguments, 0 AS ord"
            " FROM queues q JOIN vhosts v ON v.id = q.vhost_id"
            " WHERE $1::int IS NULL OR q.vhost_id = $1"
            " UNION ALL"
            " SELECT v.name, s.name, 'exchange', coalesce(q.name, d.name),"
            " CASE WHEN b.queue_id IS NULL THEN 'exchange' ELSE 'queue' END, b.routing_key,"
            " b.arguments, 1"
            " FROM bindings b JOIN exchanges s ON s.id = b.source_id"
            " JOIN vhosts v ON v.id = s.vhost_id"
            " LEFT JOIN queues q ON q.id = b.queue_id LEFT JOIN exchanges d ON d.id = b.exchange_id"
            " WHERE $1::int IS NULL OR s.vhost_id = $1"
            " ORDER BY 1, 8, 2, 4, 6",
            vhost_id,
        )
        out = _rows(rows, "arguments")
        for r in out:
            r.pop("ord", None)
        return out

    async def connections(self, vhost_id: int | None) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT c.node_id, c.id, n.name AS node, v.name AS vhost, c.user_name, c.peer,"
            " c.peer_port, c.host, c.port, c.name, c.tls, c.auth_mechanism, c.frame_max,"
            " c.channel_max, c.heartbeat, c.channels, c.client_properties, c.connected_at"
            " FROM connections c JOIN vhosts v ON v.id = c.vhost_id"
            " JOIN nodes n ON n.id = c.node_id"
            " WHERE $1::int IS NULL OR c.vhost_id = $1 ORDER BY c.connected_at, c.id",
            vhost_id,
        )
        return _rows(rows, "client_properties")

    async def consumers(self, vhost_id: int | None) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT v.name AS vhost, q.name AS queue_name, c.node_id, c.channel, c.tag,"
            " c.no_ack, c.exclusive, c.priority"
            " FROM consumers c JOIN queues q ON q.id = c.queue_id"
            " JOIN vhosts v ON v.id = q.vhost_id"
            " WHERE $1::int IS NULL OR q.vhost_id = $1 ORDER BY v.name, q.name, c.id",
            vhost_id,
        )
        return _rows(rows)

    async def nodes(self) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT n.id, n.name, n.started_at, n.heartbeat_at,"
            " extract(epoch FROM now() - n.heartbeat_at)::float8 AS silent_for,"
            " (SELECT count(*) FROM connections c WHERE c.node_id = n.id) AS connections"
            " FROM nodes n ORDER BY n.started_at"
        )
        return _rows(rows)

    async def totals(self) -> Record:
        row = await self.pool.fetchrow(
            "SELECT version() AS server_version, current_database() AS database,"
            " (SELECT version_num FROM alembic_version LIMIT 1) AS revision,"
            " (SELECT count(*) FROM vhosts) AS vhosts, (SELECT count(*) FROM users) AS users,"
            " (SELECT count(*) FROM queues) AS queues,"
            " (SELECT count(*) FROM exchanges) AS exchanges,"
            " (SELECT count(*) FROM connections) AS connections,"
            " (SELECT count(*) FROM consumers) AS consumers,"
            " (SELECT count(*) FROM messages) AS messages"
        )
        assert row is not None
        return dict(row)

    # -- connections ------------------------------------------------------------------

    async def find_connection(
        self, node_id: uuid.UUID | None, connection_id: int | None, name: str | None
    ) -> tuple[uuid.UUID, int] | None:
        if name is not None:
            row = await self.pool.fetchrow(
                "SELECT node_id, id FROM connections WHERE name = $1 LIMIT 1", name
            )
        else:
            row = await self.pool.fetchrow(
                "SELECT node_id, id FROM connections WHERE node_id = $1 AND id = $2",
                node_id,
                connection_id,
            )
        return None if row is None else (row[0], int(row[1]))

    async def request_close(self, node_id: uuid.UUID, connection_id: int, reason: str) -> None:
        await self.pool.execute(
            "INSERT INTO connection_requests (node_id, connection_id, reason) VALUES ($1, $2, $3)",
            node_id,
            connection_id,
            reason,
        )

    # -- the node side -----------------------------------------------------------------

    async def take_close_requests(self, node_id: uuid.UUID) -> list[tuple[int, str]]:
        rows = await self.pool.fetch(
            "DELETE FROM connection_requests WHERE node_id = $1 RETURNING connection_id, reason",
            node_id,
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def topology_versions(self) -> dict[int, int]:
        rows = await self.pool.fetch("SELECT id, topology_version FROM vhosts")
        return {int(r[0]): int(r[1]) for r in rows}

    async def existing_queues(self, queue_ids: Sequence[int]) -> set[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM queues WHERE id = ANY($1::bigint[])", list(queue_ids)
        )
        return {int(r[0]) for r in rows}

    async def session_grants(self, node_id: uuid.UUID) -> list[Record]:
        """For each open connection of a node: its user's permissions on its vhost (NULL
        when cleared), tags and limits (NULL user: deleted)."""
        rows = await self.pool.fetch(
            "SELECT c.id, u.id AS user_id, u.tags, u.limits, p.configure, p.write, p.read"
            " FROM connections c LEFT JOIN users u ON u.name = c.user_name"
            " LEFT JOIN permissions p ON p.user_id = u.id AND p.vhost_id = c.vhost_id"
            " WHERE c.node_id = $1",
            node_id,
        )
        return _rows(rows, "limits")

    async def set_channel_counts(self, node_id: uuid.UUID, counts: dict[int, int]) -> None:
        if not counts:
            return
        await self.pool.execute(
            "UPDATE connections c SET channels = u.n"
            " FROM unnest($2::bigint[], $3::int[]) AS u(id, n)"
            " WHERE c.node_id = $1 AND c.id = u.id AND c.channels <> u.n",
            node_id,
            list(counts),
            list(counts.values()),
        )

    async def connection_limits(self, user: str, vhost_id: int) -> Record:
        """The vhost's and the user's limits, with the connections counted against them."""
        row = await self.pool.fetchrow(
            "SELECT (SELECT limits FROM vhosts WHERE id = $2) AS vhost_limits,"
            " (SELECT limits FROM users WHERE name = $1) AS user_limits,"
            " (SELECT count(*) FROM connections WHERE vhost_id = $2) AS vhost_connections,"
            " (SELECT count(*) FROM connections WHERE user_name = $1) AS user_connections",
            user,
            vhost_id,
        )
        assert row is not None
        return _rows([row], "vhost_limits", "user_limits")[0]

    async def user_channels_elsewhere(self, user: str, node_id: uuid.UUID) -> int:
        """Channels of a user's connections on other nodes (as last refreshed)."""
        n = await self.pool.fetchval(
            "SELECT coalesce(sum(channels), 0) FROM connections"
            " WHERE user_name = $1 AND node_id <> $2",
            user,
            node_id,
        )
        return int(n or 0)

    async def queue_limit(self, vhost_id: int) -> tuple[Any, int]:
        """The vhost's limits and its queue count (for ``max-queues``)."""
        row = await self.pool.fetchrow(
            "SELECT limits, (SELECT count(*) FROM queues WHERE vhost_id = $1) AS n"
            " FROM vhosts WHERE id = $1",
            vhost_id,
        )
        if row is None:
            return {}, 0
        return _json(row[0]), int(row[1])

    async def vhost_settings(self, vhost_id: int) -> tuple[list[Record], dict[str, Any]]:
        """A vhost's policies and limits (what a node's topology cache applies)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT operator, name, pattern, apply_to, priority, definition FROM policies"
                " WHERE vhost_id = $1",
                vhost_id,
            )
            limits = await conn.fetchval("SELECT limits FROM vhosts WHERE id = $1", vhost_id)
        return _rows(rows, "definition"), dict(_json(limits))

    async def queue_count(self, vhost_id: int) -> int:
        n = await self.pool.fetchval("SELECT count(*) FROM queues WHERE vhost_id = $1", vhost_id)
        return int(n or 0)


async def _bump(conn: asyncpg.Connection, vhost_id: int, deleted_queue: int | None = None) -> None:
    """Bump the vhost's topology version, in the caller's transaction. Every node sees
    it before its next routing; those listening hear it at commit (a deleted queue's
    consumers are cancelled then), where the database has NOTIFY at all."""
    await conn.execute(
        "UPDATE vhosts SET topology_version = topology_version + 1 WHERE id = $1", vhost_id
    )
    ((channel, payload),) = notify.encode(TopologyChanged(NO_NODE, vhost_id, deleted_queue))
    try:
        async with conn.transaction():  # a savepoint: without pg_notify, only this fails
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
    except asyncpg.PostgresError:
        pass
