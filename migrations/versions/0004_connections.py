"""Client connections per node, so operators see (with SQL) who is connected where.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 05:20:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("node_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("peer", sa.Text(), nullable=True),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("client_properties", sa.dialects.postgresql.JSONB(), nullable=True),
        sa.Column(
            "connected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_connections_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vhost_id"],
            ["vhosts.id"],
            name=op.f("fk_connections_vhost_id_vhosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_id", "id", name=op.f("pk_connections")),
    )


def downgrade() -> None:
    op.drop_table("connections")
