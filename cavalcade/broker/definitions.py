"""Definitions export and import in RabbitMQ's own ``definitions.json`` format, so a file
exported from RabbitMQ imports here (that is how users move over) and back.

Used by ``GET/POST /api/definitions`` and ``cavalcade ctl export_definitions`` /
``import_definitions``; they work on the database alone, like the other admin use-cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cavalcade import __version__
from cavalcade.domain.arguments import check_exchange_type, json_safe, validate_queue_arguments
from cavalcade.errors import AMQPError
from cavalcade.storage import definitions as sql

from .admin import Admin, AdminError, NotFoundError, ValidationError

HASHING = "rabbit_password_hashing_sha256"  # what domain/passwords.py computes
API_LEVEL = "3.10.8"


@dataclass
class ImportSummary:
    """What an import created (entities that existed are left as they are)."""

    created: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def add(self, kind: str) -> None:
        self.created[kind] = self.created.get(kind, 0) + 1


async def export_definitions(admin: Admin, cluster_name: str | None = None) -> dict[str, Any]:
    """Users, vhosts, permissions, policies, limits, queues, exchanges and bindings."""
    users = [
        {
            "name": u.name,
            "password_hash": u.password_hash or "",
            "hashing_algorithm": HASHING,
            "tags": u.tags,
            "limits": u.limits,
        }
        for u in await admin.list_users()
    ]
    vhosts = []
    parameters = []
    for v in await admin.list_vhosts():
        entry: dict[str, Any] = {"name": v.name}
        if v.description or v.tags:
            entry["description"] = v.description
            entry["tags"] = v.tags
            entry["metadata"] = {"description": v.description, "tags": v.tags}
        vhosts.append(entry)
        if v.limits:
            parameters.append(
                {"value": v.limits, "vhost": v.name, "component": "vhost-limits", "name": "limits"}
            )
    permissions = [
        {
            "user": p.user,
            "vhost": p.vhost,
            "configure": p.configure,
            "write": p.write,
            "read": p.read,
        }
        for p in await admin.list_permissions(None)
    ]
    policies = [
        {
            "vhost": p.vhost,
            "name": p.name,
            "pattern": p.pattern,
            "apply-to": p.apply_to,
            "definition": p.definition,
            "priority": p.priority,
        }
        for p in await admin.list_policies(None)
    ]
    for p in await admin.list_policies(None, operator=True):
        parameters.append(
            {
                "value": {
                    "pattern": p.pattern,
                    "definition": p.definition,
                    "priority": p.priority,
                    "apply-to": p.apply_to,
                },
                "vhost": p.vhost,
                "component": "operator_policy",
                "name": p.name,
            }
        )
    topology = await sql.durable_topology(admin.store.pool)
    return {
        "rabbit_version": API_LEVEL,
        "rabbitmq_version": API_LEVEL,
        "product_name": "Cavalcade",
        "product_version": __version__,
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": parameters,
        "global_parameters": [{"name": "cluster_name", "value": cluster_name}]
        if cluster_name
        else [],
        "policies": policies,
        "queues": topology["queues"],
        "exchanges": topology["exchanges"],
        "bindings": topology["bindings"],
    }


def _list(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValidationError(f"definitions: '{key}' must be a list of objects")
    return value


def _name(kind: str, value: Any) -> str:
    """An entity name PostgreSQL can store (no NUL) within AMQP's 255 bytes."""
    name = str(value if value is not None else "")
    if "\x00" in name or len(name.encode()) > 255:
        raise ValidationError(f"{kind} name {name!r} cannot be stored (NUL or over 255 bytes)")
    return name


def _validate(doc: dict[str, Any]) -> None:
    """Refuse a bad file before anything is written."""
    for u in _list(doc, "users"):
        _name("user", u.get("name"))
    for e in _list(doc, "exchanges"):
        name = _name("exchange", e.get("name"))
        try:
            check_exchange_type(str(e.get("type", "direct")), json_safe(e.get("arguments") or {}))
        except AMQPError as exc:
            raise ValidationError(f"exchange '{name}': {exc}") from exc
    for q in _list(doc, "queues"):
        name = _name("queue", q.get("name"))
        try:
            validate_queue_arguments(json_safe(q.get("arguments") or {}))
        except AMQPError as exc:
            raise ValidationError(f"queue '{name}': {exc}") from exc
    for b in _list(doc, "bindings"):
        _name("exchange", b.get("source"))
        _name("destination", b.get("destination"))
        if b.get("destination_type", "queue") not in ("queue", "exchange"):
            raise ValidationError(f"binding destination_type {b.get('destination_type')!r}")


def _tags(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(t) for t in value if str(t)]
    return [t for t in str(value or "").replace(",", " ").split() if t]


async def import_definitions(
    admin: Admin, doc: dict[str, Any], vhost: str | None = None
) -> ImportSummary:
    """Create what ``doc`` defines (RabbitMQ's format). With ``vhost``, the file is one
    vhost's export and everything goes into that vhost. Existing entities are kept; a
    bad entry fails the import with ValidationError before anything after it is done."""
    if not isinstance(doc, dict):
        raise ValidationError("definitions must be a JSON object")
    _validate(doc)
    summary = ImportSummary()
    await _import_users(admin, _list(doc, "users"), summary)
    vhost_entries: list[dict[str, Any]] = [{"name": vhost}] if vhost else _list(doc, "vhosts")
    await _import_vhosts(admin, vhost_entries, summary)
    for step, section in (
        (_import_permissions, "permissions"),
        (_import_policies, "policies"),
        (_import_parameters, "parameters"),
        (_import_exchanges, "exchanges"),
        (_import_queues, "queues"),
        (_import_bindings, "bindings"),
    ):
        for entry in _list(doc, section):
            await step(admin, entry, vhost or str(entry.get("vhost", "/")), summary)
    return summary


