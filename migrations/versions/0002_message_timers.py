"""Indexes for message timers: TTL expiry sweeps and delayed delivery.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:10:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_expires",
        "messages",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_messages_delayed",
        "messages",
        ["queue_id", "available_at"],
        unique=False,
        postgresql_where=sa.text("available_at IS NOT NULL AND owner_node IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_delayed", table_name="messages")
    op.drop_index("ix_messages_expires", table_name="messages")
