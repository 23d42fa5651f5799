"""Operations: policies, vhost and user limits, vhost metadata, connection details and
operator requests to close connections.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:50:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.add_column("vhosts", sa.Column("description", sa.Text(), server_default="", nullable=False))
    op.add_column("vhosts", sa.Column("tags", sa.Text(), server_default="", nullable=False))
    op.add_column(
        "vhosts", sa.Column("limits", postgresql.JSONB(), server_default=_EMPTY, nullable=False)
    )
    op.add_column(
        "users", sa.Column("limits", postgresql.JSONB(), server_default=_EMPTY, nullable=False)
    )
    for name, kind in (
        ("name", sa.Text()),
        ("peer_port", sa.Integer()),
        ("host", sa.Text()),
        ("port", sa.Integer()),
        ("auth_mechanism", sa.Text()),
        ("frame_max", sa.Integer()),
        ("channel_max", sa.Integer()),
        ("heartbeat", sa.Integer()),
    ):
        op.add_column("connections", sa.Column(name, kind, nullable=True))
    op.add_column(
        "connections",
        sa.Column("tls", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "connections", sa.Column("channels", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("operator", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("apply_to", sa.String(length=16), server_default="all", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("definition", postgresql.JSONB(), server_default=_EMPTY, nullable=False),
        sa.ForeignKeyConstraint(
            ["vhost_id"],
            ["vhosts.id"],
            name=op.f("fk_policies_vhost_id_vhosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("vhost_id", "operator", "name", name=op.f("uq_policies_vhost_id")),
    )
    op.create_table(
        "connection_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("node_id", sa.UUID(), nullable=False),
        sa.Column("connection_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_connection_requests_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connection_requests")),
    )
    op.create_index(
        op.f("ix_connection_requests_node_id"), "connection_requests", ["node_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_connection_requests_node_id"), table_name="connection_requests")
    op.drop_table("connection_requests")
    op.drop_table("policies")
    for name in (
        "channels",
        "tls",
        "heartbeat",
        "channel_max",
        "frame_max",
        "auth_mechanism",
        "port",
        "host",
        "peer_port",
        "name",
    ):
        op.drop_column("connections", name)
    op.drop_column("users", "limits")
    op.drop_column("vhosts", "limits")
    op.drop_column("vhosts", "tags")
    op.drop_column("vhosts", "description")
