"""Every name AMQP allows fits: names and routing keys as text, binding arguments hashed in
the edge index (a long argument table no longer exceeds the index row size).

Names holding NUL are stored escaped (see cavalcade/storage/textsafe.py), which can make them
longer than 255 characters; varchar to text needs no table rewrite.

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-02 08:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAMES = (
    ("exchanges", "name"),
    ("queues", "name"),
    ("bindings", "routing_key"),
    ("consumers", "tag"),
    ("messages", "exchange"),
    ("messages", "routing_key"),
)


def upgrade() -> None:
    for table, column in _NAMES:
        op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(255))
    op.drop_index("uq_bindings_edge", table_name="bindings")
    op.create_index(
        "uq_bindings_edge",
        "bindings",
        [
            "source_id",
            sa.text("coalesce(queue_id, 0)"),
            sa.text("coalesce(exchange_id, 0)"),
            "routing_key",
            sa.text("md5(arguments::text)"),
        ],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_bindings_edge", table_name="bindings")
    op.create_index(
        "uq_bindings_edge",
        "bindings",
        [
            "source_id",
            sa.text("coalesce(queue_id, 0)"),
            sa.text("coalesce(exchange_id, 0)"),
            "routing_key",
            "arguments",
        ],
        unique=True,
    )
    for table, column in _NAMES:
        op.alter_column(
            table,
            column,
            type_=sa.String(255),
            existing_type=sa.Text(),
            postgresql_using=f"left({column}, 255)",
        )
