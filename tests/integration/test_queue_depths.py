"""Queue depths for the management API and /metrics: exact below 2 * CAP ready
messages, the declare-ok estimate above it; unacked always exact; bounded work."""

from __future__ import annotations

import uuid

import asyncpg

from cavalcade.storage import stats
from cavalcade.storage.counting import CAP
from cavalcade.storage.repository import Repository

NODE = uuid.UUID(int=7)


async def _fill(conn: asyncpg.Connection, queue_id: int, n: int, size: int) -> None:
    await conn.execute(
        "INSERT INTO messages (queue_id, priority, properties, body, persistent)"
        " SELECT $1, 0, '\\x'::bytea, convert_to(repeat('x', $3), 'UTF8'), g % 2 = 0"
        " FROM generate_series(1, $2) g",
        queue_id,
        n,
        size,
    )


async def test_depths_exact_when_small_estimated_when_large(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=2)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO nodes (id, name) VALUES ($1, 'n')", NODE)
        big, small, empty = [
            await conn.fetchval(
                "INSERT INTO queues (vhost_id, name) VALUES (1, $1) RETURNING id", name
            )
            for name in ("big", "small", "empty")
        ]
        await _fill(conn, small, 2 * CAP - 1, 10)
        await _fill(conn, big, 20 * CAP, 100)
        await conn.execute(
            "UPDATE messages SET owner_node = $1, owner_channel = 1 WHERE id IN"
            " (SELECT id FROM messages WHERE queue_id = $2 ORDER BY id LIMIT 30)",
            NODE,
            big,
        )
        depths = {d.name: d for d in await stats.queue_depths(repo)}
        s, b, e = depths["small"], depths["big"], depths["empty"]
        assert (s.ready, s.ready_bytes, s.persistent, s.unacked) == (
            2 * CAP - 1, (2 * CAP - 1) * 10, CAP - 1, 0,
        )  # fmt: skip
        assert (e.ready, e.ready_bytes, e.unacked, e.persistent) == (0, 0, 0, 0)
        assert (b.unacked, b.unacked_bytes) == (30, 30 * 100)  # exact at any backlog
        # One queue published alone: its ids are dense, so the estimate is exact here.
        assert b.ready == 20 * CAP - 30
        assert b.ready_bytes == b.ready * 100
        assert abs(b.persistent - 10 * CAP) <= CAP // 10
        one = await stats.queue_depths(repo, "/", "small")
        assert [d.ready for d in one] == [2 * CAP - 1]
        totals = await stats.totals(repo)
        assert totals.messages_ready == s.ready + b.ready
        assert totals.messages_unacknowledged == 30
        assert (await stats.totals(repo, [1])).messages_ready == totals.messages_ready
    finally:
        await conn.close()
        await repo.close()
