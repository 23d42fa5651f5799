"""Maintenance mode (``cavalcade ctl drain`` / ``revive``): the drained node closes its
clients with 320, hands back what they held, refuses new clients, and takes them again
once revived."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pika
import pika.exceptions
import pytest

from cavalcade.broker import maintenance
from cavalcade.broker.maintenance import NodeNotFound
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.repository import Repository
from tests.integration.test_ctl import ctl
from tests.waiting import wait_until

from .conftest import Node, name, wait_messages

pytestmark = pytest.mark.timeout(90)


def _refused(url: str) -> bool:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1"))
    except pika.exceptions.AMQPError:
        return True
    conn.close()
    return False


async def test_drain_and_revive(
    node: Node, sql: asyncpg.Connection, channel: Any, start_broker: Any
) -> None:
    label = name("maint")
    other = start_broker(node.database_url, node_name=label)
    q = name("held")
    channel.queue_declare(q)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"held", pika.BasicProperties(delivery_mode=2))
    conn = pika.BlockingConnection(pika.URLParameters(other.url))
    ch = conn.channel()
    got: list[bytes] = []
    ch.basic_consume(q, lambda _c, _m, _p, body: got.append(body))
    while not got:
        conn.process_data_events(time_limit=0.1)
    repo = await Repository.connect(node.dsn, size=2)
    try:
        with pytest.raises(NodeNotFound):
            await maintenance.drain(AdminStore(repo.durable_pool), "no-such-node")
        assert ctl(node.database_url, "drain", "no-such-node").returncode == 65
        drained_ = ctl(node.database_url, "drain", label)
        assert drained_.returncode == 0, drained_.stderr
        node_id = str(await sql.fetchval("SELECT id FROM nodes WHERE name = $1", label))
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert closed.value.reply_code == 320
        # What the closed client held is back in the queue, for the other node's clients.
        [(method, _p, body)] = wait_messages(channel, q, 1)
        assert body == b"held" and method.redelivered
        assert _refused(other.url)
        row = await sql.fetchrow(
            "SELECT draining, connections FROM cavalcade_nodes WHERE id = $1::uuid", node_id
        )
        assert row["draining"] and row["connections"] == 0
        # The outbox is left to the nodes in service; the drained one still heartbeats.
        async with sql.transaction():
            await sql.fetchval("SELECT cavalcade_publish('', $1, 'via-sql'::bytea)", q)
        assert [b for *_, b in wait_messages(channel, q, 1)] == [b"via-sql"]
        revived = ctl(node.database_url, "revive", node_id)  # by id, this time
        assert revived.returncode == 0, revived.stderr
        wait_until(lambda: not _refused(other.url), 30, "the revived node to accept", 0.2)
        assert not await sql.fetchval("SELECT draining FROM nodes WHERE id = $1::uuid", node_id)
    finally:
        await repo.close()
        if conn.is_open:
            conn.close()
