"""Upgrading with data in place: a database written at the previous revision keeps its
topology and persistent messages, and they stay routable and deliverable."""

from __future__ import annotations

import asyncpg
import pika

from cavalcade.storage import schema
from tests.conftest import admin_execute, run_sync

PREVIOUS = "0001"


async def _write_at_previous_revision(dsn: str) -> None:
    """What a node at revision 0001 would have stored: an exchange, a queue, a binding,
    a persistent message (property bytes as received), all through plain SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        vhost = await conn.fetchval("SELECT id FROM vhosts WHERE name = '/'")
        ex = await conn.fetchval(
            "INSERT INTO exchanges (vhost_id, name, type) VALUES ($1, 'old.ex', 'topic')"
            " RETURNING id",
            vhost,
        )
        q = await conn.fetchval(
            "INSERT INTO queues (vhost_id, name, arguments) VALUES ($1, 'old.q',"
            " '{\"x-max-priority\": 5}') RETURNING id",
            vhost,
        )
        await conn.execute(
            "INSERT INTO bindings (source_id, queue_id, routing_key) VALUES ($1, $2, 'a.#')", ex, q
        )
        props = b"\x98\x00\x0atext/plain\x02\x05"  # content_type, delivery_mode 2, priority 5
        await conn.execute(
            "INSERT INTO messages (queue_id, priority, exchange, routing_key, properties,"
            " content_type, body) VALUES ($1, 5, 'old.ex', 'a.b', $2, 'text/plain', 'kept')",
            q,
            props,
        )
    finally:
        await conn.close()


def test_upgrade_keeps_topology_and_messages(empty_database_url: str, start_broker) -> None:  # type: ignore[no-untyped-def]
    run_sync(lambda: schema.upgrade(empty_database_url, PREVIOUS))
    run_sync(lambda: _write_at_previous_revision(empty_database_url))
    run_sync(lambda: schema.upgrade(empty_database_url, "head"))
    node = start_broker(empty_database_url)
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        ch = conn.channel()
        assert ch.queue_declare("old.q", passive=True).method.message_count == 1
        method, props, body = ch.basic_get("old.q", auto_ack=True)
        assert body == b"kept" and props.content_type == "text/plain" and props.priority == 5
        assert (method.exchange, method.routing_key) == ("old.ex", "a.b")
        ch.confirm_delivery()
        ch.basic_publish("old.ex", "a.x.y", b"routed", pika.BasicProperties(delivery_mode=2))
        assert ch.basic_get("old.q", auto_ack=True)[2] == b"routed"
    finally:
        conn.close()


def test_downgrade_to_previous_revision_and_back(empty_database_url: str) -> None:
    run_sync(lambda: schema.upgrade(empty_database_url, "head"))
    run_sync(lambda: schema.downgrade(empty_database_url, PREVIOUS))
    run_sync(lambda: schema.upgrade(empty_database_url, "head"))
    admin_execute(empty_database_url, "SELECT 1")
