"""Exchanges, queues and bindings: list, show, declare, delete; publish, get, purge."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

from aiohttp import web

from cavalcade.broker import admin_topology, monitoring
from cavalcade.domain.routing import ExchangeInfo
from cavalcade.storage.stats import QueueDepth

from .access import check_vhost, visible_vhosts
from .api_connections import consumer_json
from .context import CTX, USER
from .errors import bad_request, json_response, not_found
from .paging import paginate
from .rates import ClusterStats

NO_CONTENT = web.Response(status=204)


async def body_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (400 ``not_json`` otherwise); an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("not_json") from None
    if not isinstance(value, dict):
        raise bad_request("not_json")
    return value


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def _args(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("arguments") or {}
    if not isinstance(value, dict):
        raise bad_request("arguments must be an object")
    return value


def _node(request: web.Request) -> str:
    return request.app[CTX].settings.effective_node_name()


async def _session(request: web.Request, vhost: str) -> Any:
    await check_vhost(request, vhost)
    return await admin_topology.acting_session(request.app[CTX].broker, request[USER].name, vhost)


# --------------------------------------------------------------------------- queues


def _details(value: float = 0.0) -> dict[str, float]:
    return {"rate": value}


def queue_json(q: QueueDepth, node: str, cluster: ClusterStats) -> dict[str, Any]:
    """A queue in RabbitMQ 3.10's shape (the fields that mean something here)."""
    qtype = str(q.arguments.get("x-queue-type") or "classic")
    messages = q.ready + q.unacked
    out: dict[str, Any] = {
        "arguments": q.arguments,
        "auto_delete": q.auto_delete,
        "consumer_capacity": 1.0 if q.consumers else 0.0,
        "consumer_utilisation": 1.0 if q.consumers else 0.0,
        "consumers": q.consumers,
        "durable": q.durable,
        "effective_policy_definition": {},
        "exclusive": q.exclusive,
        "exclusive_consumer_tag": None,
        "head_message_timestamp": None,
        "idle_since": q.last_used_at.isoformat() if q.last_used_at else None,
        "memory": 0,
        "message_bytes": q.ready_bytes + q.unacked_bytes,
        "message_bytes_paged_out": 0,
        "message_bytes_persistent": 0,
        "message_bytes_ram": q.ready_bytes + q.unacked_bytes,
        "message_bytes_ready": q.ready_bytes,
        "message_bytes_unacknowledged": q.unacked_bytes,
        "messages": messages,
        "messages_details": _details(),
        "messages_paged_out": 0,
        "messages_persistent": q.persistent,
        "messages_ram": messages,
        "messages_ready": q.ready,
        "messages_ready_details": _details(),
        "messages_ready_ram": q.ready,
        "messages_unacknowledged": q.unacked,
        "messages_unacknowledged_details": _details(),
        "messages_unacknowledged_ram": q.unacked,
        "name": q.name,
        "node": node,
        "operator_policy": None,
        "policy": None,
        "recoverable_slaves": None,
        "reductions": 0,
        "reductions_details": _details(),
        "single_active_consumer_tag": None,
        "state": "running",
        "type": qtype,
        "vhost": q.vhost,
    }
    stats = cluster.queue(q.id)
    if stats:
        out["message_stats"] = stats
        publish_rate = stats.get("publish_details", {}).get("rate", 0.0)
        out_rate = sum(
            stats.get(f"{k}_details", {}).get("rate", 0.0)
            for k in ("ack", "deliver_no_ack", "get_no_ack")
        )
        out["messages_details"] = _details(round(publish_rate - out_rate, 1))
    if q.exclusive:
        out["owner_pid_details"] = {"name": f"{q.exclusive_node}/{q.exclusive_connection}"}
    return out


async def _queue_items(request: web.Request, vhost: str | None) -> list[dict[str, Any]]:
    broker = request.app[CTX].broker
    allowed = await visible_vhosts(request)
    depths = await monitoring.queue_depths(broker, vhost)
    cluster = ClusterStats(await monitoring.nodes(broker))
    node = _node(request)
    return [queue_json(q, node, cluster) for q in depths if allowed is None or q.vhost in allowed]


async def list_queues(request: web.Request) -> web.Response:
    return json_response(paginate(await _queue_items(request, None), request.query))


