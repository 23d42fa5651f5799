"""Connections (DELETE closes one), channels and consumers, cluster-wide."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cavalcade.broker import monitoring
from cavalcade.broker.admin import connection_pid
from cavalcade.broker.monitoring import ConnectionView

from .access import check_vhost, visible_vhosts
from .auth import is_admin, is_monitor
from .context import CTX, USER
from .errors import json_response, not_found
from .paging import paginate


def _ms(value: Any) -> int | None:
    return int(value.timestamp() * 1000) if value is not None else None


def connection_json(c: ConnectionView) -> dict[str, Any]:
    row, live = c.row, c.live
    return {
        "auth_mechanism": row.get("auth_mechanism") or "PLAIN",
        "channel_max": live.get("channel_max", row.get("channel_max")),
        "channels": len(live.get("channels", [])) if live else int(row.get("channels") or 0),
        "client_properties": row.get("client_properties") or {},
        "connected_at": _ms(row.get("connected_at")),
        "frame_max": live.get("frame_max", row.get("frame_max")),
        "host": live.get("host", row.get("host")),
        "name": c.name,
        "node": row["node"],
        "peer_cert_issuer": None,
        "peer_cert_subject": None,
        "peer_cert_validity": None,
        "peer_host": live.get("peer_host", row.get("peer")),
        "peer_port": live.get("peer_port", row.get("peer_port")),
        "port": live.get("port", row.get("port")),
        "protocol": "AMQP 0-9-1",
        "recv_oct": 0,
        "recv_oct_details": {"rate": 0.0},
        "recv_cnt": 0,
        "send_oct": 0,
        "send_oct_details": {"rate": 0.0},
        "send_cnt": 0,
        "send_pend": 0,
        "ssl": bool(row.get("tls", False)),
        "ssl_cipher": None,
        "ssl_hash": None,
        "ssl_key_exchange": None,
        "ssl_protocol": None,
        "state": "blocked" if live.get("blocked") else "running",
        "timeout": live.get("timeout", row.get("heartbeat")),
        "type": "network",
        "user": row["user_name"],
        "user_who_performed_action": row["user_name"],
        "vhost": row["vhost"],
    }


def channel_json(c: ConnectionView, ch: dict[str, Any]) -> dict[str, Any]:
    live = c.live
    return {
        "acks_uncommitted": 0,
        "confirm": ch.get("confirm", False),
        "connection_details": {
            "name": c.name,
            "peer_host": live.get("peer_host"),
            "peer_port": live.get("peer_port"),
        },
        "consumer_count": ch.get("consumer_count", 0),
        "global_prefetch_count": ch.get("global_prefetch_count", 0),
        "messages_unacknowledged": ch.get("messages_unacknowledged", 0),
        "messages_uncommitted": 0,
        "messages_unconfirmed": ch.get("messages_unconfirmed", 0),
        "name": f"{c.name} ({ch['number']})",
        "node": c.row["node"],
        "number": ch["number"],
        "pending_raft_commands": 0,
        "prefetch_count": ch.get("prefetch_count", 0),
        "state": "running",
        "transactional": ch.get("transactional", False),
        "user": c.row["user_name"],
        "user_who_performed_action": c.row["user_name"],
        "vhost": c.row["vhost"],
    }


def consumer_json(r: dict[str, Any]) -> dict[str, Any]:
    conn: ConnectionView | None = r.get("connection")
    ch: dict[str, Any] | None = r.get("channel_info")
    details: dict[str, Any] = {}
    prefetch = 0
    if conn is not None and ch is not None:
        details = {
            "connection_name": conn.name,
            "name": f"{conn.name} ({ch['number']})",
            "node": conn.row["node"],
            "number": ch["number"],
            "peer_host": conn.live.get("peer_host"),
            "peer_port": conn.live.get("peer_port"),
            "user": conn.row["user_name"],
        }
        prefetch = ch.get("prefetch_count", 0)
    return {
        "ack_required": not r["no_ack"],
        "active": True,
        "activity_status": "up",
        "arguments": {"x-priority": r["priority"]} if r["priority"] else {},
        "channel_details": details,
        "consumer_tag": r["tag"],
        "exclusive": r["exclusive"],
        "prefetch_count": prefetch,
        "queue": {"name": r["queue"], "vhost": r["vhost"]},
    }


async def _visible(request: web.Request) -> list[ConnectionView]:
    user = request[USER]
    conns = await monitoring.connections(request.app[CTX].broker)
    if is_monitor(user):
        return conns
    return [c for c in conns if c.row["user_name"] == user.name]


async def _find(request: web.Request) -> ConnectionView:
    name = request.match_info["name"]
    for c in await _visible(request):
        if c.name == name:
            return c
    raise not_found()


async def list_connections(request: web.Request) -> web.Response:
    items = [connection_json(c) for c in await _visible(request)]
    return json_response(paginate(items, request.query, default_sort=()))


async def list_vhost_connections(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    items = [connection_json(c) for c in await _visible(request) if c.row["vhost"] == vhost]
    return json_response(paginate(items, request.query, default_sort=()))


async def show_connection(request: web.Request) -> web.Response:
    return json_response(connection_json(await _find(request)))


async def close_connection(request: web.Request) -> web.Response:
    """Ask the connection's node to close it (``X-Reason`` header: the close text)."""
    c = await _find(request)
    user = request[USER]
    if not is_admin(user) and c.row["user_name"] != user.name:
        raise not_found()
    reason = request.headers.get("X-Reason", "Closed via management plugin")
    admin = monitoring.admin_for(request.app[CTX].broker)
    await admin.close_connection(connection_pid(c.row["node_id"], int(c.row["id"])), reason)
    return web.Response(status=204)


