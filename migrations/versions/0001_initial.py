"""Initial schema and RabbitMQ's first-boot definitions.

Creates every table of the first data model, then what a fresh RabbitMQ holds: vhost
``/``, user ``guest``/``guest`` (tag ``administrator``, full permissions on ``/``) and the
default exchanges of ``/``. Also tunes autovacuum on ``messages``, a queue table whose
rows are deleted as fast as they are inserted.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 03:46:37.105470

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from cavalcade.domain.passwords import hash_password

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("tags", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "vhosts",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vhosts")),
        sa.UniqueConstraint("name", name=op.f("uq_vhosts_name")),
    )
    op.create_table(
        "exchanges",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("durable", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("auto_delete", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("internal", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "arguments",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["vhost_id"],
            ["vhosts.id"],
            name=op.f("fk_exchanges_vhost_id_vhosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exchanges")),
        sa.UniqueConstraint("vhost_id", "name", name=op.f("uq_exchanges_vhost_id")),
    )
    op.create_table(
        "permissions",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("configure", sa.Text(), server_default=".*", nullable=False),
        sa.Column("write", sa.Text(), server_default=".*", nullable=False),
        sa.Column("read", sa.Text(), server_default=".*", nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_permissions_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["vhost_id"],
            ["vhosts.id"],
            name=op.f("fk_permissions_vhost_id_vhosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "vhost_id", name=op.f("pk_permissions")),
    )
    op.create_table(
        "queues",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("durable", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("auto_delete", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("exclusive_node", sa.UUID(), nullable=True),
        sa.Column("exclusive_connection", sa.BigInteger(), nullable=True),
        sa.Column(
            "arguments",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("had_consumer", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "last_used_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["exclusive_node"],
            ["nodes.id"],
            name=op.f("fk_queues_exclusive_node_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vhost_id"], ["vhosts.id"], name=op.f("fk_queues_vhost_id_vhosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queues")),
        sa.UniqueConstraint("vhost_id", "name", name=op.f("uq_queues_vhost_id")),
    )
    op.create_index(op.f("ix_queues_exclusive_node"), "queues", ["exclusive_node"], unique=False)
    op.create_table(
        "bindings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("source_id", sa.BigInteger(), nullable=False),
        sa.Column("queue_id", sa.BigInteger(), nullable=True),
        sa.Column("exchange_id", sa.BigInteger(), nullable=True),
        sa.Column("routing_key", sa.String(length=255), server_default="", nullable=False),
        sa.Column(
            "arguments",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["exchange_id"],
            ["exchanges.id"],
            name=op.f("fk_bindings_exchange_id_exchanges"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["queues.id"],
            name=op.f("fk_bindings_queue_id_queues"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["exchanges.id"],
            name=op.f("fk_bindings_source_id_exchanges"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bindings")),
    )
    op.create_index(op.f("ix_bindings_exchange_id"), "bindings", ["exchange_id"], unique=False)
    op.create_index(op.f("ix_bindings_queue_id"), "bindings", ["queue_id"], unique=False)
    op.create_index(
        "uq_bindings_edge",
        "bindings",
        [
            "source_id",
            sa.literal_column("coalesce(queue_id, 0)"),
            sa.literal_column("coalesce(exchange_id, 0)"),
            "routing_key",
            "arguments",
        ],
        unique=True,
    )
    op.create_table(
        "consumers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("queue_id", sa.BigInteger(), nullable=False),
        sa.Column("node_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.BigInteger(), nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.Column("exclusive", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("no_ack", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_consumers_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["queues.id"],
            name=op.f("fk_consumers_queue_id_queues"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumers")),
    )
    op.create_index(op.f("ix_consumers_node_id"), "consumers", ["node_id"], unique=False)
    op.create_index(op.f("ix_consumers_queue_id"), "consumers", ["queue_id"], unique=False)
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("queue_id", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("owner_node", sa.UUID(), nullable=True),
        sa.Column("owner_channel", sa.BigInteger(), nullable=True),
        sa.Column("redelivered", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("delivery_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "published_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("persistent", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("exchange", sa.String(length=255), server_default="", nullable=False),
        sa.Column("routing_key", sa.String(length=255), server_default="", nullable=False),
        sa.Column("properties", sa.LargeBinary(), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("correlation_id", sa.String(length=255), nullable=True),
        sa.Column("expiration", sa.String(length=255), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["queues.id"],
            name=op.f("fk_messages_queue_id_queues"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index("ix_messages_owner", "messages", ["owner_node", "owner_channel"], unique=False)
    op.create_index(
        "ix_messages_ready",
        "messages",
        ["queue_id", sa.literal_column("priority DESC"), "id"],
        unique=False,
        postgresql_where=sa.text("owner_node IS NULL"),
    )
    _tune_autovacuum()
    _seed()


DEFAULT_EXCHANGES = [
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
]


def _seed() -> None:
    """RabbitMQ's first boot: vhost /, guest/guest with full permissions, default exchanges."""
    op.execute(sa.text("INSERT INTO vhosts (name) VALUES ('/')"))
    op.execute(
        sa.text(
            "INSERT INTO users (name, password_hash, tags) "
            "VALUES ('guest', :password_hash, 'administrator')"
        ).bindparams(password_hash=hash_password("guest"))
    )
    op.execute(
        sa.text(
            "INSERT INTO permissions (user_id, vhost_id, configure, write, read) "
            "SELECT u.id, v.id, '.*', '.*', '.*' FROM users u, vhosts v "
            "WHERE u.name = 'guest' AND v.name = '/'"
        )
    )
    for name, kind in DEFAULT_EXCHANGES:
        op.execute(
            sa.text(
                "INSERT INTO exchanges (vhost_id, name, type, durable, auto_delete, internal) "
                "SELECT v.id, :name, :kind, true, false, false FROM vhosts v WHERE v.name = '/'"
            ).bindparams(name=name, kind=kind)
        )


def _tune_autovacuum() -> None:
    """Vacuum ``messages`` early: it is a queue table (rows die as fast as they are born).

    Storage parameters are PostgreSQL's own; skipped on CockroachDB, which rejects them."""
    if not context.is_offline_mode():
        version = op.get_bind().execute(sa.text("SELECT version()")).scalar_one()
        if "CockroachDB" in str(version):
            return
    op.execute(
        "ALTER TABLE messages SET ("
        "autovacuum_vacuum_scale_factor = 0.01, "
        "autovacuum_vacuum_insert_scale_factor = 0.01, "
        "autovacuum_analyze_scale_factor = 0.02, "
        "autovacuum_vacuum_cost_delay = 0)"
    )


def downgrade() -> None:
    op.drop_index(
        "ix_messages_ready", table_name="messages", postgresql_where=sa.text("owner_node IS NULL")
    )
    op.drop_index("ix_messages_owner", table_name="messages")
    op.drop_table("messages")
    op.drop_index(op.f("ix_consumers_queue_id"), table_name="consumers")
    op.drop_index(op.f("ix_consumers_node_id"), table_name="consumers")
    op.drop_table("consumers")
    op.drop_index("uq_bindings_edge", table_name="bindings")
    op.drop_index(op.f("ix_bindings_queue_id"), table_name="bindings")
    op.drop_index(op.f("ix_bindings_exchange_id"), table_name="bindings")
    op.drop_table("bindings")
    op.drop_index(op.f("ix_queues_exclusive_node"), table_name="queues")
    op.drop_table("queues")
    op.drop_table("permissions")
    op.drop_table("exchanges")
    op.drop_table("vhosts")
    op.drop_table("users")
    op.drop_table("nodes")
