"""Message bodies compressed with lz4 instead of pglz (issue 13: large messages).

A body over ~2 kB is compressed when TOASTed. pglz (PostgreSQL's default) compresses
a 100 MB body in about twice the time lz4 takes (the large-message round trip is bound
by that INSERT), and it gives up on incompressible data only after trying its first
kilobyte, as lz4 does too. Only values stored from now on are affected; older rows
keep their pglz data, which PostgreSQL still reads. Skipped where the setting does not
exist (PostgreSQL before 14, CockroachDB) or the server was built without lz4.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-02 19:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from cavalcade.storage import window

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (cavalcade/storage/window.py): a column's compression is invisible
# to the nodes of the previous release.
oldest_node: str = "0010"
phase: str = "expand"


def _record_window(add: bool) -> None:
    window.record_step(op, globals(), add)


def _supported() -> bool:
    """Column compression exists (PostgreSQL 14 on, not CockroachDB)."""
    if context.is_offline_mode():
        return True
    bind = op.get_bind()
    version = str(bind.execute(sa.text("SELECT version()")).scalar_one())
    if "CockroachDB" in version:
        return False
    number = int(bind.execute(sa.text("SHOW server_version_num")).scalar_one())
    return number >= 140000


def _set_compression(method: str) -> None:
    # A server built without lz4 answers 0A000 (feature_not_supported): keep pglz.
    op.execute(
        "DO $$ BEGIN"
        f" ALTER TABLE messages ALTER COLUMN body SET COMPRESSION {method};"
        " EXCEPTION WHEN feature_not_supported THEN NULL;"
        " END $$"
    )


def upgrade() -> None:
    if _supported():
        _set_compression("lz4")
    _record_window(True)


def downgrade() -> None:
    _record_window(False)
    if _supported():
        _set_compression("default")