async def _import_users(admin: Admin, users: list[dict[str, Any]], summary: ImportSummary) -> None:
    for u in users:
        name = _name("user", u.get("name"))
        algorithm = u.get("hashing_algorithm", HASHING)
        if algorithm != HASHING and u.get("password_hash"):
            raise ValidationError(f"user '{name}': unsupported hashing_algorithm {algorithm}")
        try:
            await admin.add_user(name, None, _tags(u.get("tags")))
            summary.add("users")
        except AdminError:
            await admin.set_user_tags(name, _tags(u.get("tags")))
        if "password" in u:
            await admin.change_password(name, str(u["password"]))
        else:
            await sql.set_password_hash(admin.store.pool, name, u.get("password_hash") or None)
        if u.get("limits"):
            await admin.set_user_limits(name, dict(u["limits"]))


async def _import_vhosts(
    admin: Admin, vhosts: list[dict[str, Any]], summary: ImportSummary
) -> None:
    for v in vhosts:
        meta = v.get("metadata") or {}
        if not isinstance(meta, dict):
            meta = {}
        created = await admin.add_vhost(
            str(v["name"]),
            str(v.get("description", meta.get("description", "")) or ""),
            _tags(v.get("tags", meta.get("tags", []))),
        )
        if created:
            summary.add("vhosts")


async def _import_permissions(
    admin: Admin, p: dict[str, Any], vhost: str, summary: ImportSummary
) -> None:
    await admin.set_permissions(
        vhost, str(p["user"]), str(p["configure"]), str(p["write"]), str(p["read"])
    )
    summary.add("permissions")


async def _import_policies(
    admin: Admin, p: dict[str, Any], vhost: str, summary: ImportSummary
) -> None:
    await admin.set_policy(
        vhost,
        str(p["name"]),
        str(p["pattern"]),
        dict(p.get("definition") or {}),
        int(p.get("priority", 0)),
        str(p.get("apply-to", "all")),
    )
    summary.add("policies")


async def _import_parameters(
    admin: Admin, p: dict[str, Any], vhost: str, summary: ImportSummary
) -> None:
    component = p.get("component")
    value = p.get("value") or {}
    if component == "vhost-limits":
        await admin.set_vhost_limits(vhost, dict(value))
        summary.add("vhost_limits")
    elif component == "operator_policy":
        await admin.set_policy(
            vhost,
            str(p["name"]),
            str(value["pattern"]),
            dict(value.get("definition") or {}),
            int(value.get("priority", 0)),
            str(value.get("apply-to", "queues")),
            operator=True,
        )
        summary.add("operator_policies")
    else:
        summary.skipped.append(f"parameter {component}/{p.get('name')}")


async def _import_exchanges(
    admin: Admin, e: dict[str, Any], vhost: str, summary: ImportSummary
) -> None:
    name = _name("exchange", e.get("name"))
    if not name or name.startswith("amq."):
        return
    args = json_safe(e.get("arguments") or {})
    try:
        check_exchange_type(str(e.get("type", "direct")), args)
    except AMQPError as exc:
        raise ValidationError(f"exchange '{name}': {exc}") from exc
    vid = await admin._vhost_id(vhost)
    if await sql.add_exchange(
        admin.store.pool,
        vid,
        name,
        str(e.get("type", "direct")),
        bool(e.get("durable", True)),
        bool(e.get("auto_delete", False)),
        bool(e.get("internal", False)),
        args,
    ):
        summary.add("exchanges")


async def _import_queues(
    admin: Admin, q: dict[str, Any], vhost: str, summary: ImportSummary
) -> None:
    name = _name("queue", q.get("name"))
    args = json_safe(q.get("arguments") or {})
    try:
        validate_queue_arguments(args)
    except AMQPError as exc:
        raise ValidationError(f"queue '{name}': {exc}") from exc
    vid = await admin._vhost_id(vhost)
    if await sql.add_queue(
        admin.store.pool,
        vid,
        name,
        bool(q.get("durable", True)),
        bool(q.get("auto_delete", False)),
        args,
    ):
        summary.add("queues")


async def _import_bindings(
    admin: Admin, b: dict[str, Any], vhost: str, summary: ImportSummary
) -> None:
    vid = await admin._vhost_id(vhost)
    try:
        made = await sql.add_binding(
            admin.store.pool,
            vid,
            str(b["source"]),
            str(b["destination"]),
            str(b.get("destination_type", "queue")),
            str(b.get("routing_key", "")),
            json_safe(b.get("arguments") or {}),
        )
    except LookupError as exc:
        raise ValidationError(
            f"binding {b.get('source')} -> {b.get('destination')}: {exc}"
        ) from exc
    if made:
        summary.add("bindings")


async def set_password_hash(admin: Admin, name: str, password_hash: str) -> None:
    """Store a RabbitMQ-format hash as given (``""``: no password, no password login)."""
    if not await sql.set_password_hash(admin.store.pool, name, password_hash or None):
        raise NotFoundError(f'User "{name}" does not exist')
