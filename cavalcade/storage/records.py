"""Plain records passed between the storage and broker layers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class QueueRow:
    """A queue as stored."""

    id: int
    name: str
    durable: bool
    auto_delete: bool
    exclusive_node: uuid.UUID | None
    exclusive_connection: int | None
    arguments: dict[str, Any]
    # As declared, where ``arguments`` holds them with policies applied (the topology
    # cache's rows); None: the same. A redeclare is compared with these, as RabbitMQ does.
    declared: dict[str, Any] | None = None


@dataclass(slots=True)
class ClaimedMessage:
    """A message claimed for delivery (or fetched by basic.get)."""

    id: int
    queue_id: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: bytes
    body: bytes
    priority: int = 0
    delivery_count: int = 1


@dataclass(slots=True)
class NewMessage:
    """One row to insert: a routed publish into one queue."""

    queue_id: int
    priority: int
    persistent: bool
    exchange: str
    routing_key: str
    properties: bytes
    content_type: str | None
    message_id: str | None
    correlation_id: str | None
    expiration: str | None
    body: bytes
    ttl_ms: int | None = None
    delay_ms: int | None = None


@dataclass(slots=True)
class DeadRow:
    """A message taken out of its queue to be dead-lettered (or dropped)."""

    id: int
    queue_id: int
    exchange: str
    routing_key: str
    properties: bytes
    body: bytes
    priority: int
    persistent: bool
