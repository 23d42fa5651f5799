"""Advisory-lock liveness on a real PostgreSQL: a node whose session ends is reaped at
once by the others, never by itself, and never for a lock it was not seen holding."""

from __future__ import annotations

import asyncio
import uuid

from cavalcade.broker.liveness import Liveness
from cavalcade.storage.liveness import LivenessStore, NodeLock, lock_key
from cavalcade.storage.repository import NewMessage, Repository
from tests.waiting import wait_until_async


async def _insert(repo: Repository, rows: list[NewMessage]) -> None:
    """Publish ``rows`` as the broker's write path does (one write transaction)."""
    async with repo.write_transaction() as tx:
        await tx.insert(rows)


async def _queue_with_claims(repo: Repository, owner: uuid.UUID, n: int) -> int:
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    await repo.write_alone(repo.queue_insert(vhost, "liveness", True, False, None, None, {}))
    q = await repo.find_queue(vhost, "liveness")
    assert q is not None
    rows = [
        NewMessage(q.id, 0, True, "", "liveness", b"\x00\x00", None, None, None, None, b"x")
        for _ in range(n)
    ]
    await _insert(repo, rows)
    assert len(await repo.claim(q.id, owner, 1, n, no_ack=False)) == n
    return q.id


def _liveness(repo: Repository, me: uuid.UUID, reaped: list[uuid.UUID]) -> Liveness:
    return Liveness(repo, LivenessStore(repo.durable_pool), me, 0.5, 30.0, reaped.extend)


async def test_lock_key_matches_what_pg_locks_shows(database_url: str) -> None:
    node = uuid.uuid4()
    lock = NodeLock(database_url, node)
    repo = await Repository.connect(database_url, size=2)
    try:
        assert await lock.ensure() is True
        assert await lock.ensure() is False  # already held: nothing to do
        await repo.register_node(node, "n")
        obs = await LivenessStore(repo.durable_pool).observe(uuid.uuid4())
        assert obs.peers[node].locked is True
        held = await repo.durable_pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::int8 << 32) | objid::int8) = $1::int8",
            lock_key(node),
        )
        assert held == 1
    finally:
        await lock.close()
        await repo.close()


async def test_a_node_whose_session_ends_is_reaped_at_once(database_url: str) -> None:
    me, other = uuid.uuid4(), uuid.uuid4()
    repo = await Repository.connect(database_url, size=4)
    lock = NodeLock(database_url, other)
    reaped: list[uuid.UUID] = []
    try:
        await repo.register_node(me, "me")
        await lock.ensure()
        await repo.register_node(other, "other")
        qid = await _queue_with_claims(repo, other, 3)
        live = _liveness(repo, me, reaped)
        assert await live.check() == []  # seen holding its lock: alive
        assert other in live.seen_locked
        # The process dies: PostgreSQL ends its session and drops the lock at once.
        assert lock.conn is not None
        lock.conn.terminate()
        # The server ends the session a moment after the socket closes: look until then.
        found = await wait_until_async(live.check, 5, "the lock gone")
        assert found == [other]
        assert reaped == [other]
        assert await repo.ready_count(qid) == 3
        assert not await repo.heartbeat_node(other)  # gone: it would be fenced
        assert await repo.heartbeat_node(me)
    finally:
        await lock.close()
        await repo.close()


async def test_a_node_never_seen_holding_a_lock_is_left_to_the_heartbeat(
    database_url: str,
) -> None:
    """An older node (or one on a database without advisory locks) holds no lock."""
    me, old = uuid.uuid4(), uuid.uuid4()
    repo = await Repository.connect(database_url, size=4)
    try:
        await repo.register_node(me, "me")
        await repo.register_node(old, "old")
        live = _liveness(repo, me, [])
        assert await live.check() == []
        assert await live.check() == []
        assert await repo.heartbeat_node(old)
        # ... and settled as alive once its heartbeat moves.
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '0.3 s' WHERE id = $1", old
        )
        task = asyncio.ensure_future(live.settle(old))
        await asyncio.sleep(0.3)
        await repo.heartbeat_node(old)
        assert await task is False
    finally:
        await repo.close()


async def test_a_node_never_reaps_itself(database_url: str) -> None:
    me = uuid.uuid4()
    repo = await Repository.connect(database_url, size=4)
    lock = NodeLock(database_url, me)
    try:
        await lock.ensure()
        await repo.register_node(me, "me")
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", me
        )
        live = _liveness(repo, me, [])
        assert await live.reap_by_threshold() == []
        assert await repo.reap_nodes([me], me) == []
        assert lock.conn is not None
        lock.conn.terminate()  # our own session ends: we are not in our own view
        assert await live.check() == []
        assert await live.settle(me) is False
        assert await repo.heartbeat_node(me)
    finally:
        await lock.close()
        await repo.close()


async def test_a_partitioned_node_holding_its_lock_is_left_to_the_threshold(
    database_url: str,
) -> None:
    """Its old session lingers (lock held) but its heartbeat stopped: not reaped by the
    lock, and an exclusive owner in doubt is settled once the threshold reaps it."""
    me, cut_off = uuid.uuid4(), uuid.uuid4()
    repo = await Repository.connect(database_url, size=4)
    lock = NodeLock(database_url, cut_off)
    reaped: list[uuid.UUID] = []
    try:
        await repo.register_node(me, "me")
        await lock.ensure()
        await repo.register_node(cut_off, "cut off")
        live = _liveness(repo, me, reaped)
        assert await live.check() == []
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", cut_off
        )
        assert await live.check() == []  # the lock is held: not dead by the lock
        assert await live.settle(cut_off) is True  # stale past the threshold: reaped
        assert reaped == [cut_off]
    finally:
        await lock.close()
        await repo.close()


async def test_a_new_postmaster_forgets_who_held_locks(database_url: str) -> None:
    """After a database restart every node takes its lock again: until a node is seen
    holding it anew, a free lock reaps nobody."""
    me, other = uuid.uuid4(), uuid.uuid4()
    repo = await Repository.connect(database_url, size=4)
    lock = NodeLock(database_url, other)
    try:
        await repo.register_node(me, "me")
        await lock.ensure()
        await repo.register_node(other, "other")
        live = _liveness(repo, me, [])
        assert await live.check() == []
        live.server_started = "an older postmaster"  # as if the database had restarted
        await lock.close()
        assert await live.check() == []
        assert await repo.heartbeat_node(other)
    finally:
        await lock.close()
        await repo.close()
