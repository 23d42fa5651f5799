"""The expiry sweep and its next-expiry lookup walk ix_messages_expires (rows with a
TTL), never the ready index (the whole backlog), whatever the statistics say.

Written as plans, on a real PostgreSQL with a backlog and stale statistics (the
system PostgreSQL here never ANALYZEs); their cost showed as 13 ms per sweep, four
sweeps a second, over a 100k-message backlog."""

from __future__ import annotations

import uuid

import asyncpg

from cavalcade.storage import queries
from cavalcade.storage.repository import INDEX_WALK, Repository


async def _plan(conn: asyncpg.Connection, sql: str, *args: object) -> str:
    """The plan (EXPLAIN without ANALYZE: nothing runs)."""
    return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))


async def test_expiry_statements_use_the_expiry_index(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=2)
    name = f"expiry-plan-{uuid.uuid4().hex[:8]}"
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    await repo.write_alone(repo.queue_insert(vhost, name, True, False, None, None, {}))
    q = await repo.find_queue(vhost, name)
    assert q is not None
    conn = await asyncpg.connect(database_url, server_settings=INDEX_WALK)
    try:
        await conn.execute(
            "INSERT INTO messages (queue_id, priority, properties, body, persistent)"
            " SELECT $1, 0, '\\x'::bytea, '\\x00'::bytea, true FROM generate_series(1, 3000)",
            q.id,
        )
        # What a VACUUM of a drained table leaves (docs/performance.md, the slow mode).
        await conn.execute("VACUUM messages")
        for sql, args in ((queries.EXPIRE, (100,)), (queries.NEXT_EXPIRY, ())):
            plan = await _plan(conn, sql, *args)
            assert "ix_messages_ready" not in plan, plan
            assert "ix_messages_expires" in plan, plan
    finally:
        await conn.execute("DELETE FROM messages WHERE queue_id = $1", q.id)
        await conn.close()
        await repo.close()
