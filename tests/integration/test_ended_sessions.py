"""A pool connection whose session the server ended while it was idle is never reused
mid-protocol: its next statement fails as a lost connection (retried by every caller),
not with asyncpg's ``InternalClientError: cannot switch to state 12; another operation
(2) is in progress`` that the expiry sweep logged in the chaos test (storage/desync.py)."""

from __future__ import annotations

import asyncio

import asyncpg

from cavalcade.storage.repository import Repository
from cavalcade.storage.sqlstate import is_unavailable


async def _pool_pids(pool: asyncpg.Pool, n: int) -> list[int]:
    conns = [await pool.acquire() for _ in range(n)]
    try:
        return [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
    finally:
        for c in conns:
            await pool.release(c)


async def test_a_session_ended_between_statements_is_a_lost_connection(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=2)
    admin = await asyncpg.connect(database_url)
    failures: dict[str, int] = {}
    try:
        for _ in range(25):
            pids = await _pool_pids(repo.durable_pool, 2)
            await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
            for _ in range(200):  # the FATAL is read; the socket's end is not yet
                await asyncio.sleep(0)
            for _ in range(2):  # the statements the sweeper runs first, on each connection
                try:
                    await repo.expire_queues({})
                except Exception as exc:  # noqa: BLE001 - what kind is the point
                    key = f"{type(exc).__name__}: {exc}"[:100]
                    failures[key] = failures.get(key, 0) + 1
                    assert is_unavailable(exc), key
            await asyncio.sleep(0.05)
            assert await repo.vhosts()  # the pool opened fresh connections
    finally:
        await admin.close()
        await repo.close()
    print(f"\nfailures after terminated sessions: {failures}")
