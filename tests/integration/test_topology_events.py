"""Topology caches catch up from the topology events instead of reloading the vhost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator

from cavalcade.broker.service import Broker
from cavalcade.broker.sessions import Session
from cavalcade.broker.topology import VhostTopology
from cavalcade.domain.routing import route
from cavalcade.storage import topology_log as tl
from cavalcade.storage.notify import TopologyChanged
from cavalcade.storage.repository import Repository
from cavalcade.storage.topology_log import TopologyChange

OPS = ["queue", "queue", "exchange", "bind", "bind", "bind", "unbind", "drop"]


def _snapshot(vh: VhostTopology) -> tuple[object, ...]:
    """What routing depends on, comparable between two caches."""
    queues = sorted((q.id, q.name) for q in vh.queues.values())
    exchanges = sorted((e.id, e.name, e.type) for e in vh.exchanges.values())
    bindings = sorted(
        (b.source_id, b.queue_id or 0, b.exchange_id or 0, b.routing_key)
        for e in vh.exchanges.values()
        for b in e.bindings
    )
    edges = sorted((k, len(v)) for k, v in vh.edges.items() if v)
    return queues, exchanges, bindings, edges


async def test_random_changes_applied_incrementally_match_a_full_load(database_url: str) -> None:
    repo = await Repository.connect(database_url, size=4)
    try:
        vhost = await repo.find_vhost("/")
        assert vhost is not None
        cache = VhostTopology(id=vhost, name="/")
        await cache.fresh(repo)
        rnd = random.Random(7)
        queues: dict[str, int] = {}
        exchanges: dict[str, int] = {}
        for step in range(150):
            op = rnd.choice(OPS)
            change = TopologyChange()
            if op == "queue":
                name = f"q{step}"
                await repo.write_alone(repo.queue_insert(vhost, name, True, False, None, None, {}))
                row = await repo.find_queue(vhost, name)
                assert row is not None
                queues[name] = row.id
                change.queues.add(row.id)
            elif op == "exchange":
                name = f"x{step}"
                await repo.insert_exchange(vhost, name, "topic", True, False, False, {})
                ex = await repo.find_exchange(vhost, name)
                assert ex is not None
                exchanges[name] = ex.id
                change.exchanges.add(ex.id)
            elif op == "bind" and queues:
                src = rnd.choice([*exchanges.values(), None])
                if src is None:
                    amq = await repo.find_exchange(vhost, "amq.topic")
                    assert amq is not None
                    src = amq.id
                if exchanges and rnd.random() < 0.3:
                    dest = rnd.choice(list(exchanges.values()))
                    await repo.write_alone(
                        repo.binding_insert(src, None, dest, f"k.{step % 5}.#", {})
                    )
                    change.edges.add((src, 0, dest))
                else:
                    qid = rnd.choice(list(queues.values()))
                    await repo.write_alone(
                        repo.binding_insert(src, qid, None, f"k.{step % 5}.*", {})
                    )
                    change.edges.add((src, qid, 0))
            elif op == "unbind" and cache.edges:
                edge = rnd.choice(sorted(cache.edges))
                for b in list(cache.edges[edge]):
                    await repo.delete_binding(
                        b.source_id, b.queue_id, b.exchange_id, b.routing_key, b.arguments
                    )
                change.edges.add(edge)
            elif op == "drop" and queues:
                name = rnd.choice(sorted(queues))
                await repo.delete_queue(queues.pop(name))
                change.queues.add(cache.queues[name].id)
            await repo.topology.bump(vhost, change, TopologyChanged(uuid.uuid4(), vhost))
            if rnd.random() < 0.5:  # sometimes several versions at once
                cache.stale = True
                await cache.fresh(repo)
        cache.stale = True
        await cache.fresh(repo)
        assert cache.reloads == 1
        full = VhostTopology(id=vhost, name="/")
        await full.fresh(repo)
        assert _snapshot(cache) == _snapshot(full)
        assert cache.version == full.version
        # A bump that says nothing (an older node, the reaper) means: reload.
        await repo.bump_topology(vhost)
        cache.stale = True
        await cache.fresh(repo)
        assert cache.reloads == 2
    finally:
        await repo.close()


@contextlib.asynccontextmanager
async def _guest_session(database_url: str) -> AsyncIterator[tuple[Repository, Broker, Session]]:
    """A started broker on a node of its own, and guest's session on "/"."""
    repo = await Repository.connect(database_url, size=4)
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    broker = Broker(repo, node)
    broker.start()
    try:
        user_id, user = await broker.authenticate("guest", "guest", "127.0.0.1")
        yield repo, broker, await broker.open_session(user_id, user, "/")
    finally:
        await broker.stop()
        await repo.close()


