"""Cross-node signals over LISTEN/NOTIFY: typed events, their one wire encoding, and the
listener that turns notifications back into events.

Only with ``--notify listen``: in poll mode nothing here runs and no ``pg_notify`` is
ever called. The wire strings are the ones every earlier release sends and reads (a
rolling upgrade runs both releases side by side, docs/upgrading.md), so they are fixed:

========================  =====================================================
``cavalcade_wake``        ``NODE:1,2,3`` (queues that gained ready messages),
                          ``NODE:*`` (too many to list), ``-:…`` (no node: the
                          expiry sweep, ``cavalcade_publish()`` in SQL),
                          ``reaper:*`` (nodes were reaped), ``NODE:-Q`` (queue
                          Q gained a consumer on NODE; releases before it read a
                          wake-up of a queue that does not exist, and do nothing)
``cavalcade_topology``    ``NODE:VHOST`` or ``NODE:VHOST:DELETED_QUEUE``, ``reaper``
``cavalcade_outbox``      empty (``cavalcade_publish()`` committed outbox rows)
========================  =====================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

WAKE_CHANNEL = "cavalcade_wake"
TOPOLOGY_CHANNEL = "cavalcade_topology"
OUTBOX_CHANNEL = "cavalcade_outbox"

MAX_LISTED = 7000  # NOTIFY payloads stop at 8000 bytes: longer lists become "*"
_REAPER = "reaper"
_NO_NODE = "-"


@dataclass(frozen=True, slots=True)
class QueuesWoken:
    """Queues gained ready messages (``queues`` None: any queue may have)."""

    node: uuid.UUID | None  # the sender; None: no node (the sweep, SQL functions)
    queues: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class ConsumerAdded:
    """A node registered a consumer of a queue (the others no longer consume it alone)."""

    node: uuid.UUID
    queue: int


@dataclass(frozen=True, slots=True)
class TopologyChanged:
    """A node changed a vhost's topology (``vhost_id`` None: any vhost), maybe by
    deleting a queue (whose consumers elsewhere are then cancelled)."""

    node: uuid.UUID
    vhost_id: int | None
    deleted_queue: int | None = None


@dataclass(frozen=True, slots=True)
class NodesReaped:
    """Dead nodes were reaped: their deliveries are ready again, queues may be gone."""


@dataclass(frozen=True, slots=True)
class OutboxFilled:
    """``cavalcade_publish()`` committed rows to the outbox (sent by SQL, never here)."""


Event = QueuesWoken | ConsumerAdded | TopologyChanged | NodesReaped | OutboxFilled
Notification = tuple[str, str]  # (channel, payload), what pg_notify takes


def encode(event: Event) -> list[Notification]:
    """The notifications that carry ``event`` (none for an empty wake-up)."""
    if isinstance(event, QueuesWoken):
        if event.queues is not None and not event.queues:
            return []
        sender = _NO_NODE if event.node is None else str(event.node)
        ids = "*" if event.queues is None else ",".join(str(q) for q in sorted(event.queues))
        payload = f"{sender}:{ids}"
        if len(payload) > MAX_LISTED:
            payload = f"{sender}:*"
        return [(WAKE_CHANNEL, payload)]
    if isinstance(event, ConsumerAdded):
        return [(WAKE_CHANNEL, f"{event.node}:-{event.queue}")]
    if isinstance(event, TopologyChanged):
        payload = str(event.node)
        if event.vhost_id is not None:
            payload += f":{event.vhost_id}"
            if event.deleted_queue is not None:
                payload += f":{event.deleted_queue}"
        return [(TOPOLOGY_CHANNEL, payload)]
    if isinstance(event, NodesReaped):
        return [(WAKE_CHANNEL, f"{_REAPER}:*"), (TOPOLOGY_CHANNEL, _REAPER)]
    return [(OUTBOX_CHANNEL, "")]


def parse(channel: str, payload: str) -> Event | None:
    """The event a notification carries; None for a payload no release sends."""
    try:
        if channel == WAKE_CHANNEL:
            return _parse_wake(payload)
        if channel == TOPOLOGY_CHANNEL:
            return _parse_topology(payload)
    except ValueError:
        return None
    return OutboxFilled() if channel == OUTBOX_CHANNEL else None


def _parse_wake(payload: str) -> Event | None:
    sender, _, ids = payload.partition(":")
    if not ids:
        return None
    if sender == _REAPER:
        return NodesReaped()
    node = None if sender == _NO_NODE else uuid.UUID(sender)
    if ids.startswith("-"):
        if node is None or not ids[1:].isdigit():
            return None
        return ConsumerAdded(node, int(ids[1:]))
    if ids == "*":
        return QueuesWoken(node, None)
    return QueuesWoken(node, frozenset(int(i) for i in ids.split(",")))


def _parse_topology(payload: str) -> Event:
    parts = payload.split(":")
    if parts[0] == _REAPER:
        return NodesReaped()
    vhost = int(parts[1]) if len(parts) > 1 else None
    deleted = int(parts[2]) if len(parts) > 2 else None
    return TopologyChanged(uuid.UUID(parts[0]), vhost, deleted)


class Executor(Protocol):
    """A pool or a connection (inside its transaction: the NOTIFY goes out at commit)."""

    async def execute(self, query: str, *args: Any) -> str: ...


async def send(db: Executor, event: Event) -> None:
    """NOTIFY ``event`` (the caller checks that the database has LISTEN/NOTIFY)."""
    for channel, payload in encode(event):
        await db.execute("SELECT pg_notify($1, $2)", channel, payload)


class NotifyTarget(Protocol):
    """What the listener tells about other nodes' events (the broker)."""

    def wake_queues(self, queue_ids: Iterable[int]) -> None: ...

    def wake_all(self) -> None: ...

    def topology_changed(self, vhost_id: int | None = None) -> None: ...

    def queue_deleted_elsewhere(self, queue_id: int) -> None: ...

    def consumed_elsewhere(self, queue_id: int) -> None: ...


