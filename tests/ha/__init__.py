"""High availability: several ``cavalcade serve`` nodes on one database.

Helpers shared by ``test_cluster.py`` and ``test_chaos.py``.

The launcher (``tests/nodes.py``) strips every ``CAVALCADE_*`` variable from the node's
environment, and ``serve`` has no flags for the node heartbeat and the death threshold
(``Settings.node_heartbeat`` / ``node_death_threshold`` exist only as
``CAVALCADE_NODE_HEARTBEAT`` / ``CAVALCADE_NODE_DEATH_THRESHOLD``). :meth:`Nodes.spawn`
adds environment variables, so a test can use a short death threshold and a fixed port
(to restart a killed node where it was).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pika
import pika.exceptions

from cavalcade.storage.dsn import normalize_dsn
from tests.conftest import BrokerProcess, run_sync
from tests.nodes import Nodes as _Nodes
from tests.nodes import node_env
from tests.waiting import wait_until

# Short node timers for tests that kill nodes: declared dead 3 s after the last heartbeat.
FAST_HEARTBEAT = 0.5
FAST_THRESHOLD = 3.0
FAST_ENV = {
    "CAVALCADE_NODE_HEARTBEAT": str(FAST_HEARTBEAT),
    "CAVALCADE_NODE_DEATH_THRESHOLD": str(FAST_THRESHOLD),
}


class Nodes(_Nodes):
    """:class:`tests.nodes.Nodes` whose ``spawn`` adds environment variables to the node's."""

    def spawn(
        self,
        database_url: str,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        **opts: Any,
    ) -> BrokerProcess:
        return self.start(database_url, port=port, env=node_env(env), wait=wait, **opts)

    def stop_all(  # type: ignore[override]
        self, report: bool = False, timeout: float = 20.0, tail: int | None = 6000
    ) -> None:
        super().stop_all(report, timeout, tail)


def kill(node: BrokerProcess) -> None:
    """SIGKILL a node (and wait for it), as a crash would."""
    node.kill()


def connect(url: str, **params: Any) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = 5
    parameters.blocked_connection_timeout = 60
    parameters.connection_attempts = 1
    for key, value in params.items():
        setattr(parameters, key, value)
    return pika.BlockingConnection(parameters)


def publish_refused(url: str, exchange: str, key: str = "") -> int:
    """Publish (with confirms) on a fresh connection: 200 if taken, else the channel's
    reply code (404 once the node knows the exchange is gone)."""
    conn = connect(url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange, key, b"probe")
        return 200
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if conn.is_open:
            conn.close()


def consumer_count(url: str, queue: str) -> int:
    """Consumers of ``queue`` by a passive declare on a fresh connection (0 if missing)."""
    conn = connect(url)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def sql(database_url: str, query: str, *args: Any) -> list[Any]:
    """Run one query against a node's database (outside the broker) and fetch the rows."""

    async def go() -> list[Any]:
        conn = await asyncpg.connect(normalize_dsn(database_url))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return run_sync(go)  # type: ignore[no-any-return]


def unique(prefix: str) -> str:
    return f"ha.{prefix}.{uuid.uuid4().hex[:8]}"


__all__ = [
    "FAST_ENV",
    "FAST_HEARTBEAT",
    "FAST_THRESHOLD",
    "Nodes",
    "connect",
    "consumer_count",
    "kill",
    "publish_refused",
    "sql",
    "unique",
    "wait_until",
]
