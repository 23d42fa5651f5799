"""Connections as the broker knows them: login, opening a vhost session, permission checks
and what a closing connection leaves behind (its exclusive queues)."""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Any

from cavalcade.domain.arguments import json_safe
from cavalcade.domain.passwords import check_password
from cavalcade.errors import ConnectionAccessRefused, NotAllowed
from cavalcade.storage.topology_log import TopologyChange

from . import permissions
from .limits import check_connection_limits
from .node import NodeState
from .topology import VhostTopology

_LOOPBACK_ONLY_USERS = frozenset({"guest"})


class Access(enum.IntEnum):
    """Which of a user's three grants an operation needs (RabbitMQ's order)."""

    CONFIGURE = permissions.CONFIGURE
    WRITE = permissions.WRITE
    READ = permissions.READ


@dataclass(slots=True)
class Session:
    """One client connection as the broker knows it."""

    id: int
    user: str
    user_id: int
    vhost: VhostTopology
    permissions: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]
    exclusive_queues: set[int] = field(default_factory=set)
    grants_at: float = field(default_factory=time.monotonic)
    vhost_name: str = ""
    max_channels: int | None = None  # the user's limit (refreshed by broker/control.py)
    channels_elsewhere: int = 0  # the user's channels on other nodes (likewise)


def permit(s: Session, access: Access, kind: str, name: str) -> None:
    """403 unless the session's grant for ``access`` allows ``kind`` ``name``."""
    permissions.check(s.permissions, int(access), kind, name, s.vhost.name, s.user)


class Sessions:
    """Login, vhost sessions and the grants they are checked against."""

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self._next_id = 0

    def next_id(self) -> int:
        """A node-local id for connections and channels."""
        self._next_id += 1
        return self._next_id

    async def authenticate(self, username: str, password: str, peer: str | None) -> tuple[int, str]:
        """Check credentials; RabbitMQ lets ``guest`` in from loopback only."""
        row = await self.node.repo.find_user(username)
        if (
            row is None
            or not row["password_hash"]
            or not check_password(password, row["password_hash"])
        ):
            raise ConnectionAccessRefused("login refused")
        _check_loopback(username, peer)
        return int(row["id"]), username

    async def authenticate_external(self, username: str, peer: str | None) -> tuple[int, str]:
        """SASL EXTERNAL: the user named by a verified client certificate must exist."""
        row = await self.node.repo.find_user(username)
        if row is None:
            raise ConnectionAccessRefused(f"user '{username}' does not exist")
        _check_loopback(username, peer)
        return int(row["id"]), username

    async def open(
        self,
        user_id: int,
        user: str,
        vhost_name: str,
        peer: str | None = None,
        client_properties: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Session:
        """Open a connection on a vhost (530 if unknown or not permitted); it is listed
        in the ``connections`` table while open."""
        repo = self.node.repo
        vhost_id = await repo.find_vhost(vhost_name)
        if vhost_id is None:
            raise NotAllowed(f"vhost {vhost_name} not found")
        max_channels = await check_connection_limits(
            self.node.admin_store, user, vhost_name, vhost_id
        )
        perm = await repo.find_permission(user_id, vhost_id)
        if perm is None:
            raise NotAllowed(f"access to vhost '{vhost_name}' refused for user '{user}'")
        vh = self.node.vhost(vhost_id, vhost_name)
        session = Session(self.next_id(), user, user_id, vh, permissions.compile_grants(perm))
        session.vhost_name, session.max_channels = vhost_name, max_channels
        await repo.add_connection(
            self.node.node_id,
            session.id,
            peer,
            user,
            vhost_id,
            json_safe(client_properties or {}),
            details,
        )
        return session

    def closing(self, session: Session) -> None:
        """The socket is gone; until :meth:`close` ends, its exclusive queues are in limbo."""
        self.node.closing.setdefault(session.id, asyncio.Event())

    async def close(self, session: Session) -> None:
        """The connection is gone: drop its exclusive queues and its listing."""
        node = self.node
        try:
            await node.repo.remove_connection(node.node_id, session.id)
            if session.exclusive_queues:
                await node.batcher.flush()
                dropped = await node.repo.delete_exclusive_queues(node.node_id, session.id)
                for _, qid, _ in dropped:
                    node.cancel_local_consumers(qid)
                if dropped:
                    await node.changed(
                        session.vhost, change=TopologyChange(queues={q for _, q, _ in dropped})
                    )
        finally:
            done = node.closing.pop(session.id, None)
            if done is not None:
                done.set()

    async def refresh_grants(self, s: Session) -> None:
        """Re-read the session's permissions when they are older than a second."""
        if permissions.stale(s.grants_at):
            row = await self.node.repo.find_permission(s.user_id, s.vhost.id)
            s.permissions, s.grants_at = permissions.compile_grants(row), time.monotonic()

    async def require(self, s: Session, access: Access, kind: str, name: str) -> None:
        """Fresh grants, then :func:`permit`."""
        await self.refresh_grants(s)
        permit(s, access, kind, name)


def _check_loopback(username: str, peer: str | None) -> None:
    if username in _LOOPBACK_ONLY_USERS and not _is_loopback(peer):
        raise ConnectionAccessRefused("guest may only log in from loopback")


def _is_loopback(peer: str | None) -> bool:
    if not peer:
        return True
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return peer in ("localhost",)
