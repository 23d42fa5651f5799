"""Composition root: settings -> repository -> broker -> server, and the node's background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid

import asyncpg

from cavalcade.broker.service import Broker
from cavalcade.protocol.server import AMQPServer
from cavalcade.settings import Settings
from cavalcade.storage.repository import NOTIFY_CHANNEL, TOPOLOGY_CHANNEL, Repository

log = logging.getLogger(__name__)


async def run_node(settings: Settings, dsn: str, sock: socket.socket, stop: asyncio.Event) -> None:
    """Run one broker node on a bound socket until ``stop`` is set."""
    node_id = uuid.uuid4()
    repo = await Repository.connect(dsn, size=settings.pool_size)
    await repo.register_node(node_id, settings.effective_node_name())
    broker = Broker(
        repo,
        node_id,
        poll_interval=settings.poll_interval,
        backlog_limit=settings.publish_backlog_bytes,
    )
    broker.start()
    listener = await _listen(dsn, broker, node_id) if settings.notify == "listen" else None
    server = AMQPServer(broker, settings)
    await server.start(sock)
    loops = [asyncio.create_task(_node_heartbeat(repo, broker, settings, node_id, stop))]
    log.info(
        "node %s (%s) listening on %s", settings.effective_node_name(), node_id, sock.getsockname()
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down node %s", node_id)
        await server.stop()
        for t in loops:
            t.cancel()
        await broker.stop()
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        with contextlib.suppress(Exception):
            await repo.unregister_node(node_id)
        await repo.close()


async def _listen(dsn: str, broker: Broker, node_id: uuid.UUID) -> asyncpg.Connection:
    """A dedicated connection for LISTEN: wake-ups and topology changes from other nodes."""
    me = str(node_id)
    conn = await asyncpg.connect(dsn)

    def on_wake(_c: object, _pid: int, _channel: str, payload: str) -> None:
        node, _, ids = payload.partition(":")
        if node == me or not ids:
            return
        if ids == "*":
            broker.wake_all()
        else:
            broker.wake_queues(int(i) for i in ids.split(","))

    def on_topology(_c: object, _pid: int, _channel: str, payload: str) -> None:
        parts = payload.split(":")
        if parts[0] == me:
            return
        broker.topology_changed(int(parts[1]) if len(parts) > 1 else None)
        if len(parts) > 2:
            broker.queue_deleted_elsewhere(int(parts[2]))

    await conn.add_listener(NOTIFY_CHANNEL, on_wake)
    await conn.add_listener(TOPOLOGY_CHANNEL, on_topology)
    return conn


async def _node_heartbeat(
    repo: Repository, broker: Broker, settings: Settings, node_id: uuid.UUID, stop: asyncio.Event
) -> None:
    """Keep this node's row alive and reap nodes that stopped heartbeating."""
    while True:
        await asyncio.sleep(settings.node_heartbeat)
        try:
            if not await repo.heartbeat_node(node_id):
                log.error("this node was declared dead by the others; stopping (fenced)")
                stop.set()
                return
            dead = await repo.reap_dead_nodes(settings.node_death_threshold)
            if dead:
                log.warning("requeued the deliveries of dead nodes %s", dead)
                broker.topology_changed()
                broker.wake_all()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the database may be away for a while
            log.warning("node heartbeat failed: %s", exc)
