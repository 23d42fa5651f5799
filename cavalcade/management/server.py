"""The management listener: an aiohttp application on the node's event loop, served on
the socket the parent process bound (shared by ``--workers`` siblings)."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from importlib import resources

from aiohttp import web

from cavalcade.broker.service import Broker
from cavalcade.errors import AccessRefused, NotFound, PreconditionFailed
from cavalcade.settings import Settings

from . import (
    api_admin,
    api_connections,
    api_definitions,
    api_overview,
    api_topology,
    metrics,
)
from .auth import Handler, basic_auth
from .context import CTX, Context
from .errors import ApiError, bad_request, not_found

log = logging.getLogger(__name__)

STATIC = resources.files("cavalcade.management") / "static"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Broker errors and unknown ``/api`` paths as RabbitMQ's JSON answers."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if request.path.startswith("/api/"):
            raise not_found() from None
        raise
    except web.HTTPMethodNotAllowed as exc:
        raise ApiError(405, "Method Not Allowed", f"{request.method} not allowed") from exc
    except NotFound as exc:
        raise not_found() from exc
    except PreconditionFailed as exc:
        raise bad_request(_reason(exc)) from exc
    except AccessRefused as exc:
        raise ApiError(401, "not_authorised", _reason(exc)) from exc
    except json.JSONDecodeError as exc:
        raise bad_request("not_json") from exc


def _reason(exc: Exception) -> str:
    text = getattr(exc, "text", None) or str(exc)
    return str(text)


async def _index(_request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=(STATIC / "index.html").read_bytes(),
        content_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    path = STATIC / name
    if not path.is_file():
        raise web.HTTPNotFound()
    kinds = {".js": "application/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    kind = kinds.get("." + name.rsplit(".", 1)[-1], "application/octet-stream")
    return web.Response(body=path.read_bytes(), content_type=kind)


def build_app(broker: Broker, settings: Settings) -> web.Application:
    app = web.Application(middlewares=[errors, basic_auth], client_max_size=64 * 1024 * 1024)
    app[CTX] = Context(broker, settings)
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    metrics.setup(app)
    api_overview.setup(app)
    api_admin.setup(app)
    api_topology.setup(app)
    api_connections.setup(app)
    api_definitions.setup(app)
    _trailing_slashes(app)
    return app


def _trailing_slashes(app: web.Application) -> None:
    """RabbitMQ answers ``/api/queues/`` as ``/api/queues`` (Flower relies on it)."""
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") and not path.endswith("/") and route.method != "HEAD":
            app.router.add_route(route.method, path + "/", route.handler)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS with the AMQP listener's certificate pair when ``--management-tls``."""
    if not settings.management_tls:
        return None
    cert = getattr(settings, "tls_cert", None)
    key = getattr(settings, "tls_key", None)
    if not cert:
        raise ValueError("--management-tls needs --tls-cert and --tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class ManagementServer:
    """Runs the application on an already listening socket until ``stop``."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.app = build_app(broker, settings)
        self.settings = settings
        self._runner: web.AppRunner | None = None

    async def start(self, sock: socket.socket) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, ssl_context=ssl_context(self.settings))
        await site.start()
        log.info("management API on %s", site.name)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