async def test_binding_ten_thousand_queues_never_reloads(database_url: str) -> None:
    """Declare + bind through the broker: each step reads only what it changed."""
    async with _guest_session(database_url) as (repo, broker, s):
        for i in range(300):
            await broker.declare_queue(s, f"many-{i}", False, False, False, False, {})
            await broker.bind_queue(s, f"many-{i}", "amq.topic", f"many.{i}.#", {})
        vh = await s.vhost.fresh(repo)
        assert vh.reloads == 1
        ex = vh.exchanges_by_name["amq.topic"]
        assert route(vh.exchanges, ex, "many.42.x", dict) == {vh.queues["many-42"].id}
        await broker.delete_queue(s, "many-42", False, False)
        vh = await s.vhost.fresh(repo)
        assert route(vh.exchanges, ex, "many.42.x", dict) == set()
        assert vh.reloads == 1


async def test_a_read_during_the_bump_does_not_hide_the_change(database_url: str) -> None:
    """Another reader (the sweeper) may refresh the cache while a change's version bump is
    in flight: it reads the version before the bump. The change must still be seen next,
    e.g. a binding by the delete of its queue (the auto-delete exchange goes with it)."""
    async with _guest_session(database_url) as (repo, broker, s):
        real_bump = repo.topology.bump

        async def bump_after_a_read(
            vhost_id: int, change: object, payload: object, write: object = None
        ) -> tuple[int, int | None]:
            await s.vhost.fresh(repo)  # the interloper, just before the bump commits
            return await real_bump(vhost_id, change, payload, write)  # type: ignore[arg-type]

        repo.topology.bump = bump_after_a_read  # type: ignore[method-assign]
        try:
            await broker.declare_exchange(s, "ad", "fanout", False, False, True, False, {})
            await broker.declare_queue(s, "ad-q", False, False, False, False, {})
            await broker.bind_queue(s, "ad-q", "ad", "", {})
            vh = await s.vhost.fresh(repo)
            assert vh.edges_into.get((vh.queues["ad-q"].id, 0))
            await broker.delete_queue(s, "ad-q", False, False)
            assert await repo.find_exchange(s.vhost.id, "ad") is None
        finally:
            repo.topology.bump = real_bump  # type: ignore[method-assign]


async def test_a_read_during_a_catch_up_waits_for_it(database_url: str) -> None:
    """A session reading the cache while another (the sweeper, a publish) is catching
    up must not get the old state: a passive declare right after a delete would still
    find the exchange."""
    async with _guest_session(database_url) as (repo, broker, s):
        real_read = repo.topology.read
        name = f"gone-{uuid.uuid4().hex[:8]}"
        await broker.declare_exchange(s, name, "fanout", False, False, False, False, {})
        assert name in (await s.vhost.fresh(repo)).exchanges_by_name
        await broker.delete_exchange(s, name, False)
        reading, release = asyncio.Event(), asyncio.Event()

        async def slow_read(*args: object) -> object:
            reading.set()
            await release.wait()
            return await real_read(*args)  # type: ignore[arg-type]

        repo.topology.read = slow_read  # type: ignore[method-assign]
        try:
            first = asyncio.create_task(s.vhost.fresh(repo))
            await reading.wait()
            second = asyncio.create_task(s.vhost.fresh(repo))
            await asyncio.sleep(0.05)
            assert not second.done()  # waits for the catch-up under way
            release.set()
            vh = await second
            assert name not in vh.exchanges_by_name
            await first
        finally:
            repo.topology.read = real_read  # type: ignore[method-assign]


