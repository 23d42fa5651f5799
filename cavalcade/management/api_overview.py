"""``/api/overview``, ``/api/nodes``, ``/api/whoami``, ``/api/cluster-name``, the health
checks and ``/api/aliveness-test/{vhost}``."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from cavalcade import __version__
from cavalcade.broker import admin_topology, monitoring
from cavalcade.storage.stats import NodeRow

from .auth import require_monitor
from .context import CTX, USER
from .errors import json_response, not_found
from .paging import paginate
from .rates import ClusterStats

API_LEVEL = "3.10.8"  # the RabbitMQ management API whose shapes we follow
EXCHANGE_TYPES = [
    ("direct", "AMQP direct exchange, as per the AMQP specification"),
    ("fanout", "AMQP fanout exchange, as per the AMQP specification"),
    ("headers", "AMQP headers exchange, as per the AMQP specification"),
    ("topic", "AMQP topic exchange, as per the AMQP specification"),
    ("x-delayed-message", "Delayed Message Exchange"),
]
RETENTION = {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]}
SAMPLED = ("publish", "deliver_get", "ack", "confirm", "redeliver", "deliver", "get")


def exchange_types() -> list[dict[str, Any]]:
    return [{"name": n, "description": d, "enabled": True} for n, d in EXCHANGE_TYPES]


def listeners(request: web.Request) -> list[dict[str, Any]]:
    settings = request.app[CTX].settings
    node = settings.effective_node_name()
    out = [
        {"node": node, "protocol": "amqp", "ip_address": settings.host, "port": settings.port},
    ]
    tls_port = getattr(settings, "tls_port", None)
    if tls_port:
        out.append(
            {"node": node, "protocol": "amqp/ssl", "ip_address": settings.host, "port": tls_port}
        )
    out.append(
        {
            "node": node,
            "protocol": "https" if settings.management_tls else "http",
            "ip_address": settings.effective_management_host(),
            "port": _management_port(request),
        }
    )
    return out


def _management_port(request: web.Request) -> int:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return request.app[CTX].settings.management_port


def _with_samples(stats: dict[str, Any], cluster: ClusterStats, query: Any) -> dict[str, Any]:
    """``msg_rates_age``/``msg_rates_incr``: add ``samples`` to the rate details."""
    if "msg_rates_age" not in query:
        return stats
    try:
        age = float(query.get("msg_rates_age", 60))
        incr = float(query.get("msg_rates_incr", 5))
    except ValueError:
        return stats
    now = time.time()
    for key in SAMPLED:
        details = stats.get(f"{key}_details")
        if details is not None:
            samples = cluster.samples(key, min(age, 600.0), incr, now)
            details["samples"] = samples
            if len(samples) >= 2:
                first, last = samples[-1], samples[0]
                span = (last["timestamp"] - first["timestamp"]) / 1000
                details["avg"] = round(last["sample"] / max(len(samples), 1), 1)
                details["avg_rate"] = round(
                    (last["sample"] - first["sample"]) / span if span > 0 else 0.0, 1
                )
    return stats


async def overview(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    broker = ctx.broker
    nodes = await monitoring.nodes(broker)
    cluster = ClusterStats(nodes)
    totals = await monitoring.totals(broker)
    channels = sum(len(c.get("channels", [])) for n in nodes for c in _connections(n))
    body = {
        "management_version": API_LEVEL,
        "rates_mode": "basic",
        "sample_retention_policies": RETENTION,
        "exchange_types": exchange_types(),
        "product_version": __version__,
        "product_name": "Cavalcade",
        "rabbitmq_version": API_LEVEL,
        "cluster_name": ctx.settings.effective_node_name(),
        "erlang_version": "",
        "erlang_full_version": "",
        "release_series_support_status": "supported",
        "disable_stats": False,
        "enable_queue_totals": False,
        "message_stats": _with_samples(cluster.overview(), cluster, request.query),
        "churn_rates": {},
        "queue_totals": {
            "messages": totals.messages_ready + totals.messages_unacknowledged,
            "messages_details": {"rate": 0.0},
            "messages_ready": totals.messages_ready,
            "messages_ready_details": {"rate": 0.0},
            "messages_unacknowledged": totals.messages_unacknowledged,
            "messages_unacknowledged_details": {"rate": 0.0},
        },
        "object_totals": {
            "channels": channels,
            "connections": totals.connections,
            "consumers": totals.consumers,
            "exchanges": totals.exchanges,
            "queues": totals.queues,
        },
        "statistics_db_event_queue": 0,
        "node": ctx.settings.effective_node_name(),
        "listeners": listeners(request),
        "contexts": [
            {
                "node": ctx.settings.effective_node_name(),
                "description": "Cavalcade Management",
                "path": "/",
                "port": str(_management_port(request)),
            }
        ],
    }
    return json_response(body)


def _connections(node: NodeRow) -> list[dict[str, Any]]:
    value = node.stats.get("connections", [])
    return value if isinstance(value, list) else []


def node_json(node: NodeRow, current: str | None = None) -> dict[str, Any]:
    """A node in RabbitMQ's shape, plus Cavalcade's ``id`` and ``heartbeat_age``."""
    gauges = node.stats.get("gauges", {})
    started_ms = int(node.started_at.timestamp() * 1000)
    sockets = len(_connections(node))
    return {
        "name": node.name,
        "id": str(node.id),
        "type": "disc",
        "running": node.heartbeat_age < 10.0,
        "being_drained": False,
        "uptime": max(0, int(time.time() * 1000) - started_ms),
        "started_at": started_ms,
        "heartbeat_age": round(node.heartbeat_age, 3),
        "stats_age": None if node.stats_age is None else round(node.stats_age, 3),
        "partitions": [],
        "os_pid": str(gauges.get("os_pid", "")),
        "processors": gauges.get("processors", 1),
        "mem_used": gauges.get("mem_used", 0),
        "mem_limit": 0,
        "mem_alarm": False,
        "disk_free": 0,
        "disk_free_limit": 0,
        "disk_free_alarm": False,
        "fd_used": gauges.get("fd_used", 0),
        "fd_total": 1024,
        "sockets_used": sockets,
        "sockets_total": 1024,
        "proc_used": sockets,
        "proc_total": 1048576,
        "run_queue": 0,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "publish_backlog_bytes": gauges.get("publish_backlog_bytes", 0),
        "blocked_connections": gauges.get("blocked_connections", 0),
        "database_up": gauges.get("database_up", True),
        "this_node": current == str(node.id),
    }


async def nodes(request: web.Request) -> web.Response:
    require_monitor(request)
    broker = request.app[CTX].broker
    rows = await monitoring.nodes(broker)
    items = [node_json(n, str(broker.node_id)) for n in rows]
    return json_response(paginate(items, request.query, default_sort=("name",)))


async def node(request: web.Request) -> web.Response:
    require_monitor(request)
    broker = request.app[CTX].broker
    name = request.match_info["name"]
    for n in await monitoring.nodes(broker):
        if n.name == name or str(n.id) == name:
            return json_response(node_json(n, str(broker.node_id)))
    raise not_found()


async def whoami(request: web.Request) -> web.Response:
    user = request[USER]
    return json_response({"name": user.name, "tags": list(user.tags)})


async def cluster_name(request: web.Request) -> web.Response:
    return json_response({"name": request.app[CTX].settings.effective_node_name()})


async def extensions(_request: web.Request) -> web.Response:
    return json_response([])


async def _alarm_check(request: web.Request, local: bool) -> web.Response:
    broker = request.app[CTX].broker
    problems = []
    if not await monitoring.database_reachable(broker):
        problems.append(
            {"node": request.app[CTX].settings.effective_node_name(), "resource": "database"}
        )
    if broker.publishing_blocked:
        problems.append(
            {"node": request.app[CTX].settings.effective_node_name(), "resource": "publish_backlog"}
        )
    if not local:
        for n in await monitoring.nodes(broker) if not problems else []:
            if n.stats.get("gauges", {}).get("blocked_connections"):
                problems.append({"node": n.name, "resource": "publish_backlog"})
    if problems:
        return json_response(
            {"status": "failed", "reason": "resource alarm(s) in effect", "alarms": problems}, 503
        )
    return json_response({"status": "ok"})


async def alarms(request: web.Request) -> web.Response:
    return await _alarm_check(request, local=False)


async def local_alarms(request: web.Request) -> web.Response:
    return await _alarm_check(request, local=True)


async def virtual_hosts(request: web.Request) -> web.Response:
    if not await monitoring.database_reachable(request.app[CTX].broker):
        return json_response(
            {"status": "failed", "reason": "database unreachable", "virtual-hosts": []}, 503
        )
    return json_response({"status": "ok"})


async def port_listener(request: web.Request) -> web.Response:
    raw = request.match_info["port"]
    ports = [int(entry["port"]) for entry in listeners(request)]
    try:
        port = int(raw)
    except ValueError:
        return json_response({"error": "bad_request", "reason": f"invalid port {raw}"}, 400)
    if port in ports:
        return json_response({"status": "ok", "port": port})
    return json_response(
        {"status": "failed", "reason": "No active listener", "missing": port, "ports": ports}, 503
    )


async def aliveness(request: web.Request) -> web.Response:
    """Declare ``aliveness-test`` in the vhost, publish a message to it and get it back."""
    broker = request.app[CTX].broker
    vhost = request.match_info["vhost"]
    if not await monitoring.vhost_exists(broker, vhost):
        raise not_found()
    s = await admin_topology.acting_session(broker, request[USER].name, vhost)
    await admin_topology.declare_queue(broker, s, "aliveness-test", False, False, {})
    await admin_topology.publish(broker, s, "", "aliveness-test", {}, b"test_message")
    got = await admin_topology.get_messages(broker, s, "aliveness-test", 1, "ack_requeue_false")
    if not got or got[0].message.body != b"test_message":
        return json_response({"status": "failed", "reason": "message not received"}, 503)
    return json_response({"status": "ok"})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/overview", overview)
    r.add_get("/api/nodes", nodes)
    r.add_get("/api/nodes/{name}", node)
    r.add_get("/api/whoami", whoami)
    r.add_get("/api/cluster-name", cluster_name)
    r.add_get("/api/extensions", extensions)
    r.add_get("/api/health/checks/alarms", alarms)
    r.add_get("/api/health/checks/local-alarms", local_alarms)
    r.add_get("/api/health/checks/virtual-hosts", virtual_hosts)
    r.add_get("/api/health/checks/port-listener/{port}", port_listener)
    r.add_get("/api/aliveness-test/{vhost}", aliveness)
