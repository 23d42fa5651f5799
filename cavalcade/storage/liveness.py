"""Node liveness in the database: a session-level advisory lock per node, and what the
other nodes read of it.

Each node holds ``pg_advisory_lock(key)`` (the key is derived from its node id) on a
connection of its own, for as long as it lives. PostgreSQL ends a session as soon as its
client's socket closes, so the lock of a killed node is free at once: the others read
``pg_locks`` (never taking the lock themselves) and reap the node right away. A
partition that leaves the old session lingering is still caught by the heartbeat
threshold. Databases without advisory locks or ``pg_locks`` (CockroachDB) report
``supported = False`` and the cluster falls back to the heartbeat alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

log = logging.getLogger(__name__)

# What a database without advisory locks or pg_locks answers.
_UNSUPPORTED = (
    asyncpg.UndefinedFunctionError,
    asyncpg.UndefinedTableError,
    asyncpg.FeatureNotSupportedError,
)


def lock_key(node_id: uuid.UUID) -> int:
    """The advisory-lock key of a node: the first 8 bytes of its id, as a signed bigint."""
    return int.from_bytes(node_id.bytes[:8], "big", signed=True)


def _held_key(classid: int, objid: int) -> int:
    """The signed bigint key of a ``pg_locks`` advisory row (objsubid 1: high, low)."""
    return int.from_bytes(((classid << 32) | objid).to_bytes(8, "big"), "big", signed=True)


class NodeLock:
    """This node's advisory lock, on a dedicated connection (never pooled) that lives as
    long as the node; re-taken by :meth:`ensure` if the session was lost."""

    def __init__(self, dsn: str, node_id: uuid.UUID) -> None:
        self.dsn = dsn
        self.key = lock_key(node_id)
        self.supported = True
        self.conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def ensure(self) -> bool:
        """Hold the lock; True when it was (re)taken now (the previous session, if any,
        ended: the database restarted or the connection dropped). Raises while the
        database is away."""
        if not self.supported or self.held:
            return False
        await self.close()
        conn = await asyncpg.connect(self.dsn, statement_cache_size=0, timeout=5)
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", self.key)
        except _UNSUPPORTED as exc:
            log.info("advisory locks not available (%s): node death is seen by heartbeat", exc)
            self.supported = False
            await conn.close()
            return False
        except BaseException:
            conn.terminate()
            raise
        if not got:  # someone holds our key (a session of ours not yet ended): retry
            await conn.close()
            return False
        self.conn = conn
        return True

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5.0)
            if not conn.is_closed():
                conn.terminate()


@dataclass(slots=True)
class PeerState:
    """One other node as the database sees it now."""

    id: uuid.UUID
    locked: bool | None  # None: advisory locks are not available
    heartbeat_at: datetime
    age: float  # seconds since its last heartbeat (database clock)


@dataclass(slots=True)
class Observation:
    server_started: datetime | None
    peers: dict[uuid.UUID, PeerState]


_OBSERVE = """
SELECT id, heartbeat_at, extract(epoch FROM now() - heartbeat_at)::float8 AS age
  FROM nodes WHERE id <> $1
"""

_ADVISORY = """
SELECT pg_postmaster_start_time() AS started,
       coalesce(array_agg(classid::int8 ORDER BY classid, objid), '{}') AS hi,
       coalesce(array_agg(objid::int8 ORDER BY classid, objid), '{}') AS lo
  FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 1 AND granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class LivenessStore:
    """Reads the other nodes' heartbeats and advisory locks (pool connections)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.locks_supported = True

    async def observe(self, me: uuid.UUID, node: uuid.UUID | None = None) -> Observation:
        """Every other node (or only ``node``), with whether its lock is held."""
        async with self.pool.acquire() as conn:
            if node is None:
                rows = await conn.fetch(_OBSERVE, me)
            else:
                rows = await conn.fetch(_OBSERVE + " AND id = $2", me, node)
            held: set[int] | None = None
            started = None
            if self.locks_supported and rows:
                try:
                    lk = await conn.fetchrow(_ADVISORY)
                except _UNSUPPORTED as exc:
                    log.info("pg_locks not available (%s): node death is seen by heartbeat", exc)
                    self.locks_supported = False
                else:
                    assert lk is not None
                    started = lk["started"]
                    held = {_held_key(h, lo) for h, lo in zip(lk["hi"], lk["lo"], strict=True)}
        peers = {
            r["id"]: PeerState(
                r["id"],
                None if held is None else lock_key(r["id"]) in held,
                r["heartbeat_at"],
                float(r["age"]),
            )
            for r in rows
        }
        return Observation(started, peers)

    async def consumer_nodes(self, queue_id: int) -> set[uuid.UUID]:
        """The nodes that have consumers on a queue."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT node_id FROM consumers WHERE queue_id = $1", queue_id
        )
        return {r[0] for r in rows}
