"""A topology version per vhost: nodes re-read their cached topology when it moves.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 05:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "vhosts",
        sa.Column("topology_version", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("vhosts", "topology_version")
