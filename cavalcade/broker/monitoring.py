"""Read-side use-cases of the management API that are about the nodes themselves:
logging in with tags, the statistics every node publishes, database reachability."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from cavalcade.domain.passwords import check_password
from cavalcade.domain.routing import ExchangeInfo
from cavalcade.errors import NotFound
from cavalcade.storage import stats as stats_sql
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.records import QueueRow
from cavalcade.storage.stats import NodeRow

from .admin import Admin
from .service import Broker, _is_loopback

LOOPBACK_ONLY_USERS = frozenset({"guest"})


@dataclass(frozen=True, slots=True)
class ManagementUser:
    name: str
    tags: tuple[str, ...]


class LoginRefused(Exception):
    """Wrong user or password, or ``guest`` from elsewhere than loopback."""


def parse_tags(value: str | None) -> tuple[str, ...]:
    """Tags are stored as RabbitMQ prints them: comma or space separated."""
    return tuple(t for t in (value or "").replace(",", " ").split() if t)


async def login(broker: Broker, username: str, password: str, peer: str | None) -> ManagementUser:
    """Basic-auth credentials of a management request (the same rules as AMQP logins)."""
    row = await broker.repo.find_user(username)
    hashed = row["password_hash"] if row is not None else None
    if row is None or not hashed or not check_password(password, hashed):
        raise LoginRefused("Not_Authorized")
    if username in LOOPBACK_ONLY_USERS and not _is_loopback(peer):
        raise LoginRefused("User can only log in via localhost")
    return ManagementUser(username, parse_tags(row["tags"]))


async def nodes(broker: Broker) -> list[NodeRow]:
    """Every live node with its heartbeat age and its last published statistics."""
    return await stats_sql.nodes_with_stats(broker.repo)


async def database_reachable(broker: Broker) -> bool:
    try:
        return await stats_sql.database_ping(broker.repo)
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def gauges(broker: Broker) -> dict[str, Any]:
    """Gauges of this node, published with its counters."""
    backlog = broker.publish_backlog()
    return {
        "publish_backlog_bytes": backlog.bytes,
        "publish_backlog_limit": backlog.limit,
        "blocked_connections": broker.stats.blocked_connections(),
        "dispatchers": len(broker._dispatchers),
        "os_pid": os.getpid(),
        "mem_used": _resident_bytes(),
        "fd_used": _open_fds(),
        "processors": os.cpu_count() or 1,
        "database_up": broker.stats.database_up,
    }


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


async def publish_stats(broker: Broker) -> None:
    """Write this node's snapshot (counters, rates, connections, channels) to the database."""
    snapshot = broker.stats.snapshot(gauges(broker))
    await stats_sql.publish_node_stats(broker.repo, broker.node_id, snapshot)
    broker.stats.database_up = True


def local_snapshot_age(broker: Broker) -> float:
    last = broker.stats.history[-1][0] if broker.stats.history else None
    return time.time() - last if last else float("inf")


async def totals(broker: Broker, vhost_ids: list[int] | None = None) -> stats_sql.Totals:
    """Object and message counts, cluster-wide (optionally only some vhosts); rows
    this node holds for its consumers count as ready (dispatch.py)."""
    t = await stats_sql.totals(broker.repo, vhost_ids)
    held = sum(
        len(d.held)
        for qid, d in broker.node.dispatchers.items()
        if vhost_ids is None or _vhost_of(broker, qid) in vhost_ids
    )
    held = min(held, t.messages_unacknowledged)
    t.messages_ready += held
    t.messages_unacknowledged -= held
    return t


def _vhost_of(broker: Broker, queue_id: int) -> int | None:
    for vh in broker.node.vhosts.values():
        if queue_id in vh.queues_by_id:
            return vh.id
    return None


def pools(broker: Broker) -> dict[str, dict[str, int]]:
    """This node's database connection pools (size, idle, waiting)."""
    return stats_sql.pool_stats(broker.repo)


