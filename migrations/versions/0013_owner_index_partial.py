"""``ix_messages_owner`` holds only owned rows (issue 13: write cost per message).

The index served what a node holds (``owner_node = $1``: reconcile, unregister, reap),
but it also held one entry for every ready row (``owner_node`` NULL), which no query
reads: every publish wrote it, and every claim wrote a second one. As a partial index
(``WHERE owner_node IS NOT NULL``, which ``owner_node = $1`` implies, so the same plans
use it) a publish writes two index entries instead of three. The new index is built
beside the old one (reads go on; writes wait for the build), then swapped in.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 08:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cavalcade.storage import window

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (cavalcade/storage/window.py): nodes of the previous release only
# look rows up by their owner, which the partial index still serves.
oldest_node: str = "0012"
phase: str = "expand"


def _record_window(add: bool) -> None:
    window.record_step(op, globals(), add)


def _replace(where: str | None) -> None:
    """Build the new index beside the old one, then swap them: the build takes a SHARE
    lock (reads go on, writes wait); dropping the old index takes ACCESS EXCLUSIVE, held
    only for the drop, the rename and the commit that follow it."""
    op.create_index(
        "ix_messages_owner_new",
        "messages",
        ["owner_node", "owner_channel"],
        postgresql_where=sa.text(where) if where else None,
    )
    op.drop_index("ix_messages_owner", table_name="messages")
    op.execute("ALTER INDEX ix_messages_owner_new RENAME TO ix_messages_owner")


def upgrade() -> None:
    _replace("owner_node IS NOT NULL")
    _record_window(True)


def downgrade() -> None:
    _record_window(False)
    _replace(None)