async def test_a_write_that_changes_nothing_bumps_nothing(database_url: str) -> None:
    """A redeclared binding or a queue already there (kombu re-binds an auto-delete
    queue on every declare) leaves the version alone: no node reloads or re-routes."""
    repo = await Repository.connect(database_url, size=2)
    try:
        vhost = await repo.find_vhost("/")
        assert vhost is not None
        name = f"nochange-{uuid.uuid4().hex[:8]}"
        event = TopologyChanged(uuid.uuid4(), vhost)
        create = repo.queue_insert(vhost, name, True, False, None, None, {})
        _, qid = await repo.topology.bump(vhost, TopologyChange(), event, create)
        assert qid is not None
        amq = await repo.find_exchange(vhost, "amq.direct")
        assert amq is not None
        edge = TopologyChange(edges={(amq.id, qid, 0)})
        bind = repo.binding_insert(amq.id, qid, None, "k", {})
        first, _ = await repo.topology.bump(vhost, edge, event, bind)
        assert first > 0
        again, written = await repo.topology.bump(vhost, edge, event, bind)
        assert (again, written) == (0, None)
        queue_again = repo.queue_insert(vhost, name, True, False, None, None, {})
        assert await repo.topology.bump(vhost, TopologyChange(), event, queue_again) == (0, None)
        version, change = await repo.topology.changes_since(vhost, first)
        assert version == first and change == TopologyChange()
        other = repo.binding_insert(amq.id, qid, None, "k2", {})
        assert (await repo.topology.bump(vhost, edge, event, other))[0] == first + 1
    finally:
        q = await repo.find_queue(vhost, name)
        if q is not None:
            await repo.delete_queue(q.id)
        await repo.close()


def _rows_visited(plan: dict[str, object]) -> int:
    """Rows a plan node and its children produced or filtered away, per loop summed."""
    loops = int(plan.get("Actual Loops", 1))  # type: ignore[call-overload]
    own = (int(plan.get("Actual Rows", 0)) + int(plan.get("Rows Removed by Filter", 0))) * loops  # type: ignore[call-overload]
    children = plan.get("Plans", [])
    assert isinstance(children, list)
    return own + sum(_rows_visited(c) for c in children)


async def test_a_catch_up_reads_its_rows_by_key_however_large_the_vhost(database_url: str) -> None:
    """The catch-up reads of one change visit that change's rows only, with the generic
    plans a long-lived connection ends up using and no statistics (autovacuum off): they
    once walked every queue of the vhost and every binding, per change."""
    async with _guest_session(database_url) as (repo, broker, s):
        await broker.declare_queue(s, "probe", False, False, False, False, {})
        await broker.bind_queue(s, "probe", "amq.topic", "probe.#", {})
        vh = await s.vhost.fresh(repo)
        q, ex = vh.queues["probe"], vh.exchanges_by_name["amq.topic"]
        async with repo.topology.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO queues (vhost_id, name) SELECT $1, 'bulk-' || i"
                " FROM generate_series(1, 3000) i",
                vh.id,
            )
            await conn.execute(
                "INSERT INTO bindings (source_id, queue_id, routing_key)"
                " SELECT $1, id, name FROM queues WHERE name LIKE 'bulk-%'",
                ex.id,
            )
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            reads = [
                (tl._QUEUES_BY_ID, ([q.id],)),
                (tl._EXCHANGES_BY_ID, ([ex.id],)),
                (tl._BINDINGS_OF_EDGES, ([ex.id], [q.id], [0])),
            ]
            for sql, args in reads:
                types = ", ".join("bigint[]" for _ in args)
                params = ", ".join("'{" + ",".join(map(str, a)) + "}'" for a in args)
                await conn.execute(f"PREPARE probe ({types}) AS {sql}")
                try:
                    plan = await conn.fetchval(
                        f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({params})"
                    )
                finally:
                    await conn.execute("DEALLOCATE probe")
                top = json.loads(plan)[0]["Plan"]
                assert _rows_visited(top) <= 10, (sql, top)


