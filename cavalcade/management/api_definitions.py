"""``/api/definitions`` (and per vhost): export and import in RabbitMQ's format."""

from __future__ import annotations

import json

from aiohttp import web

from cavalcade.broker import definitions, monitoring

from .auth import require_admin
from .context import CTX
from .errors import bad_request, json_response, not_found


async def export(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CTX]
    doc = await definitions.export_definitions(
        monitoring.admin_for(ctx.broker), ctx.settings.effective_node_name()
    )
    vhost = request.match_info.get("vhost")
    if vhost is not None:
        if not await monitoring.vhost_exists(ctx.broker, vhost):
            raise not_found()
        doc = {
            "rabbit_version": doc["rabbit_version"],
            "rabbitmq_version": doc["rabbitmq_version"],
            "product_name": doc["product_name"],
            "product_version": doc["product_version"],
            **{
                k: [e for e in doc[k] if e.get("vhost") == vhost]
                for k in ("parameters", "policies", "queues", "exchanges", "bindings")
            },
        }
    response = json_response(doc)
    if request.query.get("download"):
        name = request.query["download"].replace('"', "")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


async def import_(request: web.Request) -> web.Response:
    """The body is the JSON document (or a form with a ``file`` field, as the UI sends)."""
    require_admin(request)
    ctx = request.app[CTX]
    raw = await request.read()
    if request.content_type == "multipart/form-data":
        form = await request.post()
        upload = form.get("file")
        file = getattr(upload, "file", None)
        raw = file.read() if file is not None else str(upload or "").encode()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("not_json") from None
    if not isinstance(doc, dict):
        raise bad_request("not_json")
    vhost = request.match_info.get("vhost")
    if vhost is not None and not await monitoring.vhost_exists(ctx.broker, vhost):
        raise not_found()
    await definitions.import_definitions(monitoring.admin_for(ctx.broker), doc, vhost)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/definitions", export)
    r.add_post("/api/definitions", import_)
    r.add_get("/api/definitions/{vhost}", export)
    r.add_post("/api/definitions/{vhost}", import_)
