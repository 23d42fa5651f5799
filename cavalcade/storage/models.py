"""SQLAlchemy declarative models. The schema itself comes only from Alembic migrations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class Vhost(Base):
    __tablename__ = "vhosts"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Bumped by every change of exchanges, queues or bindings: a node whose cached copy
    # is older re-reads it before routing its next batch of publishes.
    topology_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    description: Mapped[str] = mapped_column(Text, server_default="")
    tags: Mapped[str] = mapped_column(Text, server_default="")
    # ``{"max-connections": N, "max-queues": N}`` as ``set_vhost_limits`` stores them.
    limits: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class TopologyEvent(Base):
    """What one topology version changed: nodes re-read just these (migration 0010)."""

    __tablename__ = "topology_events"

    vhost_id: Mapped[int] = mapped_column(
        ForeignKey("vhosts.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    queue_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'"))
    exchange_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'"))
    # Binding edges touched, flattened: (source, queue or 0, exchange or 0) per edge.
    edges: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'"))


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[str] = mapped_column(Text, server_default="")
    # ``{"max-connections": N, "max-channels": N}`` as ``set_user_limits`` stores them.
    limits: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class Permission(Base):
    __tablename__ = "permissions"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    vhost_id: Mapped[int] = mapped_column(
        ForeignKey("vhosts.id", ondelete="CASCADE"), primary_key=True
    )
    configure: Mapped[str] = mapped_column(Text, server_default=".*")
    write: Mapped[str] = mapped_column(Text, server_default=".*")
    read: Mapped[str] = mapped_column(Text, server_default=".*")


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # Maintenance mode (0007): the node accepts no clients and holds nothing.
    draining: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class Connection(Base):
    """A client connection, while it is open (gone with its node)."""

    __tablename__ = "connections"

    node_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    peer: Mapped[str | None] = mapped_column(Text)
    user_name: Mapped[str] = mapped_column(String(255))
    vhost_id: Mapped[int] = mapped_column(ForeignKey("vhosts.id", ondelete="CASCADE"))
    client_properties: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    connected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # RabbitMQ's connection name, "PEER:PORT -> HOST:PORT" (migration 0005 on).
    name: Mapped[str | None] = mapped_column(Text)
    peer_port: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(Text)
    port: Mapped[int | None] = mapped_column(Integer)
    auth_mechanism: Mapped[str | None] = mapped_column(Text)
    frame_max: Mapped[int | None] = mapped_column(Integer)
    channel_max: Mapped[int | None] = mapped_column(Integer)
    heartbeat: Mapped[int | None] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Open channels, refreshed by the node about once a second.
    channels: Mapped[int] = mapped_column(Integer, server_default="0")


class Policy(Base):
    """A policy (or, with ``operator``, an operator policy) of a vhost."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("vhost_id", "operator", "name"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    vhost_id: Mapped[int] = mapped_column(ForeignKey("vhosts.id", ondelete="CASCADE"))
    operator: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    name: Mapped[str] = mapped_column(String(255))
    pattern: Mapped[str] = mapped_column(Text)
    apply_to: Mapped[str] = mapped_column(String(16), server_default="all")
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class ConnectionRequest(Base):
    """An operator's request (``close_connection``) for the node that owns a connection."""

    __tablename__ = "connection_requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    node_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("nodes.id", ondelete="CASCADE"), index=True
    )
    connection_id: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, server_default="")
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class NodeStats(Base):
    """The counters, rates, connections and channels a node last published (0006)."""

    __tablename__ = "node_stats"

    node_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stats: Mapped[dict[str, Any]] = mapped_column(JSONB)


