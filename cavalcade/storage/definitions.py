"""SQL of definitions import: topology rows and password hashes written as given.

Every statement is idempotent (an entity that exists is left as it is, as RabbitMQ's
import leaves it) and bumps the vhost's topology version so running nodes reload."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


def _dump(value: Any) -> str:
    return json.dumps(value or {}, sort_keys=True)


async def set_password_hash(pool: asyncpg.Pool, name: str, password_hash: str | None) -> bool:
    status = await pool.execute(
        "UPDATE users SET password_hash = $2 WHERE name = $1", name, password_hash or None
    )
    return bool(status != "UPDATE 0")


async def _bump(conn: asyncpg.Connection, vhost_id: int) -> None:
    await conn.execute(
        "UPDATE vhosts SET topology_version = topology_version + 1 WHERE id = $1", vhost_id
    )


async def add_exchange(
    pool: asyncpg.Pool,
    vhost_id: int,
    name: str,
    type_: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: dict[str, Any],
) -> bool:
    """False if an exchange of that name exists in the vhost."""
    async with pool.acquire() as conn, conn.transaction():
        made = await conn.fetchval(
            "INSERT INTO exchanges (vhost_id, name, type, durable, auto_delete, internal,"
            " arguments) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
            " ON CONFLICT DO NOTHING RETURNING id",
            vhost_id,
            name,
            type_,
            durable,
            auto_delete,
            internal,
            _dump(arguments),
        )
        if made is not None:
            await _bump(conn, vhost_id)
        return made is not None


async def add_queue(
    pool: asyncpg.Pool,
    vhost_id: int,
    name: str,
    durable: bool,
    auto_delete: bool,
    arguments: dict[str, Any],
) -> bool:
    """False if the queue exists."""
    async with pool.acquire() as conn, conn.transaction():
        made = await conn.fetchval(
            "INSERT INTO queues (vhost_id, name, durable, auto_delete, arguments)"
            " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING RETURNING id",
            vhost_id,
            name,
            durable,
            auto_delete,
            _dump(arguments),
        )
        if made is not None:
            await _bump(conn, vhost_id)
        return made is not None


async def add_binding(
    pool: asyncpg.Pool,
    vhost_id: int,
    source: str,
    destination: str,
    destination_type: str,
    routing_key: str,
    arguments: dict[str, Any],
) -> bool:
    """False if the binding exists; LookupError if its source or destination does not."""
    async with pool.acquire() as conn, conn.transaction():
        src = await conn.fetchval(
            "SELECT id FROM exchanges WHERE vhost_id = $1 AND name = $2", vhost_id, source
        )
        table = "queues" if destination_type == "queue" else "exchanges"
        dst = await conn.fetchval(
            f"SELECT id FROM {table} WHERE vhost_id = $1 AND name = $2", vhost_id, destination
        )
        if src is None or dst is None:
            raise LookupError(f"{'source' if src is None else 'destination'} not found")
        column = "queue_id" if destination_type == "queue" else "exchange_id"
        made = await conn.fetchval(
            f"INSERT INTO bindings (source_id, {column}, routing_key, arguments)"
            " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING id",
            src,
            dst,
            routing_key,
            _dump(arguments),
        )
        if made is not None:
            await _bump(conn, vhost_id)
        return made is not None


async def durable_topology(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """What an export lists: non-exclusive queues, exchanges other than the default and
    ``amq.*`` ones, and explicit bindings."""
    queues = await pool.fetch(
        "SELECT q.name, v.name AS vhost, q.durable, q.auto_delete, q.arguments"
        " FROM queues q JOIN vhosts v ON v.id = q.vhost_id"
        " WHERE q.exclusive_node IS NULL AND q.name NOT LIKE 'amq.rabbitmq.reply-to.%'"
        " ORDER BY v.name, q.name"
    )
    exchanges = await pool.fetch(
        "SELECT e.name, v.name AS vhost, e.type, e.durable, e.auto_delete, e.internal,"
        " e.arguments FROM exchanges e JOIN vhosts v ON v.id = e.vhost_id"
        " WHERE e.name <> '' AND e.name NOT LIKE 'amq.%' ORDER BY v.name, e.name"
    )
    bindings = await pool.fetch(
        "SELECT s.name AS source, v.name AS vhost, coalesce(q.name, d.name) AS destination,"
        " CASE WHEN b.queue_id IS NULL THEN 'exchange' ELSE 'queue' END AS destination_type,"
        " b.routing_key, b.arguments"
        " FROM bindings b JOIN exchanges s ON s.id = b.source_id"
        " JOIN vhosts v ON v.id = s.vhost_id"
        " LEFT JOIN queues q ON q.id = b.queue_id LEFT JOIN exchanges d ON d.id = b.exchange_id"
        " WHERE q.exclusive_node IS NULL ORDER BY v.name, s.name, 3, b.routing_key"
    )

    def rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
        out = []
        for r in records:
            d = dict(r)
            if isinstance(d.get("arguments"), str):
                d["arguments"] = json.loads(d["arguments"])
            out.append(d)
        return out

    return {"queues": rows(queues), "exchanges": rows(exchanges), "bindings": rows(bindings)}