CLOSE_TIMEOUT = 10.0  # seconds for closing the LISTEN connection


class Listener:
    """A dedicated connection for LISTEN: wake-ups and topology changes from other nodes,
    handed to ``target``; ``extra`` channels go to their callbacks as they come.

    If the database goes away, ``ensure`` reconnects it; meanwhile the dispatchers'
    poll timer keeps deliveries going."""

    def __init__(
        self,
        dsn: str,
        node_id: uuid.UUID,
        target: NotifyTarget,
        extra: dict[str, Callable[..., None]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.me = node_id
        self.target = target
        self.conn: asyncpg.Connection | None = None
        self.extra = extra or {}
        self._caught_up = False  # since the connection's LISTENs, all was assumed changed

    def listening(self) -> bool:
        """Is the LISTEN connection up, and was everything assumed changed since it began
        (so other nodes' commits are heard as they come, and none missed before counts)?"""
        return self._caught_up and self.conn is not None and not self.conn.is_closed()

    async def ensure(self) -> None:
        """Listen (again, if the connection was lost); then assume anything changed."""
        if self.conn is not None and not self.conn.is_closed():
            return
        self._caught_up = False
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.add_listener(WAKE_CHANNEL, self._on_notify)
        await self.conn.add_listener(TOPOLOGY_CHANNEL, self._on_notify)
        for channel, callback in self.extra.items():
            await self.conn.add_listener(channel, callback)
            callback()  # whatever was notified while we were not listening
        # Anything may have changed while we were not listening.
        self.target.topology_changed()
        self.target.wake_all()
        self._caught_up = True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), CLOSE_TIMEOUT)

    def handle(self, event: Event) -> None:
        """Act on another node's event (this node's own are skipped)."""
        t = self.target
        if isinstance(event, QueuesWoken) and event.node != self.me:
            if event.queues is None:
                t.wake_all()
            else:
                t.wake_queues(event.queues)
        elif isinstance(event, ConsumerAdded) and event.node != self.me:
            t.consumed_elsewhere(event.queue)
        elif isinstance(event, TopologyChanged) and event.node != self.me:
            t.topology_changed(event.vhost_id)
            if event.deleted_queue is not None:
                t.queue_deleted_elsewhere(event.deleted_queue)
        elif isinstance(event, NodesReaped):
            t.topology_changed()
            t.wake_all()

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        event = parse(channel, str(payload))
        if event is not None:
            self.handle(event)
