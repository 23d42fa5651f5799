"""Which vhosts a management user may see (monitoring and administrator: all)."""

from __future__ import annotations

from aiohttp import web

from cavalcade.broker import monitoring

from .auth import is_monitor
from .context import CTX, USER
from .errors import not_found


async def visible_vhosts(request: web.Request) -> set[str] | None:
    """None means every vhost."""
    user = request[USER]
    if is_monitor(user):
        return None
    return await monitoring.permitted_vhosts(request.app[CTX].broker, user.name)


async def check_vhost(request: web.Request, vhost: str) -> None:
    """404 for a vhost that does not exist, 401 for one the user may not see."""
    broker = request.app[CTX].broker
    if not await monitoring.vhost_exists(broker, vhost):
        raise not_found()
    allowed = await visible_vhosts(request)
    if allowed is not None and vhost not in allowed:
        from .errors import forbidden

        raise forbidden(f"access to vhost '{vhost}' refused for user '{request[USER].name}'")
