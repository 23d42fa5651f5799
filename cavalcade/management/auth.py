"""Basic auth against the users table, and RabbitMQ's management tags.

``management`` sees its own vhosts' objects, ``policymaker`` also manages their
policies, ``monitoring`` sees everything (all connections, nodes), and
``administrator`` may do everything. A user with none of these is refused (401)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable

from aiohttp import web

from cavalcade.broker.monitoring import LoginRefused, ManagementUser, login

from .context import CTX, USER
from .errors import REALM, ApiError, forbidden

MANAGEMENT_TAGS = frozenset({"management", "policymaker", "monitoring", "administrator"})
PUBLIC_PREFIXES = ("/metrics", "/static/", "/api/index.html")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_admin(user: ManagementUser) -> bool:
    return "administrator" in user.tags


def is_monitor(user: ManagementUser) -> bool:
    """May see every vhost, connection and channel (monitoring or administrator)."""
    return "monitoring" in user.tags or is_admin(user)


def is_policymaker(user: ManagementUser) -> bool:
    return "policymaker" in user.tags or is_admin(user)


def require_admin(request: web.Request) -> ManagementUser:
    user: ManagementUser = request[USER]
    if not is_admin(user):
        raise forbidden("Not administrator user")
    return user


def require_monitor(request: web.Request) -> ManagementUser:
    user: ManagementUser = request[USER]
    if not is_monitor(user):
        raise forbidden("Not monitor user")
    return user


def require_policymaker(request: web.Request) -> ManagementUser:
    user: ManagementUser = request[USER]
    if not is_policymaker(user):
        raise forbidden("Not policymaker user")
    return user


def _credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@web.middleware
async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/api`` request needs credentials of a user with a management tag."""
    if not request.path.startswith("/api/") or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    creds = _credentials(request.headers.get("Authorization"))
    # The dashboard's own requests get no challenge, so the browser shows no login prompt.
    challenge = {} if request.headers.get("X-Requested-With") else {"WWW-Authenticate": REALM}
    if creds is None:
        raise web.HTTPUnauthorized(headers=challenge)
    try:
        user = await login(request.app[CTX].broker, creds[0], creds[1], request.remote)
    except LoginRefused as exc:
        raise ApiError(401, "not_authorized", "Login failed", challenge) from exc
    if not MANAGEMENT_TAGS.intersection(user.tags):
        raise ApiError(401, "not_authorised", "Not management user", challenge)
    request[USER] = user
    return await handler(request)