async def test_own_changes_are_taken_without_reading_them_back(database_url: str) -> None:
    """A declare, bind or queue delete of this node goes into its cache as it committed
    it: no catch-up read follows, and the cache is what a full load gives."""
    async with _guest_session(database_url) as (repo, broker, s):
        vh = await s.vhost.fresh(repo)
        reads = 0
        real = repo.topology.changes_since

        async def counted(vhost_id: int, since: int) -> tuple[int, TopologyChange | None]:
            nonlocal reads
            reads += 1
            return await real(vhost_id, since)

        repo.topology.changes_since = counted  # type: ignore[method-assign]
        await broker.declare_exchange(s, "own-x", "topic", False, False, False, False, {})
        for i in range(20):
            await broker.declare_queue(s, f"own-{i}", False, False, False, False, {"x-a": [i]})
            await broker.bind_queue(s, f"own-{i}", "amq.topic", f"own.{i}.#", {"k": "v\x00"})
            await broker.bind_queue(s, f"own-{i}", "amq.topic", f"own.{i}.*", {})
        before = reads
        for i in range(20):
            await broker.declare_queue(s, f"own-{i}", False, False, False, False, {"x-a": [i]})
            await broker.bind_queue(s, f"own-{i}", "amq.topic", f"own.{i}.#", {"k": "v\x00"})
        assert reads == before  # declares and binds of nothing new read nothing either
        for i in range(0, 20, 4):
            await broker.delete_queue(s, f"own-{i}", False, False)
        assert reads <= 3  # the exchange (read back, with its bindings); no queue, no bind
        assert not vh.stale
        full = VhostTopology(id=vh.id, name="/")
        await full.fresh(repo)
        assert _snapshot(vh) == _snapshot(full) and vh.version == full.version
        assert vh.queues["own-3"].arguments == full.queues["own-3"].arguments == {"x-a": [3]}
        edge = (vh.exchanges_by_name["amq.topic"].id, vh.queues["own-3"].id, 0)
        assert sorted(vh.edges[edge], key=repr) == sorted(full.edges[edge], key=repr)


async def test_own_changes_racing_others_still_match_a_full_load(database_url: str) -> None:
    """Sessions of two nodes declare and bind at once: whatever each node took without
    reading back, a catch-up from its version then gives what a full load gives."""
    async with (
        _guest_session(database_url) as (repo_a, broker_a, a),
        _guest_session(database_url) as (repo_b, broker_b, b),
    ):
        a2 = await broker_a.open_session(*(await broker_a.authenticate("guest", "guest", "")), "/")
        rnd = random.Random(11)

        async def work(broker: Broker, s: Session, tag: str) -> None:
            for i in range(40):
                q = f"race-{tag}-{i}"
                await broker.declare_queue(s, q, False, False, False, False, {})
                for _ in range(rnd.randint(1, 3)):
                    await broker.bind_queue(s, q, "amq.topic", f"{tag}.{rnd.randint(0, 4)}", {})
                if rnd.random() < 0.2:
                    await broker.delete_queue(s, q, False, False)

        await asyncio.gather(
            work(broker_a, a, "a"), work(broker_a, a2, "c"), work(broker_b, b, "b")
        )
        for repo, s in ((repo_a, a), (repo_b, b)):
            s.vhost.stale = True  # as a NOTIFY would: catch up from the cached version
            vh = await s.vhost.fresh(repo)
            full = VhostTopology(id=vh.id, name="/")
            await full.fresh(repo)
            assert _snapshot(vh) == _snapshot(full) and vh.version == full.version
