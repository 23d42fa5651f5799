"""A node never declares itself dead, and a stalled event loop does not starve its heartbeat
(the heartbeat thread; advisory-lock liveness is in test_liveness.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

from cavalcade.storage.heartbeat import HeartbeatThread
from cavalcade.storage.repository import Repository
from tests.waiting import wait_until_async


async def _age(repo: Repository, node: uuid.UUID) -> float | None:
    value = await repo.durable_pool.fetchval(
        "SELECT extract(epoch FROM clock_timestamp() - heartbeat_at) FROM nodes WHERE id = $1",
        node,
    )
    return None if value is None else float(value)


async def test_a_node_never_reaps_itself_however_late_it_is(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=2)
    me, other = uuid.uuid4(), uuid.uuid4()
    try:
        await repo.register_node(me, "me")
        await repo.register_node(other, "other")
        # Both look dead: as after a 16 s stall of our own loop.
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '1 minute'"
        )
        assert await repo.reap_dead_nodes(10.0, me) == [other]
        age = await _age(repo, me)
        assert age is not None and age < 10.0  # refreshed in the reaping transaction
        assert await repo.heartbeat_node(me)
        assert not await repo.heartbeat_node(other)
    finally:
        await repo.close()


async def test_heartbeat_goes_on_while_the_event_loop_is_blocked(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=2)
    me = uuid.uuid4()
    beating = HeartbeatThread(database_url, me, interval=0.1)
    try:
        await repo.register_node(me, "me")
        await repo.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() - interval '1 minute'"
        )
        beating.start()
        time.sleep(2.0)  # the event loop is stuck (no await) for many heartbeat intervals
        assert beating.beats > 0
        age = await _age(repo, me)
        assert age is not None and age < 60.0
    finally:
        await asyncio.to_thread(beating.stop)
        await repo.close()


async def test_a_loop_stuck_for_good_stops_the_heartbeat(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=2)
    me = uuid.uuid4()
    beating = HeartbeatThread(database_url, me, interval=0.1, stall_limit=0.3)
    try:
        await repo.register_node(me, "me")
        beating.start()
        time.sleep(1.5)  # past the stall limit: beating must stop
        stopped_at = beating.beats
        time.sleep(1.5)
        assert beating.beats == stopped_at
        # the loop runs again: beating resumes
        await wait_until_async(lambda: beating.beats > stopped_at, 10.5, "beats again", 0.1)
        assert beating.beats > stopped_at
    finally:
        await asyncio.to_thread(beating.stop)
        await repo.close()
