"""Composition root: settings -> repository -> broker -> server, and the node's background loops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import uuid

from cavalcade.broker.control import NodeControl
from cavalcade.broker.liveness import Liveness
from cavalcade.broker.memory import watermark_bytes
from cavalcade.broker.outage import quiet_asyncpg_pool
from cavalcade.broker.service import Broker
from cavalcade.node_services import NodeServices
from cavalcade.protocol.server import AMQPServer
from cavalcade.protocol.tls import server_context
from cavalcade.settings import Settings
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.heartbeat import HeartbeatThread
from cavalcade.storage.liveness import LivenessStore, NodeLock
from cavalcade.storage.notify import Listener
from cavalcade.storage.repository import Repository

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds for each shutdown step that needs the database


async def run_node(
    settings: Settings,
    dsn: str,
    sock: socket.socket,
    stop: asyncio.Event,
    tls_sock: socket.socket | None = None,
    management_sock: socket.socket | None = None,
) -> None:
    """Run a broker node on a bound socket until ``stop`` is set.

    If the other nodes declare this one dead (its heartbeat row is gone, e.g. after a
    long partition from the database), it is fenced: every connection is closed and
    the node comes back under a new node id, owning nothing it held before."""
    # Every message makes short-lived objects (frames, rows, futures): with the default
    # thresholds the cyclic collector runs hundreds of times a second. Move what exists
    # at start-up out of its way and collect less often.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    while not stop.is_set():
        fenced = asyncio.Event()
        await _run_incarnation(settings, dsn, sock, stop, fenced, tls_sock, management_sock)
        if fenced.is_set() and not stop.is_set():
            log.warning("fenced by the cluster: re-registering as a new node")


async def _run_incarnation(
    settings: Settings,
    dsn: str,
    sock: socket.socket,
    stop: asyncio.Event,
    fenced: asyncio.Event,
    tls_sock: socket.socket | None = None,
    management_sock: socket.socket | None = None,
) -> None:
    node_id = uuid.uuid4()
    quiet_asyncpg_pool()
    repo = await Repository.connect(
        dsn, size=settings.pool_size, notify=settings.notify == "listen"
    )
    lock = NodeLock(dsn, node_id) if settings.node_lock else None
    if lock is not None:
        await lock.ensure()  # held before the node exists for the others
    await repo.register_node(node_id, settings.effective_node_name())
    # Beats even while this loop is busy; the loop below also beats (with the reap).
    beating = HeartbeatThread(dsn, node_id, settings.node_heartbeat)
    beating.start()
    broker = Broker(
        repo,
        node_id,
        poll_interval=settings.poll_interval,
        backlog_limit=settings.publish_backlog_bytes,
        memory_limit=watermark_bytes(settings.memory_high_watermark),
    )
    liveness = broker.liveness = Liveness(
        repo,
        LivenessStore(repo.durable_pool),
        node_id,
        settings.node_heartbeat,
        settings.node_death_threshold,
        broker.nodes_reaped,
    )
    broker.start()
    server = AMQPServer(broker, settings)
    services = NodeServices(settings, broker, server, node_id)
    listener = None
    if settings.notify == "listen":
        listener = Listener(dsn, node_id, broker, services.channels())
        await listener.ensure()
        broker.listening = listener.listening
    tls = server_context(settings) if settings.tls_port is not None else None
    # closing the server must not close the shared socket; without a plain listener the
    # main socket is the amqps one
    await server.start(sock.dup(), None if settings.plain_listener else tls)
    if tls_sock is not None:
        await server.start(tls_sock.dup(), tls)
    loops = [
        asyncio.create_task(_node_heartbeat(repo, broker, settings, node_id, fenced, listener)),
        asyncio.create_task(_sweeper(broker, settings)),
        asyncio.create_task(liveness.run(lock, settings.node_liveness_interval)),
        *services.start(),
        asyncio.create_task(
            NodeControl(
                broker,
                AdminStore(repo.durable_pool),
                node_id,
                server.sessions,
                server.close_connection,
            ).run(settings.control_interval)
        ),
        asyncio.create_task(_stats_publisher(broker, settings)),
    ]
    management = None
    if management_sock is not None:
        from cavalcade.management.server import ManagementServer

        management = ManagementServer(broker, settings)
        await management.start(management_sock.dup())
    log.info(
        "node %s (%s) listening on %s", settings.effective_node_name(), node_id, sock.getsockname()
    )
    ended: list[asyncio.Task[bool]] = [
        asyncio.create_task(stop.wait()),
        asyncio.create_task(fenced.wait()),
    ]
    try:
        await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in ended:
            waiter.cancel()
        log.info("shutting down node %s", node_id)
        if management is not None:
            await management.stop()
        if stop.is_set():
            # Refuse new connections at once (this process's copy of the listening socket):
            # clients told 320 move on to the next node instead of waiting in the backlog.
            sock.close()
        await server.stop()
        for t in loops:
            t.cancel()
        # Bounded: with the database away, what is not committed is not confirmed either,
        # and the node must still exit (its deliveries come back when it is reaped).
        try:
            await asyncio.wait_for(broker.stop(), SHUTDOWN_GRACE)
            await asyncio.wait_for(repo.unregister_node(node_id), SHUTDOWN_GRACE)
        except Exception as exc:  # noqa: BLE001
            log.warning("unclean shutdown of node %s: %s", node_id, exc)
        if listener is not None:
            await listener.close()
        if lock is not None:
            await lock.close()
        await asyncio.to_thread(beating.stop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(repo.close(), SHUTDOWN_GRACE)


async def _node_heartbeat(
    repo: Repository,
    broker: Broker,
    settings: Settings,
    node_id: uuid.UUID,
    fenced: asyncio.Event,
    listener: Listener | None,
) -> None:
    """Keep this node's row alive and reap nodes that stopped heartbeating. In poll
    mode (no LISTEN/NOTIFY), also re-read the topology other nodes may have changed.
    After the database was away, reconcile what this node owns."""
    database_was_away = False
    loop = asyncio.get_running_loop()
    reap_after = 0.0
    while True:
        await asyncio.sleep(settings.node_heartbeat)
        try:
            if listener is not None:
                await listener.ensure()
            if not await repo.heartbeat_node(node_id):
                log.error("this node was declared dead by the others (fenced)")
                fenced.set()
                return
            if listener is None:
                broker.topology_changed()
            if database_was_away or broker.outage.down:
                database_was_away = False
                # The others were cut off too: give them a threshold to heartbeat again
                # before anyone is declared dead.
                reap_after = loop.time() + settings.node_death_threshold
                broker.outage.back(await broker.reconcile())
            if loop.time() < reap_after:
                continue
            assert broker.liveness is not None
            await broker.liveness.reap_by_threshold()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the database may be away for a while
            database_was_away = True
            if not broker.outage.report(exc):
                log.warning("node heartbeat failed: %s", exc)


async def _sweeper(broker: Broker, settings: Settings) -> None:
    """Expire messages past their TTL and unused queues past their ``x-expires``; vacuum
    the queue table now and then (a database without VACUUM just skips it)."""
    failing = False
    loop = asyncio.get_running_loop()
    next_vacuum = loop.time() + settings.vacuum_interval
    delay = settings.sweep_interval
    while True:
        await asyncio.sleep(delay)
        delay = settings.sweep_interval
        try:
            await broker.sweep()
            # Wake when the next message falls due (RabbitMQ expires promptly, and
            # clients test that dead-lettering follows within ~100 ms of the TTL).
            due = await broker.next_expiry()
            if due is not None:
                delay = min(delay, due + 0.01)
            failing = False
            if settings.vacuum_interval > 0 and loop.time() >= next_vacuum:
                next_vacuum = loop.time() + settings.vacuum_interval
                try:
                    await broker.vacuum()
                except Exception as exc:
                    if broker.database_unavailable(exc):
                        raise
                    log.info("VACUUM not available (%s); not trying again", exc)
                    next_vacuum = float("inf")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the database may be away for a while
            if not failing and not broker.outage.report(exc):  # once, not 4 times a second
                log.warning("expiry sweep failed: %s", exc)
            failing = True


async def _stats_publisher(broker: Broker, settings: Settings) -> None:
    """Publish this node's counters and rates for the management API of every node."""
    from cavalcade.broker.monitoring import publish_stats

    failing = False
    while True:
        try:
            await publish_stats(broker)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the database may be away for a while
            broker.stats.database_up = False
            if not failing and not broker.outage.report(exc):
                log.warning("publishing statistics failed: %s", exc)
            failing = True
        await asyncio.sleep(settings.stats_interval)
