"""``messages.queue_id`` without its foreign key (issue 13: write cost per message).

The foreign key checked every inserted message with a trigger and a lookup of its queue
(a quarter of PostgreSQL's CPU for a batch of 300 rows: 23 against 18 us per row). What
it guaranteed is kept at one lock per queue per statement instead of one check per
row, and with the same cascade:

* every insert locks its queues' rows ``FOR KEY SHARE`` (what the key check took): a
  queue deleted meanwhile gets none of its rows, and a delete waits for its commit.
  The broker's statements do (``storage/queries.py``), and so, from here on, do the
  repair functions ``cavalcade_move_messages`` and ``cavalcade_republish_dead_letters``;
* ``cavalcade_requeue_node`` marks the queues its node's consumers leave used (their
  ``x-expires`` counts from then, as when the broker reaps a node);
* statement-level triggers delete the messages of deleted (or truncated) queues,
  however they go: the broker, a vhost or node cascade, SQL typed by an operator. They
  run with the broker's schema on their path, with the deleter's rights.

A deleter in REPEATABLE READ or SERIALIZABLE (never the broker) can still leave the rows
an insert committed meanwhile; nodes delete such orphans every few minutes
(``Repository.delete_orphans``). On CockroachDB (no transition tables) nothing changes.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 14:20:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from cavalcade.storage import window

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (cavalcade/storage/window.py): nodes of the previous release insert
# without the lock (a queue deleted in the same instant may keep their rows, which the
# orphan sweep of new nodes deletes) and rely on the cascade, which the trigger gives.
oldest_node: str = "0013"
phase: str = "expand"

FK = "fk_messages_queue_id_queues"

# (function, text in its body, what 0014 puts there): the repair functions of 0007
_REPAIRS = [
    (
        "cavalcade_move_messages(text, text, bigint, text)",
        "WHERE v.name = vhost AND q.name = destination;",
        "WHERE v.name = vhost AND q.name = destination\n     FOR KEY SHARE OF q;",
    ),
    (
        "cavalcade_republish_dead_letters(text, bigint, text)",
        "FOR UPDATE OF m SKIP LOCKED),",
        "FOR UPDATE OF m SKIP LOCKED FOR KEY SHARE OF t),",
    ),
    # Not a lock: the queues its consumers leave start their x-expires clock, as when the
    # broker reaps a node (``queries.MARK_CONSUMED_ON_NODES``).
    (
        "cavalcade_requeue_node(uuid, boolean)",
        "    DELETE FROM nodes WHERE id = node;",
        "    UPDATE queues SET last_used_at = now()\n"
        "     WHERE id IN (SELECT queue_id FROM consumers WHERE node_id = node);\n"
        "    DELETE FROM nodes WHERE id = node;",
    ),
]


def _record_window(add: bool) -> None:
    window.record_step(op, globals(), add)


def _is_cockroach() -> bool:
    if context.is_offline_mode():
        return False
    version = op.get_bind().execute(sa.text("SELECT version()")).scalar_one()
    return "CockroachDB" in str(version)


def _schema() -> str:
    if context.is_offline_mode():
        return "public"
    return str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())


def _rewrite(function: str, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in a function's definition, as the server holds it."""
    bind = op.get_bind()
    definition = bind.execute(
        sa.text("SELECT pg_get_functiondef(CAST(:f AS regprocedure))"), {"f": function}
    ).scalar_one()
    if old not in definition:
        raise RuntimeError(f"{function} is not the definition migration 0014 expects")
    op.execute(definition.replace(old, new, 1))


def upgrade() -> None:
    if not _is_cockroach():
        path = f'SET search_path = "{_schema()}", pg_temp'
        deleted = "DELETE FROM messages WHERE queue_id IN (SELECT id FROM gone);"
        for name, body in (
            ("cavalcade_queues_deleted", deleted),
            ("cavalcade_queues_truncated", "TRUNCATE messages;"),
        ):
            # The deleter's rights (no SECURITY DEFINER: attached to another table it could
            # delete what its caller may not), and only as a trigger on ``queues``.
            op.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql {path} AS $$\n"
                "BEGIN\n"
                "  IF TG_RELID <> 'queues'::regclass THEN\n"
                f"    RAISE EXCEPTION '{name} is a trigger of queues only';\n"
                "  END IF;\n"
                f"  {body}\n"
                "  RETURN NULL;\n"
                "END\n$$"
            )
            op.execute(f"REVOKE ALL ON FUNCTION {name}() FROM PUBLIC")
        op.execute(
            "CREATE TRIGGER queues_deleted AFTER DELETE ON queues REFERENCING OLD TABLE AS gone"
            " FOR EACH STATEMENT EXECUTE FUNCTION cavalcade_queues_deleted()"
        )
        op.execute(
            "CREATE TRIGGER queues_truncated AFTER TRUNCATE ON queues"
            " FOR EACH STATEMENT EXECUTE FUNCTION cavalcade_queues_truncated()"
        )
        if not context.is_offline_mode():  # offline (--sql) they keep 0007's text
            for function, old, new in _REPAIRS:
                _rewrite(function, old, new)
        op.drop_constraint(FK, "messages", type_="foreignkey")
    _record_window(True)


def downgrade() -> None:
    _record_window(False)
    if _is_cockroach():
        return
    # No insert may slip in between the orphans' delete and the key's validation.
    op.execute("LOCK TABLE queues, messages IN SHARE ROW EXCLUSIVE MODE")
    op.execute(
        "DELETE FROM messages m WHERE NOT EXISTS (SELECT 1 FROM queues q WHERE q.id = m.queue_id)"
    )
    op.create_foreign_key(FK, "messages", "queues", ["queue_id"], ["id"], ondelete="CASCADE")
    if not context.is_offline_mode():
        for function, old, new in _REPAIRS:
            _rewrite(function, new, old)
    op.execute("DROP TRIGGER queues_truncated ON queues")
    op.execute("DROP TRIGGER queues_deleted ON queues")
    op.execute("DROP FUNCTION cavalcade_queues_truncated()")
    op.execute("DROP FUNCTION cavalcade_queues_deleted()")
