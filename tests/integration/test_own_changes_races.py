"""A node's own topology changes, taken without reading them back, in the races a
reviewer found: the cache is stale, or it is what a full load gives."""

from __future__ import annotations

import asyncio
from typing import Any

from cavalcade.broker.topology import VhostTopology
from cavalcade.domain.routing import route
from tests.integration.test_topology_events import _guest_session, _snapshot


async def test_a_bind_during_a_catch_up_of_its_edge_is_not_taken_twice(database_url: str) -> None:
    """Another node bound the same edge (its NOTIFY not heard yet); a catch-up begins
    during this node's bind and reads the edge after its commit: the bind is in that
    read already, so it must not be added again."""
    async with (
        _guest_session(database_url) as (repo_a, broker_a, a),
        _guest_session(database_url) as (_repo_b, broker_b, b),
    ):
        await broker_a.declare_queue(a, "dq", False, False, False, False, {})
        await broker_a.bind_queue(a, "dq", "amq.topic", "k0", {})
        vh = await a.vhost.fresh(repo_a)
        await broker_b.bind_queue(b, "dq", "amq.topic", "k1", {})
        assert not vh.stale
        bumped = asyncio.Event()
        real_read, real_bump = repo_a.topology.read, repo_a.topology.bump
        catch_up: list[asyncio.Task[Any]] = []

        async def slow_read(*args: Any, **kw: Any) -> Any:
            await bumped.wait()
            return await real_read(*args, **kw)

        async def bump(*args: Any, **kw: Any) -> Any:
            # e.g. a batch's prepare: its changes_since is done, its read waits
            catch_up.append(asyncio.get_running_loop().create_task(vh.fresh(repo_a)))
            await asyncio.sleep(0.05)
            r = await real_bump(*args, **kw)
            bumped.set()
            return r

        repo_a.topology.read = slow_read  # type: ignore[method-assign]
        repo_a.topology.bump = bump  # type: ignore[method-assign]
        try:
            await broker_a.bind_queue(a, "dq", "amq.topic", "k2", {})
            await asyncio.gather(*catch_up)
        finally:
            repo_a.topology.read = real_read  # type: ignore[method-assign]
            repo_a.topology.bump = real_bump  # type: ignore[method-assign]
        vh = await vh.fresh(repo_a)
        full = VhostTopology(id=vh.id, name="/")
        await full.fresh(repo_a)
        assert _snapshot(vh) == _snapshot(full) and vh.version == full.version


async def test_a_float_argument_is_read_back_as_the_database_holds_it(database_url: str) -> None:
    """jsonb prints 1e23 as an integer: a headers binding with it routes on this node as
    it does on every node that read it from the database."""
    async with _guest_session(database_url) as (repo, broker, a):
        await broker.declare_exchange(a, "hx", "headers", False, False, False, False, {})
        await broker.declare_queue(a, "hq", False, False, False, False, {})
        await broker.bind_queue(a, "hq", "hx", "", {"x-match": "all", "n": 1e23})
        vh = await a.vhost.fresh(repo)
        full = VhostTopology(id=vh.id, name="/")
        await full.fresh(repo)
        ex, fx = vh.exchanges_by_name["hx"], full.exchanges_by_name["hx"]
        assert ex.bindings[0].arguments == fx.bindings[0].arguments

        def headers() -> dict[str, Any]:
            return {"n": 1e23}

        assert route(vh.exchanges, ex, "", headers) == route(full.exchanges, fx, "", headers)
