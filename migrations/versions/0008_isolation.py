"""Every name AMQP allows fits: names and routing keys as text, binding arguments hashed in
the edge index (a long argument table no longer exceeds the index row size).

Names holding NUL are stored escaped (see cavalcade/storage/textsafe.py), which can make them
longer than 255 characters; varchar to text needs no table rewrite.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:00:00

"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from cavalcade.storage import window

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (cavalcade/storage/window.py): varchar(255) -> text and a new index
# expression; code of the previous release reads and writes these columns unchanged.
oldest_node: str = "0007"
phase: str = "expand"

_NAMES = (
    ("exchanges", "name"),
    ("queues", "name"),
    ("bindings", "routing_key"),
    ("consumers", "tag"),
    ("messages", "exchange"),
    ("messages", "routing_key"),
)


_DEPENDENT_VIEWS = """
SELECT DISTINCT c.oid, c.oid::regclass::text AS name, pg_get_viewdef(c.oid, true) AS body
FROM pg_depend d
JOIN pg_rewrite r ON r.oid = d.objid
JOIN pg_class c ON c.oid = r.ev_class
WHERE c.relkind = 'v' AND d.refobjid = ANY(CAST(:tables AS regclass[])) AND c.oid <> d.refobjid
ORDER BY c.oid
"""


def _retype(change: Callable[[], None]) -> None:
    """Run ``change`` with the views that read the retyped columns (the SQL surface's,
    revision 0007) dropped and then created again as they were."""
    tables = sorted({table for table, _ in _NAMES})
    views = op.get_bind().execute(sa.text(_DEPENDENT_VIEWS), {"tables": tables}).all()
    for view in reversed(views):
        op.execute(f"DROP VIEW {view.name}")
    change()
    for view in views:
        op.execute(f"CREATE VIEW {view.name} AS {view.body}")


def _record_window(add: bool) -> None:
    """Keep ``schema_compat`` (revision 0007's table of rolling-upgrade windows) in step."""
    window.record_step(op, globals(), add)


def upgrade() -> None:
    def widen() -> None:
        for table, column in _NAMES:
            op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(255))

    _retype(widen)
    _record_window(True)
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

    def narrow() -> None:
        for table, column in _NAMES:
            op.alter_column(
                table,
                column,
                type_=sa.String(255),
                existing_type=sa.Text(),
                postgresql_using=f"left({column}, 255)",
            )

    _retype(narrow)
    _record_window(False)
