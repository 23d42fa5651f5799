"""``messages.queue_id`` without its foreign key (issue 13: write cost per message).

The foreign key checked every inserted message with a trigger and a lookup of its queue
(a quarter of PostgreSQL's CPU for a batch of 300 rows: 23 against 18 us per row). What
it guaranteed is kept at one lock per queue per statement instead of one check per
row, and with the same cascade:

* the broker's inserts lock their queues' rows ``FOR KEY SHARE`` (what the key check
  took), so a queue deleted meanwhile gets none of the batch's rows, and a delete
  waits for the insert's commit;
* a statement-level trigger deletes the messages of deleted queues, however the queue
  goes (the broker, a vhost or node cascade, SQL typed by an operator).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 14:20:00

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from cavalcade.storage import window

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (cavalcade/storage/window.py): nodes of the previous release insert
# without the lock (a queue deleted in the same instant may keep their rows) and rely
# on the cascade, which the trigger still gives.
oldest_node: str = "0013"
phase: str = "expand"

FK = "fk_messages_queue_id_queues"


def _record_window(add: bool) -> None:
    window.record_step(op, globals(), add)


def upgrade() -> None:
    op.execute(
        """
CREATE FUNCTION cavalcade_queues_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM messages WHERE queue_id IN (SELECT id FROM gone);
  RETURN NULL;
END
$$"""
    )
    op.execute(
        "CREATE TRIGGER queues_deleted AFTER DELETE ON queues REFERENCING OLD TABLE AS gone"
        " FOR EACH STATEMENT EXECUTE FUNCTION cavalcade_queues_deleted()"
    )
    op.drop_constraint(FK, "messages", type_="foreignkey")
    _record_window(True)


def downgrade() -> None:
    _record_window(False)
    op.execute(
        "DELETE FROM messages m WHERE NOT EXISTS (SELECT 1 FROM queues q WHERE q.id = m.queue_id)"
    )
    op.create_foreign_key(FK, "messages", "queues", ["queue_id"], ["id"], ondelete="CASCADE")
    op.execute("DROP TRIGGER queues_deleted ON queues")
    op.execute("DROP FUNCTION cavalcade_queues_deleted()")
