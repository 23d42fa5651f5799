"""Topology events: what each topology version changed, so nodes catch up incrementally.

Every committed declare, delete, bind or unbind bumps its vhost's ``topology_version``;
the bump now also writes one ``topology_events`` row naming the queues, exchanges and
binding edges (source, destination queue, destination exchange) it touched. A node
whose cached copy is at version v re-reads only those entities for versions after v,
instead of the whole vhost. A version with no row (a bump by an older node, the
reaper) makes it reload everything, as before. Old rows are pruned by the bumps.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-02 08:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from cavalcade.storage import window

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (cavalcade/storage/window.py): nodes of the previous release bump
# versions without an event row, which makes the others reload the vhost, as before.
oldest_node: str = "0008"
phase: str = "expand"


def _record_window(add: bool) -> None:
    """Keep ``schema_compat`` (revision 0007's table of rolling-upgrade windows) in step."""
    window.record_step(op, globals(), add)


def upgrade() -> None:
    op.create_table(
        "topology_events",
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "queue_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "exchange_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "edges",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["vhost_id"],
            ["vhosts.id"],
            name=op.f("fk_topology_events_vhost_id_vhosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("vhost_id", "version", name=op.f("pk_topology_events")),
    )
    _record_window(True)


def downgrade() -> None:
    _record_window(False)
    op.drop_table("topology_events")