async def connection_channels(request: web.Request) -> web.Response:
    c = await _find(request)
    items = [channel_json(c, ch) for ch in c.live.get("channels", [])]
    return json_response(paginate(items, request.query, default_sort=()))


async def _channels(request: web.Request, vhost: str | None = None) -> list[dict[str, Any]]:
    return [
        channel_json(c, ch)
        for c in await _visible(request)
        if vhost is None or c.row["vhost"] == vhost
        for ch in c.live.get("channels", [])
    ]


async def list_channels(request: web.Request) -> web.Response:
    return json_response(paginate(await _channels(request), request.query, default_sort=()))


async def list_vhost_channels(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    items = await _channels(request, vhost)
    return json_response(paginate(items, request.query, default_sort=()))


async def show_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for item in await _channels(request):
        if item["name"] == name:
            return json_response(item)
    raise not_found()


async def consumer_items(request: web.Request, vhost: str | None) -> list[dict[str, Any]]:
    allowed = await visible_vhosts(request)
    rows = await monitoring.consumers(request.app[CTX].broker, vhost)
    return [consumer_json(r) for r in rows if allowed is None or r["vhost"] in allowed]


async def list_consumers(request: web.Request) -> web.Response:
    items = await consumer_items(request, None)
    return json_response(paginate(items, request.query, default_sort=()))


async def list_vhost_consumers(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    items = await consumer_items(request, vhost)
    return json_response(paginate(items, request.query, default_sort=()))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/connections", list_connections)
    r.add_get("/api/connections/{name}", show_connection)
    r.add_delete("/api/connections/{name}", close_connection)
    r.add_get("/api/connections/{name}/channels", connection_channels)
    r.add_get("/api/vhosts/{vhost}/connections", list_vhost_connections)
    r.add_get("/api/vhosts/{vhost}/channels", list_vhost_channels)
    r.add_get("/api/channels", list_channels)
    r.add_get("/api/channels/{name}", show_channel)
    r.add_get("/api/consumers", list_consumers)
    r.add_get("/api/consumers/{vhost}", list_vhost_consumers)
