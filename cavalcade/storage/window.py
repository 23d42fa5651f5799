"""Rolling upgrades: which schema revisions a node of this code may run on.

Every migration from 0007 on declares, as module-level markers,

* ``oldest_node``: the oldest *code* revision (the head a release ships) that can keep
  running on the schema this migration leaves: the revision before it for an additive
  "expand" step (nodes of the previous release never notice), itself for a "contract"
  step (it drops or changes something older code uses);
* ``phase``: ``expand``, ``migrate`` or ``contract``.

A migration without markers (0001-0004) counts as ``oldest_node = itself``. The upgrade
writes the same markers into the ``schema_compat`` table, so that a node of an *older*
release, which has never seen the new migration file, can still read them from the
database and accept the schema (or refuse it with one clear line).

A node at code head ``H`` accepts the database at revision ``R`` when ``R == H``, or when
``R`` is newer and every revision after ``H`` up to ``R`` has an ``oldest_node`` at or
before ``H``. Older schemas are refused (the node needs what its migrations created).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import asyncpg
from alembic.script import ScriptDirectory


@dataclass(frozen=True, slots=True)
class Step:
    """One revision and what it declares about older code."""

    revision: str
    down_revision: str | None
    oldest_node: str
    phase: str


def declared(revision: str, module: ModuleType | None) -> Step:
    """The markers of a revision file (defaults for files without them)."""
    down = getattr(module, "down_revision", None)
    if isinstance(down, tuple | list):
        down = down[0] if down else None
    return Step(
        revision,
        down,
        str(getattr(module, "oldest_node", revision)),
        str(getattr(module, "phase", "contract")),
    )


def known_steps(script: ScriptDirectory) -> dict[str, Step]:
    """Markers of every revision this code ships."""
    return {rev.revision: declared(rev.revision, rev.module) for rev in script.walk_revisions()}


def lineage(steps: dict[str, Step], head: str) -> list[str]:
    """``head`` and its ancestors, newest first."""
    out: list[str] = []
    current: str | None = head
    while current is not None and current in steps and current not in out:
        out.append(current)
        current = steps[current].down_revision
    return out


async def database_steps(conn: asyncpg.Connection) -> dict[str, Step]:
    """The markers recorded in the database's ``schema_compat`` (none before 0007)."""
    exists = await conn.fetchval(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_name = 'schema_compat' AND table_schema = current_schema()"
    )
    if not exists:
        return {}
    rows = await conn.fetch("SELECT revision, down_revision, oldest_node, phase FROM schema_compat")
    return {r[0]: Step(r[0], r[1], r[2], r[3]) for r in rows}


def accepts(head: str, revision: str, steps: dict[str, Step], ours: list[str]) -> bool:
    """May code at ``head`` (whose lineage is ``ours``) run on a database at ``revision``?"""
    if revision == head:
        return True
    seen: set[str] = set()
    current: str | None = revision
    while current is not None and current != head:
        step = steps.get(current)
        if step is None or current in seen or current in ours:
            return False  # unknown history, a loop, or an older revision of ours
        if step.oldest_node not in ours:
            return False  # this step needs newer code than ours
        seen.add(current)
        current = step.down_revision
    return current == head


def record_step(op: ModuleType, module_globals: dict[str, object], add: bool = True) -> None:
    """In a migration's upgrade (``add``) or downgrade: keep its row of ``schema_compat``
    (the table revision 0007 creates) in step with its markers."""
    import sqlalchemy as sa

    revision = module_globals["revision"]
    if not add:
        op.execute(sa.text("DELETE FROM schema_compat WHERE revision = :r").bindparams(r=revision))
        return
    op.execute(
        sa.text(
            "INSERT INTO schema_compat (revision, down_revision, oldest_node, phase) "
            "VALUES (:r, :d, :o, :p)"
        ).bindparams(
            r=revision,
            d=module_globals["down_revision"],
            o=module_globals["oldest_node"],
            p=module_globals["phase"],
        )
    )
