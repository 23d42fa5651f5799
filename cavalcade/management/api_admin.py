"""Users, vhosts, permissions, policies (and operator policies) and limits, over the
admin use-cases that ``cavalcade ctl`` calls."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from cavalcade.broker import admin as admin_uc
from cavalcade.broker import definitions, monitoring
from cavalcade.broker.admin import Admin, PermissionInfo, PolicyInfo, UserInfo

from .access import visible_vhosts
from .api_topology import body_json
from .auth import is_admin, require_admin, require_policymaker
from .context import CTX, USER
from .errors import ApiError, bad_request, json_response, not_found
from .paging import paginate


def _admin(request: web.Request) -> Admin:
    return monitoring.admin_for(request.app[CTX].broker)


def _node(request: web.Request) -> str:
    return request.app[CTX].settings.effective_node_name()


def admin_errors(exc: admin_uc.AdminError) -> ApiError:
    if isinstance(exc, admin_uc.NotFoundError):
        return not_found()
    return bad_request(str(exc))


@web.middleware
async def admin_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except admin_uc.AdminError as exc:
        raise admin_errors(exc) from exc


# --------------------------------------------------------------------------- users


def user_json(u: UserInfo) -> dict[str, Any]:
    return {
        "name": u.name,
        "password_hash": u.password_hash or "",
        "hashing_algorithm": definitions.HASHING,
        "tags": u.tags,
        "limits": u.limits,
    }


async def list_users(request: web.Request) -> web.Response:
    require_admin(request)
    items = [user_json(u) for u in await _admin(request).list_users()]
    return json_response(paginate(items, request.query, default_sort=("name",)))


async def users_without_permissions(request: web.Request) -> web.Response:
    require_admin(request)
    admin = _admin(request)
    having = {p.user for p in await admin.list_permissions(None)}
    items = [user_json(u) for u in await admin.list_users() if u.name not in having]
    return json_response(items)


async def show_user(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(user_json(await _admin(request).get_user(request.match_info["name"])))


def _tags(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(t) for t in value if str(t)]
    return [t for t in str(value or "").replace(",", " ").split() if t]


async def put_user(request: web.Request) -> web.Response:
    """``password`` or ``password_hash`` (empty: no password), and ``tags``."""
    require_admin(request)
    name = request.match_info["name"]
    body = await body_json(request)
    if "password" not in body and "password_hash" not in body:
        raise bad_request("Must provide password or password_hash")
    if "tags" not in body:
        raise bad_request("tags missing")
    admin = _admin(request)
    tags = _tags(body.get("tags"))
    try:
        await admin.add_user(name, None, tags)
        created = True
    except admin_uc.AlreadyExistsError:
        await admin.set_user_tags(name, tags)
        created = False
    if "password" in body:
        await admin.change_password(name, str(body["password"]))
    else:
        await definitions.set_password_hash(admin, name, str(body["password_hash"] or ""))
    return web.Response(status=201 if created else 204)


async def delete_user(request: web.Request) -> web.Response:
    require_admin(request)
    await _admin(request).delete_user(request.match_info["name"])
    return web.Response(status=204)


async def bulk_delete_users(request: web.Request) -> web.Response:
    require_admin(request)
    body = await body_json(request)
    admin = _admin(request)
    for name in body.get("users") or []:
        try:
            await admin.delete_user(str(name))
        except admin_uc.NotFoundError:
            pass
    return web.Response(status=204)


async def user_permissions(request: web.Request) -> web.Response:
    require_admin(request)
    items = await _admin(request).list_user_permissions(request.match_info["name"])
    return json_response([permission_json(p) for p in items])


# --------------------------------------------------------------------------- vhosts


def vhost_json(v: admin_uc.VhostInfo, node: str, stats: dict[str, Any]) -> dict[str, Any]:
    out = {
        "cluster_state": {node: "running"},
        "default_queue_type": "undefined",
        "description": v.description,
        "metadata": {"description": v.description, "tags": v.tags},
        "name": v.name,
        "tags": v.tags,
        "tracing": False,
    }
    out.update(stats)
    return out


async def _vhost_stats(request: web.Request) -> dict[str, dict[str, Any]]:
    """messages / messages_ready / messages_unacknowledged per vhost."""
    out: dict[str, dict[str, Any]] = {}
    for q in await monitoring.queue_depths(request.app[CTX].broker):
        s = out.setdefault(
            q.vhost, {"messages": 0, "messages_ready": 0, "messages_unacknowledged": 0}
        )
        s["messages"] += q.ready + q.unacked
        s["messages_ready"] += q.ready
        s["messages_unacknowledged"] += q.unacked
    for s in out.values():
        for key in ("messages", "messages_ready", "messages_unacknowledged"):
            s[f"{key}_details"] = {"rate": 0.0}
    return out


async def list_vhosts(request: web.Request) -> web.Response:
    allowed = await visible_vhosts(request)
    stats = await _vhost_stats(request)
    items = [
        vhost_json(v, _node(request), stats.get(v.name, {}))
        for v in await _admin(request).list_vhosts()
        if allowed is None or v.name in allowed
    ]
    return json_response(paginate(items, request.query, default_sort=("name",)))


async def show_vhost(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    allowed = await visible_vhosts(request)
    if allowed is not None and name not in allowed:
        raise not_found()
    stats = await _vhost_stats(request)
    for v in await _admin(request).list_vhosts():
        if v.name == name:
            return json_response(vhost_json(v, _node(request), stats.get(v.name, {})))
    raise not_found()


async def put_vhost(request: web.Request) -> web.Response:
    require_admin(request)
    body = await body_json(request)
    name = request.match_info["name"]
    admin = _admin(request)
    created = await admin.add_vhost(name, str(body.get("description", "")), _tags(body.get("tags")))
    if created:  # as RabbitMQ does, its creator may use it at once
        await admin.set_permissions(name, request[USER].name, ".*", ".*", ".*")
    return web.Response(status=201 if created else 204)


async def delete_vhost(request: web.Request) -> web.Response:
    require_admin(request)
    await _admin(request).delete_vhost(request.match_info["name"])
    return web.Response(status=204)


async def vhost_permissions(request: web.Request) -> web.Response:
    require_admin(request)
    items = await _admin(request).list_permissions(request.match_info["name"])
    return json_response([permission_json(p) for p in items])


# --------------------------------------------------------------------------- permissions


def permission_json(p: PermissionInfo) -> dict[str, Any]:
    return {
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    }


async def list_permissions(request: web.Request) -> web.Response:
    require_admin(request)
    items = [permission_json(p) for p in await _admin(request).list_permissions(None)]
    return json_response(items)


async def show_permission(request: web.Request) -> web.Response:
    require_admin(request)
    vhost, user = request.match_info["vhost"], request.match_info["user"]
    for p in await _admin(request).list_permissions(vhost):
        if p.user == user:
            return json_response(permission_json(p))
    raise not_found()


async def put_permission(request: web.Request) -> web.Response:
    require_admin(request)
    vhost, user = request.match_info["vhost"], request.match_info["user"]
    body = await body_json(request)
    for key in ("configure", "write", "read"):
        if key not in body:
            raise bad_request(f"{key} missing")
    admin = _admin(request)
    existed = any(p.user == user for p in await admin.list_permissions(vhost))
    await admin.set_permissions(
        vhost, user, str(body["configure"]), str(body["write"]), str(body["read"])
    )
    return web.Response(status=204 if existed else 201)


async def delete_permission(request: web.Request) -> web.Response:
    require_admin(request)
    vhost, user = request.match_info["vhost"], request.match_info["user"]
    admin = _admin(request)
    if not any(p.user == user for p in await admin.list_permissions(vhost)):
        raise not_found()
    await admin.clear_permissions(vhost, user)
    return web.Response(status=204)


# --------------------------------------------------------------------------- policies


def policy_json(p: PolicyInfo) -> dict[str, Any]:
    return {
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "definition": p.definition,
        "priority": p.priority,
    }


async def _policies(request: web.Request, vhost: str | None, operator: bool) -> list[Any]:
    if vhost is not None and not await monitoring.vhost_exists(request.app[CTX].broker, vhost):
        raise not_found()
    allowed = await visible_vhosts(request)
    return [
        policy_json(p)
        for p in await _admin(request).list_policies(vhost, operator=operator)
        if allowed is None or p.vhost in allowed
    ]


def _operator(request: web.Request) -> bool:
    return request.path.startswith("/api/operator-policies")


async def list_policies(request: web.Request) -> web.Response:
    require_policymaker(request)
    items = await _policies(request, request.match_info.get("vhost"), _operator(request))
    return json_response(paginate(items, request.query))


async def show_policy(request: web.Request) -> web.Response:
    require_policymaker(request)
    name = request.match_info["name"]
    for p in await _policies(request, request.match_info["vhost"], _operator(request)):
        if p["name"] == name:
            return json_response(p)
    raise not_found()


async def put_policy(request: web.Request) -> web.Response:
    require_policymaker(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    body = await body_json(request)
    if "pattern" not in body or "definition" not in body:
        raise bad_request("pattern and definition are required")
    if not isinstance(body["definition"], dict):
        raise bad_request("definition must be an object")
    operator = _operator(request)
    existing = await _policies(request, vhost, operator)
    try:
        priority = int(body.get("priority", 0))
    except (TypeError, ValueError):
        raise bad_request("priority must be an integer") from None
    await _admin(request).set_policy(
        vhost,
        name,
        str(body["pattern"]),
        body["definition"],
        priority,
        str(body.get("apply-to", "all")),
        operator=operator,
    )
    return web.Response(status=204 if any(p["name"] == name for p in existing) else 201)


async def delete_policy(request: web.Request) -> web.Response:
    require_policymaker(request)
    await _admin(request).clear_policy(
        request.match_info["vhost"], request.match_info["name"], operator=_operator(request)
    )
    return web.Response(status=204)


# --------------------------------------------------------------------------- limits


async def vhost_limits(request: web.Request) -> web.Response:
    vhost = request.match_info.get("vhost")
    if vhost is not None and not await monitoring.vhost_exists(request.app[CTX].broker, vhost):
        raise not_found()
    allowed = await visible_vhosts(request)
    items = [
        {"vhost": v.name, "value": v.limits}
        for v in await _admin(request).list_vhosts()
        if v.limits
        and (vhost is None or v.name == vhost)
        and (allowed is None or v.name in allowed)
    ]
    return json_response(items)


async def put_vhost_limit(request: web.Request) -> web.Response:
    require_admin(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    body = await body_json(request)
    if "value" not in body:
        raise bad_request("value missing")
    admin = _admin(request)
    limits = dict(await admin.list_vhost_limits(vhost))
    limits[name] = body["value"]
    await admin.set_vhost_limits(vhost, limits)
    return web.Response(status=204)


async def delete_vhost_limit(request: web.Request) -> web.Response:
    require_admin(request)
    await _admin(request).clear_vhost_limits(
        request.match_info["vhost"], request.match_info["name"]
    )
    return web.Response(status=204)


async def user_limits(request: web.Request) -> web.Response:
    user = request.match_info.get("user")
    me = request[USER]
    if not is_admin(me) and user != me.name:
        require_admin(request)
    items = [
        {"user": u.name, "value": u.limits}
        for u in await _admin(request).list_users()
        if u.limits and (user is None or u.name == user)
    ]
    return json_response(items)


async def put_user_limit(request: web.Request) -> web.Response:
    require_admin(request)
    user, name = request.match_info["user"], request.match_info["name"]
    body = await body_json(request)
    if "value" not in body:
        raise bad_request("value missing")
    admin = _admin(request)
    limits = dict(await admin.list_user_limits(user))
    limits[name] = body["value"]
    await admin.set_user_limits(user, limits)
    return web.Response(status=204)


async def delete_user_limit(request: web.Request) -> web.Response:
    require_admin(request)
    await _admin(request).clear_user_limits(request.match_info["user"], request.match_info["name"])
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    app.middlewares.append(admin_error_middleware)
    r = app.router
    r.add_get("/api/users", list_users)
    r.add_get("/api/users/without-permissions", users_without_permissions)
    r.add_post("/api/users/bulk-delete", bulk_delete_users)
    r.add_get("/api/users/{name}", show_user)
    r.add_put("/api/users/{name}", put_user)
    r.add_delete("/api/users/{name}", delete_user)
    r.add_get("/api/users/{name}/permissions", user_permissions)
    r.add_get("/api/vhosts", list_vhosts)
    r.add_get("/api/vhosts/{name}", show_vhost)
    r.add_put("/api/vhosts/{name}", put_vhost)
    r.add_delete("/api/vhosts/{name}", delete_vhost)
    r.add_get("/api/vhosts/{name}/permissions", vhost_permissions)
    r.add_get("/api/permissions", list_permissions)
    r.add_get("/api/permissions/{vhost}/{user}", show_permission)
    r.add_put("/api/permissions/{vhost}/{user}", put_permission)
    r.add_delete("/api/permissions/{vhost}/{user}", delete_permission)
    for base in ("/api/policies", "/api/operator-policies"):
        r.add_get(base, list_policies)
        r.add_get(base + "/{vhost}", list_policies)
        r.add_get(base + "/{vhost}/{name}", show_policy)
        r.add_put(base + "/{vhost}/{name}", put_policy)
        r.add_delete(base + "/{vhost}/{name}", delete_policy)
    r.add_get("/api/vhost-limits", vhost_limits)
    r.add_get("/api/vhost-limits/{vhost}", vhost_limits)
    r.add_put("/api/vhost-limits/{vhost}/{name}", put_vhost_limit)
    r.add_delete("/api/vhost-limits/{vhost}/{name}", delete_vhost_limit)
    r.add_get("/api/user-limits", user_limits)
    r.add_get("/api/user-limits/{user}", user_limits)
    r.add_put("/api/user-limits/{user}/{name}", put_user_limit)
    r.add_delete("/api/user-limits/{user}/{name}", delete_user_limit)