async def queue_depths(
    broker: Broker, vhost: str | None = None, name: str | None = None
) -> list[stats_sql.QueueDepth]:
    """Queues with their ready/unacked counts, bytes and consumers (cluster-wide); rows
    this node holds for its consumers count as ready (dispatch.py)."""
    depths = await stats_sql.queue_depths(broker.repo, vhost, name)
    for q in depths:
        d = broker.node.dispatchers.get(q.id)
        if d is None or not d.held:
            continue
        held = min(len(d.held), q.unacked)
        size = min(d.held_bytes, q.unacked_bytes)
        if held:
            q.ready, q.unacked = q.ready + held, q.unacked - held
            q.ready_bytes, q.unacked_bytes = q.ready_bytes + size, q.unacked_bytes - size
    return depths


@dataclass(slots=True)
class VhostView:
    """A vhost's exchanges (with bindings) and queues, read fresh for a listing."""

    name: str
    exchanges: dict[int, ExchangeInfo]
    queues: dict[str, QueueRow]


async def topology(broker: Broker, vhost: str | None = None) -> list[VhostView]:
    """Exchanges, bindings and queues of every vhost (or one: NotFound if missing)."""
    vhosts = await broker.repo.vhosts()
    if vhost is not None:
        vhosts = [(i, n) for i, n in vhosts if n == vhost]
        if not vhosts:
            raise NotFound(f"no vhost '{vhost}'")
    out = []
    for vid, name in sorted(vhosts, key=lambda v: v[1]):
        _, exchanges, queues = await broker.repo.load_topology(vid)
        out.append(VhostView(name, exchanges, queues))
    return out


async def vhost_names(broker: Broker) -> list[str]:
    return sorted(name for _, name in await broker.repo.vhosts())


async def permitted_vhosts(broker: Broker, user: str) -> set[str]:
    """The vhosts on which ``user`` has permissions (what a ``management`` user sees)."""
    row = await broker.repo.find_user(user)
    if row is None:
        return set()
    out = set()
    for vid, name in await broker.repo.vhosts():
        if await broker.repo.find_permission(int(row["id"]), vid) is not None:
            out.add(name)
    return out


async def vhost_exists(broker: Broker, name: str) -> bool:
    return await broker.repo.find_vhost(name) is not None


@dataclass(slots=True)
class ConnectionView:
    """An open connection: its row, and what its node last published about it."""

    row: dict[str, Any]
    live: dict[str, Any]  # {} until the node's next statistics snapshot

    @property
    def name(self) -> str:
        if self.row.get("name"):
            return str(self.row["name"])
        live = self.live
        if live.get("peer_port") is not None:
            return f"{live['peer_host']}:{live['peer_port']} -> {live['host']}:{live['port']}"
        return f"{self.row.get('peer')} ({self.row['node_id']}/{self.row['id']})"


async def connections(broker: Broker) -> list[ConnectionView]:
    """Every open connection in the cluster, with its channels where known. This node's
    own are described live; the others from their last snapshot."""
    rows = await stats_sql.connection_rows(broker.repo)
    docs: dict[tuple[str, int], dict[str, Any]] = {}
    for node in await nodes(broker):
        for c in node.stats.get("connections", []):
            docs[(str(node.id), int(c["id"]))] = c
    for c in broker.stats.describe_connections():
        docs[(str(broker.node_id), int(c["id"]))] = c
    return [ConnectionView(r, docs.get((str(r["node_id"]), int(r["id"])), {})) for r in rows]


async def consumers(broker: Broker, vhost: str | None = None) -> list[dict[str, Any]]:
    """Consumers (table rows) with their channel where known (``channel``: the channel's
    published description, ``connection``: its ConnectionView)."""
    rows = await stats_sql.consumer_rows(broker.repo, vhost)
    by_key: dict[tuple[str, int], tuple[ConnectionView, dict[str, Any]]] = {}
    for conn in await connections(broker):
        for ch in conn.live.get("channels", []):
            by_key[(str(conn.row["node_id"]), int(ch.get("key", -1)))] = (conn, ch)
    for r in rows:
        found = by_key.get((str(r["node_id"]), int(r["channel"])))
        r["connection"], r["channel_info"] = found if found else (None, None)
    return rows


def admin_for(broker: Broker) -> Admin:
    """The admin use-cases over this node's own pool (created once per broker)."""
    admin = getattr(broker, "_management_admin", None)
    if admin is None:
        admin = Admin(AdminStore(broker.repo.durable_pool))
        broker._management_admin = admin  # type: ignore[attr-defined]
    return admin