class Exchange(Base):
    __tablename__ = "exchanges"
    __table_args__ = (UniqueConstraint("vhost_id", "name"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    vhost_id: Mapped[int] = mapped_column(ForeignKey("vhosts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)  # 0008: escaped NULs may pass 255 characters
    type: Mapped[str] = mapped_column(String(255))
    durable: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    auto_delete: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    internal: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))


class Queue(Base):
    __tablename__ = "queues"
    __table_args__ = (UniqueConstraint("vhost_id", "name"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    vhost_id: Mapped[int] = mapped_column(ForeignKey("vhosts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    durable: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    auto_delete: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    exclusive_node: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("nodes.id", ondelete="CASCADE"), index=True
    )
    exclusive_connection: Mapped[int | None] = mapped_column(BigInteger)
    arguments: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    had_consumer: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    last_used_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Binding(Base):
    __tablename__ = "bindings"
    __table_args__ = (
        Index(
            "uq_bindings_edge",
            "source_id",
            text("coalesce(queue_id, 0)"),
            text("coalesce(exchange_id, 0)"),
            "routing_key",
            text("md5(arguments::text)"),  # a hash: argument tables may be long
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id", ondelete="CASCADE"))
    queue_id: Mapped[int | None] = mapped_column(
        ForeignKey("queues.id", ondelete="CASCADE"), index=True
    )
    exchange_id: Mapped[int | None] = mapped_column(
        ForeignKey("exchanges.id", ondelete="CASCADE"), index=True
    )
    routing_key: Mapped[str] = mapped_column(Text, server_default="")
    arguments: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))


class Consumer(Base):
    __tablename__ = "consumers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("nodes.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[int] = mapped_column(BigInteger)
    tag: Mapped[str] = mapped_column(Text)
    exclusive: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    no_ack: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    priority: Mapped[int] = mapped_column(Integer, server_default="0")


class Message(Base):
    """One row per (queue, message). ``owner_node`` NULL means ready, else unacked."""

    __tablename__ = "messages"
    __table_args__ = (
        Index(
            "ix_messages_ready",
            "queue_id",
            text("priority DESC"),
            "id",
            postgresql_where=text("owner_node IS NULL"),
        ),
        Index(
            "ix_messages_owner",
            "owner_node",
            "owner_channel",
            postgresql_where=text("owner_node IS NOT NULL"),
        ),
        Index(
            "ix_messages_expires",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
        ),
        Index(
            "ix_messages_delayed",
            "queue_id",
            "available_at",
            postgresql_where=text("available_at IS NOT NULL AND owner_node IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # No foreign key (migration 0014): inserts lock their queues once per statement, and
    # the ``queues_deleted`` trigger deletes the messages of a deleted queue.
    queue_id: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    owner_node: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    owner_channel: Mapped[int | None] = mapped_column(BigInteger)
    redelivered: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    delivery_count: Mapped[int] = mapped_column(Integer, server_default="0")
    published_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    persistent: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    exchange: Mapped[str] = mapped_column(Text, server_default="")
    routing_key: Mapped[str] = mapped_column(Text, server_default="")
    properties: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(255))
    correlation_id: Mapped[str | None] = mapped_column(String(255))
    expiration: Mapped[str | None] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)


class Outbox(Base):
    """Publishes made by ``cavalcade_publish()`` in committed transactions, not yet routed."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    vhost_id: Mapped[int] = mapped_column(ForeignKey("vhosts.id", ondelete="CASCADE"))
    exchange: Mapped[str] = mapped_column(String(255))
    routing_key: Mapped[str] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxDead(Base):
    """Outbox rows a node could not turn into a message (bad properties), with the reason."""

    __tablename__ = "outbox_dead"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    vhost_id: Mapped[int | None] = mapped_column(Integer)
    exchange: Mapped[str] = mapped_column(String(255))
    routing_key: Mapped[str] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    error: Mapped[str] = mapped_column(Text)


class OutboxDrain(Base):
    """One row; the node that holds its row lock drains the outbox (keeps the order)."""

    __tablename__ = "outbox_drain"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)


class SchemaCompat(Base):
    """Per revision (0007 on): the oldest code revision that can run on it (rolling upgrades)."""

    __tablename__ = "schema_compat"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)
    down_revision: Mapped[str | None] = mapped_column(String(32))
    oldest_node: Mapped[str] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(16))
