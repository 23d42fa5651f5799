"""The operator's use-cases: users, vhosts, permissions, policies, limits, and what the
cluster holds. ``cavalcade ctl`` and the management HTTP API both call these.

They work on the database alone (no node needs to run); running nodes apply every change
within about a second (see ``broker/control.py``). Errors are :class:`AdminError`
subclasses with a one-line message in RabbitMQ's words; everything returned is a plain
dataclass.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cavalcade.domain.limits import USER_LIMITS, VHOST_LIMITS, LimitError, validate_limits
from cavalcade.domain.passwords import check_password
from cavalcade.domain.policies import (
    Policy,
    PolicyError,
    apply_to_exchange,
    apply_to_queue,
    make_policy,
    validate_policy,
)
from cavalcade.storage.admin import AdminStore

TAGS = ("administrator", "monitoring", "policymaker", "management", "impersonator")


class AdminError(Exception):
    """A refused operator request (``ctl`` exits 65, the HTTP API answers 4xx)."""


class NotFoundError(AdminError):
    """No such user, vhost, queue, policy or connection."""


class AlreadyExistsError(AdminError):
    """The user (or vhost) exists already."""


class ValidationError(AdminError):
    """A bad argument: pattern, definition, limits, tags."""


class AuthenticationError(AdminError):
    """Wrong credentials (``authenticate_user``)."""


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class UserInfo:
    name: str
    tags: list[str]
    password_hash: str | None
    limits: dict[str, Any]


@dataclass(slots=True)
class VhostInfo:
    name: str
    description: str
    tags: list[str]
    limits: dict[str, Any]
    queues: int
    connections: int


@dataclass(slots=True)
class PermissionInfo:
    user: str
    vhost: str
    configure: str
    write: str
    read: str


@dataclass(slots=True)
class PolicyInfo:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    definition: dict[str, Any]
    priority: int
    operator: bool = False


@dataclass(slots=True)
class QueueInfo:
    vhost: str
    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    arguments: dict[str, Any]
    policy: str | None
    operator_policy: str | None
    effective_policy_definition: dict[str, Any]
    effective_arguments: dict[str, Any]
    messages: int
    messages_ready: int
    messages_unacknowledged: int
    message_bytes: int
    message_bytes_ready: int
    message_bytes_unacknowledged: int
    consumers: int
    type: str
    owner_node: str | None
    state: str = "running"


@dataclass(slots=True)
class ExchangeRecord:
    vhost: str
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any]
    policy: str | None


@dataclass(slots=True)
class BindingRecord:
    vhost: str
    source_name: str
    source_kind: str
    destination_name: str
    destination_kind: str
    routing_key: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class ConnectionInfo:
    pid: str  # "<NODE_ID.ID>": what close_connection takes (or the name)
    name: str  # RabbitMQ's "PEER:PORT -> HOST:PORT"
    node: str
    node_id: uuid.UUID
    id: int
    vhost: str
    user: str
    peer_host: str | None
    peer_port: int | None
    host: str | None
    port: int | None
    ssl: bool
    auth_mechanism: str | None
    channels: int
    frame_max: int | None
    channel_max: int | None
    timeout: int | None
    client_properties: dict[str, Any]
    user_provided_name: str | None
    connected_at: datetime
    protocol: str = "AMQP 0-9-1"
    state: str = "running"


@dataclass(slots=True)
class ConsumerInfo:
    vhost: str
    queue_name: str
    channel_pid: str
    consumer_tag: str
    ack_required: bool
    exclusive: bool
    priority: int
    active: bool = True
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class NodeInfo:
    id: uuid.UUID
    name: str
    started_at: datetime
    heartbeat_at: datetime
    seconds_since_heartbeat: float
    connections: int
    running: bool


@dataclass(slots=True)
class StatusInfo:
    database: str
    server_version: str
    schema_revision: str | None
    nodes: list[NodeInfo]
    totals: dict[str, int]


# --------------------------------------------------------------------------- helpers


def connection_pid(node_id: uuid.UUID, connection_id: int) -> str:
    return f"<{node_id}.{connection_id}>"


_PID = re.compile(r"^<?([0-9a-fA-F-]{36})\.(\d+)>?$")


def _tags(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text or "") if t]


def _check_regex(what: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValidationError(
            f"{what} {pattern!r} is not a valid regular expression: {exc}"
        ) from exc


def _policies(rows: Sequence[dict[str, Any]]) -> list[Policy]:
    return [
        make_policy(
            r["name"], r["pattern"], r["definition"], r["priority"], r["apply_to"], r["operator"]
        )
        for r in rows
    ]


NODE_DEAD_AFTER = 10.0  # seconds without a heartbeat (the default death threshold)


class Admin:
    """Operator use-cases over an :class:`AdminStore`."""

    def __init__(self, store: AdminStore) -> None:
        self.store = store

    @classmethod
    async def connect(cls, dsn: str, timeout: float = 10.0) -> Admin:
        """An Admin with a small pool of its own (for ``ctl``); close it after use."""
        return cls(await AdminStore.connect(dsn, timeout))

    async def close(self) -> None:
        await self.store.close()

    # -- lookups ------------------------------------------------------------------

    async def _user(self, name: str) -> dict[str, Any]:
        row = await self.store.user(name)
        if row is None:
            raise NotFoundError(f'User "{name}" does not exist')
        return row

    async def _vhost_id(self, name: str) -> int:
        vid = await self.store.vhost_id(name)
        if vid is None:
            raise NotFoundError(f"Virtual host '{name}' does not exist")
        return vid

    async def _optional_vhost(self, name: str | None) -> int | None:
        return None if name is None else await self._vhost_id(name)

    # -- users --------------------------------------------------------------------

    async def add_user(self, name: str, password: str | None, tags: Sequence[str] = ()) -> None:
        """A new user (``password`` None: no password, e.g. for EXTERNAL logins)."""
        if not name:
            raise ValidationError("user name must not be empty")
        if not await self.store.add_user(name, password, ",".join(tags)):
            raise AlreadyExistsError(f'User "{name}" already exists')

    async def delete_user(self, name: str) -> None:
        if not await self.store.delete_user(name):
            raise NotFoundError(f'User "{name}" does not exist')

    async def change_password(self, name: str, password: str) -> None:
        if not await self.store.set_password(name, password):
            raise NotFoundError(f'User "{name}" does not exist')

    async def clear_password(self, name: str) -> None:
        if not await self.store.set_password(name, None):
            raise NotFoundError(f'User "{name}" does not exist')

    async def authenticate_user(self, name: str, password: str) -> UserInfo:
        row = await self.store.user(name)
        if row is None or not check_password(password, row["password_hash"]):
            raise AuthenticationError(
                f"failed to authenticate user \"{name}\": user '{name}' - invalid credentials"
            )
        return _user_info(row)

    async def set_user_tags(self, name: str, tags: Sequence[str]) -> None:
        if not await self.store.set_user_tags(name, ",".join(tags)):
            raise NotFoundError(f'User "{name}" does not exist')

    async def get_user(self, name: str) -> UserInfo:
        return _user_info(await self._user(name))

    async def list_users(self) -> list[UserInfo]:
        return [_user_info(r) for r in await self.store.users()]

    # -- vhosts ---------------------------------------------------------------------

    async def add_vhost(self, name: str, description: str = "", tags: Sequence[str] = ()) -> bool:
        """Create a vhost with the default exchange and ``amq.*`` exchanges. Adding one
        that exists succeeds and changes nothing, as on RabbitMQ; returns True if created."""
        if not name:
            raise ValidationError("vhost name must not be empty")
        return await self.store.add_vhost(name, description, ",".join(tags))

    async def delete_vhost(self, name: str) -> None:
        """Delete a vhost and everything in it; its connections are closed (320)."""
        if not await self.store.delete_vhost(name, f"vhost '{name}' is deleted"):
            raise NotFoundError(f"Virtual host '{name}' does not exist")

    async def list_vhosts(self) -> list[VhostInfo]:
        return [
            VhostInfo(
                r["name"],
                r["description"],
                _tags(r["tags"]),
                r["limits"],
                int(r["queues"]),
                int(r["connections"]),
            )
            for r in await self.store.vhosts()
        ]

    # -- permissions -------------------------------------------------------------------

    async def set_permissions(
        self, vhost: str, user: str, configure: str, write: str, read: str
    ) -> None:
        for what, pattern in (("configure", configure), ("write", write), ("read", read)):
            _check_regex(what, pattern)
        u = await self._user(user)
        vid = await self._vhost_id(vhost)
        await self.store.set_permissions(vid, u["id"], configure, write, read)

    async def clear_permissions(self, vhost: str, user: str) -> None:
        u = await self._user(user)
        vid = await self._vhost_id(vhost)
        await self.store.clear_permissions(vid, u["id"])

    async def list_permissions(self, vhost: str | None = "/") -> list[PermissionInfo]:
        """Permissions in one vhost (None: all)."""
        vid = await self._optional_vhost(vhost)
        return [PermissionInfo(**r) for r in await self.store.permissions(vhost_id=vid)]

    async def list_user_permissions(self, user: str) -> list[PermissionInfo]:
        u = await self._user(user)
        return [PermissionInfo(**r) for r in await self.store.permissions(user_id=u["id"])]

    # -- policies -------------------------------------------------------------------------

    async def set_policy(
        self,
        vhost: str,
        name: str,
        pattern: str,
        definition: dict[str, Any],
        priority: int = 0,
        apply_to: str = "all",
        operator: bool = False,
    ) -> None:
        """Set (or replace) a policy; running nodes apply it to existing queues and
        exchanges without a redeclare. ``operator`` for an operator policy."""
        try:
            validate_policy(pattern, definition, apply_to, operator)
        except PolicyError as exc:
            raise ValidationError(f"Validation failed: {exc}") from exc
        vid = await self._vhost_id(vhost)
        await self.store.set_policy(vid, operator, name, pattern, apply_to, priority, definition)

    async def clear_policy(self, vhost: str, name: str, operator: bool = False) -> None:
        vid = await self._vhost_id(vhost)
        if not await self.store.clear_policy(vid, operator, name):
            kind = "operator policy" if operator else "policy"
            raise NotFoundError(f"{kind} '{name}' not found in vhost '{vhost}'")

    async def list_policies(
        self, vhost: str | None = "/", operator: bool = False
    ) -> list[PolicyInfo]:
        vid = await self._optional_vhost(vhost)
        return [
            PolicyInfo(
                r["vhost"],
                r["name"],
                r["pattern"],
                r["apply_to"],
                r["definition"],
                r["priority"],
                r["operator"],
            )
            for r in await self.store.policies(vid)
            if r["operator"] == operator
        ]

    # -- limits -----------------------------------------------------------------------------

    async def set_vhost_limits(self, vhost: str, limits: dict[str, Any]) -> None:
        """Replace a vhost's limits (``max-connections``, ``max-queues``; negative: none)."""
        try:
            checked = validate_limits(limits, VHOST_LIMITS)
        except LimitError as exc:
            raise ValidationError(f"Validation failed: {exc}") from exc
        if not await self.store.set_vhost_limits(vhost, checked):
            raise NotFoundError(f"Virtual host '{vhost}' does not exist")

    async def clear_vhost_limits(self, vhost: str, name: str = "all") -> None:
        current = (await self._vhost_info(vhost)).limits
        await self.store.set_vhost_limits(vhost, {} if name == "all" else _without(current, name))

    async def list_vhost_limits(self, vhost: str) -> dict[str, Any]:
        return (await self._vhost_info(vhost)).limits

    async def _vhost_info(self, vhost: str) -> VhostInfo:
        for v in await self.list_vhosts():
            if v.name == vhost:
                return v
        raise NotFoundError(f"Virtual host '{vhost}' does not exist")

    async def set_user_limits(self, user: str, limits: dict[str, Any]) -> None:
        """Replace a user's limits (``max-connections``, ``max-channels``; negative: none)."""
        try:
            checked = validate_limits(limits, USER_LIMITS)
        except LimitError as exc:
            raise ValidationError(f"Validation failed: {exc}") from exc
        if not await self.store.set_user_limits(user, checked):
            raise NotFoundError(f'User "{user}" does not exist')

    async def clear_user_limits(self, user: str, name: str = "all") -> None:
        current = (await self._user(user))["limits"]
        await self.store.set_user_limits(user, {} if name == "all" else _without(current, name))

    async def list_user_limits(self, user: str) -> dict[str, Any]:
        return dict((await self._user(user))["limits"])

    # -- what the cluster holds -----------------------------------------------------------------

    async def _policies_by_vhost(self, vhost_id: int | None) -> dict[int, list[Policy]]:
        out: dict[int, list[Policy]] = {}
        for r in await self.store.policies(vhost_id):
            out.setdefault(r["vhost_id"], []).extend(_policies([r]))
        return out

    async def list_queues(self, vhost: str | None = "/") -> list[QueueInfo]:
        """Queues of a vhost (None: all) with counts, consumers and the policy applied."""
        vid = await self._optional_vhost(vhost)
        policies = await self._policies_by_vhost(vid)
        out = []
        for r in await self.store.queues(vid):
            applied = apply_to_queue(r["name"], r["arguments"], policies.get(r["vhost_id"], []))
            ready, unacked = int(r["ready"]), int(r["unacked"])
            out.append(
                QueueInfo(
                    vhost=r["vhost"],
                    name=r["name"],
                    durable=r["durable"],
                    auto_delete=r["auto_delete"],
                    exclusive=r["exclusive"],
                    arguments=r["arguments"],
                    policy=applied.policy.name if applied.policy else None,
                    operator_policy=applied.operator_policy.name
                    if applied.operator_policy
                    else None,
                    effective_policy_definition=applied.definition,
                    effective_arguments=applied.arguments,
                    messages=ready + unacked,
                    messages_ready=ready,
                    messages_unacknowledged=unacked,
                    message_bytes=int(r["ready_bytes"]) + int(r["unacked_bytes"]),
                    message_bytes_ready=int(r["ready_bytes"]),
                    message_bytes_unacknowledged=int(r["unacked_bytes"]),
                    consumers=int(r["consumers"]),
                    type=str(r["arguments"].get("x-queue-type") or "classic"),
                    owner_node=r["owner_node"],
                )
            )
        return out

    async def list_exchanges(self, vhost: str | None = "/") -> list[ExchangeRecord]:
        vid = await self._optional_vhost(vhost)
        policies = await self._policies_by_vhost(vid)
        out = []
        for r in await self.store.exchanges(vid):
            applied = apply_to_exchange(r["name"], r["arguments"], policies.get(r["vhost_id"], []))
            out.append(
                ExchangeRecord(
                    r["vhost"],
                    r["name"],
                    r["type"],
                    r["durable"],
                    r["auto_delete"],
                    r["internal"],
                    r["arguments"],
                    applied.policy.name if applied.policy else None,
                )
            )
        return out

    async def list_bindings(self, vhost: str | None = "/") -> list[BindingRecord]:
        vid = await self._optional_vhost(vhost)
        return [BindingRecord(**r) for r in await self.store.bindings(vid)]

    async def list_connections(self, vhost: str | None = None) -> list[ConnectionInfo]:
        vid = await self._optional_vhost(vhost)
        out = []
        for r in await self.store.connections(vid):
            props = r["client_properties"] or {}
            name = r["name"] or f"{r['peer']}:{r['peer_port']} -> {r['host']}:{r['port']}"
            out.append(
                ConnectionInfo(
                    pid=connection_pid(r["node_id"], r["id"]),
                    name=name,
                    node=r["node"],
                    node_id=r["node_id"],
                    id=int(r["id"]),
                    vhost=r["vhost"],
                    user=r["user_name"],
                    peer_host=r["peer"],
                    peer_port=r["peer_port"],
                    host=r["host"],
                    port=r["port"],
                    ssl=bool(r["tls"]),
                    auth_mechanism=r["auth_mechanism"],
                    channels=int(r["channels"] or 0),
                    frame_max=r["frame_max"],
                    channel_max=r["channel_max"],
                    timeout=r["heartbeat"],
                    client_properties=props,
                    user_provided_name=props.get("connection_name")
                    if isinstance(props, dict)
                    else None,
                    connected_at=r["connected_at"],
                )
            )
        return out

    async def list_consumers(self, vhost: str | None = "/") -> list[ConsumerInfo]:
        vid = await self._optional_vhost(vhost)
        return [
            ConsumerInfo(
                vhost=r["vhost"],
                queue_name=r["queue_name"],
                channel_pid=f"<{r['node_id']}.{r['channel']}>",
                consumer_tag=r["tag"],
                ack_required=not r["no_ack"],
                exclusive=r["exclusive"],
                priority=int(r["priority"]),
            )
            for r in await self.store.consumers(vid)
        ]

    async def list_nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(
                id=r["id"],
                name=r["name"],
                started_at=r["started_at"],
                heartbeat_at=r["heartbeat_at"],
                seconds_since_heartbeat=float(r["silent_for"]),
                connections=int(r["connections"]),
                running=float(r["silent_for"]) < NODE_DEAD_AFTER,
            )
            for r in await self.store.nodes()
        ]

    async def status(self) -> StatusInfo:
        totals = await self.store.totals()
        return StatusInfo(
            database=str(totals.pop("database")),
            server_version=str(totals.pop("server_version")),
            schema_revision=totals.pop("revision"),
            nodes=await self.list_nodes(),
            totals={k: int(v) for k, v in totals.items()},
        )

    # -- acting on queues and connections ------------------------------------------------------

    async def purge_queue(self, vhost: str, name: str) -> int:
        """Remove a queue's ready messages; returns how many."""
        vid = await self._vhost_id(vhost)
        q = await self.store.find_queue(vid, name)
        if q is None:
            raise NotFoundError(f"no queue '{name}' in vhost '{vhost}'")
        return await self.store.purge_queue(q["id"])

    async def delete_queue(
        self, vhost: str, name: str, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue (its consumers are cancelled by their nodes); returns its
        message count."""
        vid = await self._vhost_id(vhost)
        q = await self.store.find_queue(vid, name)
        if q is None:
            raise NotFoundError(f"no queue '{name}' in vhost '{vhost}'")
        if if_unused and q["consumers"]:
            raise ValidationError(f"queue '{name}' in vhost '{vhost}' in use")
        if if_empty and q["messages"]:
            raise ValidationError(f"queue '{name}' in vhost '{vhost}' not empty")
        return await self.store.delete_queue(vid, q["id"])

    async def close_connection(self, connection: str, reason: str) -> None:
        """Ask the owning node to close a connection (``<NODE_ID.ID>`` as listed in ``pid``,
        or its name): it sends 320 CONNECTION_FORCED with ``reason`` within about a second."""
        m = _PID.match(connection.strip())
        if m is not None:
            found = await self.store.find_connection(uuid.UUID(m.group(1)), int(m.group(2)), None)
        else:
            found = await self.store.find_connection(None, None, connection)
        if found is None:
            raise NotFoundError(f"connection {connection} not found")
        await self.store.request_close(found[0], found[1], reason)


def _user_info(row: dict[str, Any]) -> UserInfo:
    return UserInfo(row["name"], _tags(row["tags"]), row["password_hash"], dict(row["limits"]))


def _without(limits: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in limits.items() if k != name}