async def list_vhost_queues(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    return json_response(paginate(await _queue_items(request, vhost), request.query))


async def show_queue(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    await check_vhost(request, vhost)
    broker = request.app[CTX].broker
    depths = await monitoring.queue_depths(broker, vhost, name)
    if not depths:
        raise not_found()
    cluster = ClusterStats(await monitoring.nodes(broker))
    out = queue_json(depths[0], _node(request), cluster)
    consumers = await monitoring.consumers(broker, vhost)
    out["consumer_details"] = [consumer_json(c) for c in consumers if c["queue"] == name]
    out["deliveries"] = []
    out["incoming"] = []
    return json_response(out)


async def put_queue(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    body = await body_json(request)
    s = await _session(request, vhost)
    created = await admin_topology.declare_queue(
        request.app[CTX].broker,
        s,
        name,
        _bool(body, "durable", False),
        _bool(body, "auto_delete", False),
        _args(body),
    )
    return web.Response(status=201 if created else 204)


async def delete_queue(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    s = await _session(request, vhost)
    q = request.query
    await admin_topology.delete_queue(
        request.app[CTX].broker,
        s,
        name,
        q.get("if-unused", "false") == "true",
        q.get("if-empty", "false") == "true",
    )
    return web.Response(status=204)


async def purge_queue(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    s = await _session(request, vhost)
    await admin_topology.purge_queue(request.app[CTX].broker, s, name)
    return web.Response(status=204)


async def get_messages(request: web.Request) -> web.Response:
    """POST .../get: ``count``, ``ackmode``, ``encoding`` (auto|base64), ``truncate``."""
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    body = await body_json(request)
    ackmode = body.get("ackmode")
    if ackmode is None and "requeue" in body:  # the pre-3.7 form
        ackmode = "ack_requeue_true" if _bool(body, "requeue", True) else "ack_requeue_false"
    if ackmode not in admin_topology.ACKMODES:
        raise bad_request(f"Unknown ackmode: {ackmode}")
    encoding = body.get("encoding", "auto")
    if encoding not in ("auto", "base64"):
        raise bad_request(f"Unsupported encoding: {encoding}")
    try:
        count = int(body.get("count", 1))
        truncate = int(body["truncate"]) if body.get("truncate") not in (None, "") else None
    except (TypeError, ValueError):
        raise bad_request("count and truncate must be integers") from None
    s = await _session(request, vhost)
    got = await admin_topology.get_messages(request.app[CTX].broker, s, name, count, ackmode)
    out = []
    for g in got:
        payload = g.message.body
        size = len(payload)
        if truncate is not None:
            payload = payload[:truncate]
        text, kind = _encode_payload(payload, encoding)
        out.append(
            {
                "payload_bytes": size,
                "redelivered": g.message.redelivered,
                "exchange": g.message.exchange,
                "routing_key": g.message.routing_key,
                "message_count": g.message_count,
                "properties": g.properties,
                "payload": text,
                "payload_encoding": kind,
            }
        )
    return json_response(out)


def _encode_payload(payload: bytes, encoding: str) -> tuple[str, str]:
    if encoding == "auto":
        try:
            return payload.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(payload).decode(), "base64"


# --------------------------------------------------------------------------- exchanges


def exchange_json(vhost: str, ex: ExchangeInfo) -> dict[str, Any]:
    return {
        "arguments": ex.arguments,
        "auto_delete": ex.auto_delete,
        "durable": ex.durable,
        "internal": ex.internal,
        "name": ex.name,
        "type": ex.type,
        "user_who_performed_action": "rmq-internal"
        if ex.name.startswith("amq.") or not ex.name
        else "",
        "vhost": vhost,
    }


async def _exchange_items(request: web.Request, vhost: str | None) -> list[dict[str, Any]]:
    allowed = await visible_vhosts(request)
    views = await monitoring.topology(request.app[CTX].broker, vhost)
    return [
        exchange_json(v.name, ex)
        for v in views
        if allowed is None or v.name in allowed
        for ex in v.exchanges.values()
    ]


async def list_exchanges(request: web.Request) -> web.Response:
    return json_response(paginate(await _exchange_items(request, None), request.query))


async def list_vhost_exchanges(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    return json_response(paginate(await _exchange_items(request, vhost), request.query))


async def show_exchange(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], _exchange_name(request)
    await check_vhost(request, vhost)
    for v in await monitoring.topology(request.app[CTX].broker, vhost):
        for ex in v.exchanges.values():
            if ex.name == name:
                out = exchange_json(vhost, ex)
                out["incoming"] = []
                out["outgoing"] = []
                return json_response(out)
    raise not_found()


def _exchange_name(request: web.Request) -> str:
    name = request.match_info["name"]
    return "" if name == "amq.default" else name


async def put_exchange(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], _exchange_name(request)
    body = await body_json(request)
    s = await _session(request, vhost)
    created = await admin_topology.declare_exchange(
        request.app[CTX].broker,
        s,
        name,
        str(body.get("type") or "direct"),
        _bool(body, "durable", False),
        _bool(body, "auto_delete", False),
        _bool(body, "internal", False),
        _args(body),
    )
    return web.Response(status=201 if created else 204)


async def delete_exchange(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], _exchange_name(request)
    s = await _session(request, vhost)
    await admin_topology.delete_exchange(
        request.app[CTX].broker, s, name, request.query.get("if-unused", "false") == "true"
    )
    return web.Response(status=204)


async def publish(request: web.Request) -> web.Response:
    """POST .../publish: ``routing_key``, ``payload``, ``payload_encoding``, ``properties``."""
    vhost, name = request.match_info["vhost"], _exchange_name(request)
    body = await body_json(request)
    for key in ("routing_key", "payload", "payload_encoding", "properties"):
        if key not in body:
            raise bad_request(f"{key} missing")
    encoding = body["payload_encoding"]
    if encoding == "string":
        payload = str(body["payload"]).encode()
    elif encoding == "base64":
        try:
            payload = base64.b64decode(str(body["payload"]), validate=True)
        except ValueError:
            raise bad_request("payload is not valid base64") from None
    else:
        raise bad_request(f"Unsupported payload_encoding: {encoding}")
    properties = body.get("properties") or {}
    if not isinstance(properties, dict):
        raise bad_request("properties must be an object")
    properties = {k: v for k, v in properties.items() if v not in ("", None)}
    headers = properties.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise bad_request("headers must be an object")
    broker = request.app[CTX].broker
    s = await _session(request, vhost)
    from cavalcade.errors import NotFound

    try:
        routed = await admin_topology.publish(
            broker, s, name, str(body["routing_key"]), properties, payload
        )
    except NotFound as exc:
        raise bad_request(f"404 NOT_FOUND - {exc}") from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return json_response({"routed": routed})


# --------------------------------------------------------------------------- bindings


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's ``properties_key``: the key, plus ``~hash`` of the arguments if any."""
    key = quote_plus(routing_key, safe="")
    if not arguments:
        return key if key else "~"
    digest = hashlib.sha1(json.dumps(arguments, sort_keys=True).encode()).digest()[:6]
    return f"{key}~{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def _same_key(properties: str, given: str) -> bool:
    """A ``{props}`` path segment names a binding quoted (as listed) or unquoted."""
    return given in (properties, unquote_plus(properties))


def _binding(
    vhost: str, source: str, dest: str, kind: str, key: str, args: dict[str, Any]
) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": kind,
        "routing_key": key,
        "arguments": args,
        "properties_key": properties_key(key, args),
    }


async def _binding_items(request: web.Request, vhost: str | None) -> list[dict[str, Any]]:
    allowed = await visible_vhosts(request)
    out: list[dict[str, Any]] = []
    for v in await monitoring.topology(request.app[CTX].broker, vhost):
        if allowed is not None and v.name not in allowed:
            continue
        queues = {q.id: q.name for q in v.queues.values()}
        for q in sorted(v.queues.values(), key=lambda q: q.name):  # the default exchange's
            out.append(_binding(v.name, "", q.name, "queue", q.name, {}))
        for ex in sorted(v.exchanges.values(), key=lambda e: e.name):
            for b in ex.bindings:
                if b.queue_id is not None and b.queue_id in queues:
                    out.append(
                        _binding(
                            v.name, ex.name, queues[b.queue_id], "queue", b.routing_key, b.arguments
                        )
                    )
                elif b.exchange_id is not None and b.exchange_id in v.exchanges:
                    out.append(
                        _binding(
                            v.name,
                            ex.name,
                            v.exchanges[b.exchange_id].name,
                            "exchange",
                            b.routing_key,
                            b.arguments,
                        )
                    )
    return out


async def list_bindings(request: web.Request) -> web.Response:
    items = await _binding_items(request, None)
    return json_response(paginate(items, request.query, default_sort=()))


async def list_vhost_bindings(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    items = await _binding_items(request, vhost)
    return json_response(paginate(items, request.query, default_sort=()))


def _kind(letter: str) -> str:
    return {"q": "queue", "e": "exchange"}[letter]


async def _filtered(request: web.Request, **match: str) -> list[dict[str, Any]]:
    vhost = request.match_info["vhost"]
    await check_vhost(request, vhost)
    return [
        b for b in await _binding_items(request, vhost) if all(b[k] == v for k, v in match.items())
    ]


async def _exists(request: web.Request, kind: str, name: str) -> None:
    vhost = request.match_info["vhost"]
    for v in await monitoring.topology(request.app[CTX].broker, vhost):
        names = v.queues if kind == "queue" else {e.name for e in v.exchanges.values()}
        if name in names:
            return
    raise not_found()


async def queue_bindings(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await check_vhost(request, request.match_info["vhost"])
    await _exists(request, "queue", name)
    items = await _filtered(request, destination=name, destination_type="queue")
    return json_response(items)


async def exchange_bindings(request: web.Request) -> web.Response:
    name, direction = _exchange_name(request), request.match_info["direction"]
    await check_vhost(request, request.match_info["vhost"])
    await _exists(request, "exchange", name)
    if direction == "source":
        items = await _filtered(request, source=name)
    elif direction == "destination":
        items = await _filtered(request, destination=name, destination_type="exchange")
    else:
        raise not_found()
    return json_response(items)


async def edge_bindings(request: web.Request) -> web.Response:
    m = request.match_info
    kind = _kind(m["kind"])
    source = "" if m["source"] == "amq.default" else m["source"]
    await check_vhost(request, m["vhost"])  # missing ends are an empty list, as on RabbitMQ
    items = await _filtered(request, source=source, destination=m["dest"], destination_type=kind)
    return json_response(items)


async def create_binding(request: web.Request) -> web.Response:
    m = request.match_info
    body = await body_json(request)
    key = str(body.get("routing_key", ""))
    args = _args(body)
    s = await _session(request, m["vhost"])
    await admin_topology.bind(
        request.app[CTX].broker, s, m["source"], m["kind"], m["dest"], key, args
    )
    location = f"{m['dest']}/{quote(properties_key(key, args), safe='~')}"
    return web.Response(status=201, headers={"Location": location})


async def show_binding(request: web.Request) -> web.Response:
    m = request.match_info
    items = await _filtered(
        request, source=m["source"], destination=m["dest"], destination_type=_kind(m["kind"])
    )
    for b in items:
        if _same_key(b["properties_key"], m["props"]):
            return json_response(b)
    raise not_found()


async def delete_binding(request: web.Request) -> web.Response:
    m = request.match_info
    items = await _filtered(
        request, source=m["source"], destination=m["dest"], destination_type=_kind(m["kind"])
    )
    for b in items:
        if _same_key(b["properties_key"], m["props"]):
            s = await _session(request, m["vhost"])
            await admin_topology.bind(
                request.app[CTX].broker,
                s,
                m["source"],
                m["kind"],
                m["dest"],
                b["routing_key"],
                b["arguments"],
                unbind=True,
            )
            return web.Response(status=204)
    raise not_found()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/queues", list_queues)
    r.add_get("/api/queues/{vhost}", list_vhost_queues)
    r.add_get("/api/queues/{vhost}/{name}", show_queue)
    r.add_put("/api/queues/{vhost}/{name}", put_queue)
    r.add_delete("/api/queues/{vhost}/{name}", delete_queue)
    r.add_delete("/api/queues/{vhost}/{name}/contents", purge_queue)
    r.add_post("/api/queues/{vhost}/{name}/get", get_messages)
    r.add_get("/api/queues/{vhost}/{name}/bindings", queue_bindings)
    r.add_get("/api/exchanges", list_exchanges)
    r.add_get("/api/exchanges/{vhost}", list_vhost_exchanges)
    r.add_get("/api/exchanges/{vhost}/{name}", show_exchange)
    r.add_put("/api/exchanges/{vhost}/{name}", put_exchange)
    r.add_delete("/api/exchanges/{vhost}/{name}", delete_exchange)
    r.add_post("/api/exchanges/{vhost}/{name}/publish", publish)
    r.add_get("/api/exchanges/{vhost}/{name}/bindings/{direction}", exchange_bindings)
    r.add_get("/api/bindings", list_bindings)
    r.add_get("/api/bindings/{vhost}", list_vhost_bindings)
    edge = "/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{dest}"
    r.add_get(edge, edge_bindings)
    r.add_post(edge, create_binding)
    r.add_get(edge + "/{props}", show_binding)
    r.add_delete(edge + "/{props}", delete_binding)
