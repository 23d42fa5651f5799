"""The admin use-cases (broker/admin.py) on a real PostgreSQL, without any node running."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cavalcade.broker.admin import (
    Admin,
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    ValidationError,
)


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[Admin]:
    a = await Admin.connect(database_url)
    try:
        yield a
    finally:
        await a.close()


async def test_users(admin: Admin) -> None:
    await admin.add_user("alice", "s3cret", ["monitoring"])
    with pytest.raises(AlreadyExistsError, match='User "alice" already exists'):
        await admin.add_user("alice", "x")
    assert (await admin.authenticate_user("alice", "s3cret")).tags == ["monitoring"]
    with pytest.raises(AuthenticationError, match="invalid credentials"):
        await admin.authenticate_user("alice", "wrong")
    await admin.change_password("alice", "new")
    await admin.authenticate_user("alice", "new")
    await admin.set_user_tags("alice", ["administrator", "policymaker"])
    users = {u.name: u for u in await admin.list_users()}
    assert users["alice"].tags == ["administrator", "policymaker"]
    assert users["guest"].tags == ["administrator"]
    await admin.clear_password("alice")
    with pytest.raises(AuthenticationError):
        await admin.authenticate_user("alice", "new")
    await admin.delete_user("alice")
    for call in (
        admin.delete_user("alice"),
        admin.change_password("alice", "x"),
        admin.set_user_tags("alice", []),
    ):
        with pytest.raises(NotFoundError, match='User "alice" does not exist'):
            await call


async def test_vhost_gets_the_default_exchanges_and_delete_removes_everything(
    admin: Admin, database_url: str
) -> None:
    assert await admin.add_vhost("v1", "for tests")
    assert not await admin.add_vhost("v1")  # exists: no-op, as rabbitmqctl
    seeded = sorted((e.name, e.type) for e in await admin.list_exchanges("/"))
    made = sorted((e.name, e.type) for e in await admin.list_exchanges("v1"))
    assert made == seeded
    assert ("amq.match", "headers") in made and ("", "direct") in made
    conn = await asyncpg.connect(database_url)
    try:
        vid = await conn.fetchval("SELECT id FROM vhosts WHERE name = 'v1'")
        await conn.execute("INSERT INTO queues (vhost_id, name) VALUES ($1, 'q1')", vid)
        node = uuid.uuid4()
        await conn.execute("INSERT INTO nodes (id, name) VALUES ($1, 'n')", node)
        await conn.execute(
            "INSERT INTO connections (node_id, id, user_name, vhost_id)"
            " VALUES ($1, 7, 'guest', $2)",
            node,
            vid,
        )
        await admin.delete_vhost("v1")
        assert await conn.fetchval("SELECT count(*) FROM queues WHERE vhost_id = $1", vid) == 0
        req = await conn.fetchrow("SELECT connection_id, reason FROM connection_requests")
        assert tuple(req) == (7, "vhost 'v1' is deleted")
    finally:
        await conn.close()
    with pytest.raises(NotFoundError, match="Virtual host 'v1' does not exist"):
        await admin.delete_vhost("v1")
    assert [v.name for v in await admin.list_vhosts()] == ["/"]


async def test_permissions(admin: Admin) -> None:
    await admin.add_user("bob", "pw")
    await admin.add_vhost("v2")
    await admin.set_permissions("v2", "bob", "^bob-", ".*", "")
    assert [(p.user, p.configure, p.write, p.read) for p in await admin.list_permissions("v2")] == [
        ("bob", "^bob-", ".*", "")
    ]
    assert [p.vhost for p in await admin.list_user_permissions("bob")] == ["v2"]
    await admin.set_permissions("v2", "bob", ".*", ".*", ".*")  # replaces
    assert (await admin.list_permissions("v2"))[0].read == ".*"
    await admin.clear_permissions("v2", "bob")
    assert await admin.list_permissions("v2") == []
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        await admin.set_permissions("v2", "bob", "(", ".*", ".*")
    with pytest.raises(NotFoundError, match="Virtual host 'nope'"):
        await admin.set_permissions("nope", "bob", ".*", ".*", ".*")
    with pytest.raises(NotFoundError, match='User "nobody"'):
        await admin.set_permissions("v2", "nobody", ".*", ".*", ".*")


async def test_policies_and_what_queues_show(admin: Admin, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        vid = await conn.fetchval("SELECT id FROM vhosts WHERE name = '/'")
        await conn.execute(
            "INSERT INTO queues (vhost_id, name, arguments) VALUES"
            " ($1, 'ttl.a', '{\"x-message-ttl\": 500}'), ($1, 'ttl.b', '{}'), ($1, 'other', '{}')",
            vid,
        )
    finally:
        await conn.close()
    await admin.set_policy("/", "ttl", r"^ttl\.", {"message-ttl": 1000, "max-length": 5}, 1)
    await admin.set_policy("/", "low", "ttl", {"expires": 60000}, 0)
    await admin.set_policy("/", "cap", ".*", {"max-length": 2}, operator=True)
    queues = {q.name: q for q in await admin.list_queues("/")}
    assert queues["ttl.a"].policy == "ttl"
    assert queues["ttl.a"].operator_policy == "cap"
    # the x-argument is lower than the policy: it wins; the operator policy caps max-length
    assert queues["ttl.a"].effective_arguments["x-message-ttl"] == 500
    assert queues["ttl.a"].effective_arguments["x-max-length"] == 2
    assert queues["ttl.b"].effective_arguments["x-message-ttl"] == 1000
    assert queues["other"].policy is None and queues["other"].operator_policy == "cap"
    assert [p.name for p in await admin.list_policies("/")] == ["low", "ttl"]
    assert [p.name for p in await admin.list_policies("/", operator=True)] == ["cap"]
    with pytest.raises(ValidationError, match="not recognised policy settings"):
        await admin.set_policy("/", "bad", ".*", {"foo": 1})
    with pytest.raises(ValidationError, match="not recognised"):
        await admin.set_policy("/", "bad", ".*", {"dead-letter-exchange": "x"}, operator=True)
    with pytest.raises(ValidationError, match="message-ttl"):
        await admin.set_policy("/", "bad", ".*", {"message-ttl": "a"})
    await admin.clear_policy("/", "ttl")
    with pytest.raises(NotFoundError):
        await admin.clear_policy("/", "ttl")
    await admin.set_policy("/", "ae", "^amq\\.direct$", {"alternate-exchange": "x"}, 0, "exchanges")
    ex = {e.name: e for e in await admin.list_exchanges("/")}
    assert ex["amq.direct"].policy == "ae" and ex["amq.topic"].policy is None


async def test_limits(admin: Admin) -> None:
    await admin.set_vhost_limits("/", {"max-connections": 10, "max-queues": 3})
    assert await admin.list_vhost_limits("/") == {"max-connections": 10, "max-queues": 3}
    await admin.clear_vhost_limits("/", "max-queues")
    assert await admin.list_vhost_limits("/") == {"max-connections": 10}
    with pytest.raises(ValidationError, match="Unrecognised terms"):
        await admin.set_vhost_limits("/", {"max-foo": 1})
    await admin.set_user_limits("guest", {"max-channels": 4})
    assert await admin.list_user_limits("guest") == {"max-channels": 4}
    with pytest.raises(ValidationError):
        await admin.set_user_limits("guest", {"max-queues": 4})
    await admin.clear_user_limits("guest")
    assert await admin.list_user_limits("guest") == {}


async def test_queues_connections_and_requests(admin: Admin, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        vid = await conn.fetchval("SELECT id FROM vhosts WHERE name = '/'")
        qid = await conn.fetchval(
            "INSERT INTO queues (vhost_id, name) VALUES ($1, 'work') RETURNING id", vid
        )
        ex = await conn.fetchval("SELECT id FROM exchanges WHERE name = 'amq.direct'")
        await conn.execute(
            "INSERT INTO bindings (source_id, queue_id, routing_key) VALUES ($1, $2, 'k')", ex, qid
        )
        node = uuid.uuid4()
        await conn.execute("INSERT INTO nodes (id, name) VALUES ($1, 'node-a')", node)
        for i in range(3):
            await conn.execute(
                "INSERT INTO messages (queue_id, properties, body, owner_node)"
                " VALUES ($1, '\\x0000', 'abc', $2)",
                qid,
                node if i == 0 else None,
            )
        await conn.execute(
            "INSERT INTO consumers (queue_id, node_id, channel, tag) VALUES ($1, $2, 3, 'ctag')",
            qid,
            node,
        )
        await conn.execute(
            "INSERT INTO connections (node_id, id, peer, peer_port, host, port, name, user_name,"
            " vhost_id, client_properties) VALUES ($1, 5, '127.0.0.1', 4000, '127.0.0.1', 5672,"
            " '127.0.0.1:4000 -> 127.0.0.1:5672', 'guest', $2, '{\"connection_name\": \"w1\"}')",
            node,
            vid,
        )
        (q,) = [q for q in await admin.list_queues("/") if q.name == "work"]
        assert (q.messages, q.messages_ready, q.messages_unacknowledged, q.consumers) == (
            3,
            2,
            1,
            1,
        )
        bindings = [
            (b.source_name, b.destination_name, b.routing_key)
            for b in await admin.list_bindings("/")
        ]
        assert bindings == [("", "work", "work"), ("amq.direct", "work", "k")]
        (c,) = await admin.list_connections()
        assert c.name == "127.0.0.1:4000 -> 127.0.0.1:5672" and c.user_provided_name == "w1"
        assert c.node == "node-a" and c.pid == f"<{node}.5>"
        (consumer,) = await admin.list_consumers("/")
        assert consumer.consumer_tag == "ctag" and consumer.ack_required
        (n,) = await admin.list_nodes()
        assert n.running and n.connections == 1
        await admin.close_connection(c.pid, "by pid")
        await admin.close_connection(c.name, "by name")
        with pytest.raises(NotFoundError):
            await admin.close_connection("<00000000-0000-0000-0000-000000000000.1>", "x")
        rows = await conn.fetch("SELECT connection_id, reason FROM connection_requests ORDER BY id")
        assert [tuple(r) for r in rows] == [(5, "by pid"), (5, "by name")]
        assert await admin.purge_queue("/", "work") == 2
        with pytest.raises(ValidationError, match="in use"):
            await admin.delete_queue("/", "work", if_unused=True)
        version = await conn.fetchval("SELECT topology_version FROM vhosts WHERE id = $1", vid)
        assert await admin.delete_queue("/", "work") == 1
        assert (
            await conn.fetchval("SELECT topology_version FROM vhosts WHERE id = $1", vid) > version
        )
        with pytest.raises(NotFoundError, match="no queue 'work' in vhost '/'"):
            await admin.purge_queue("/", "work")
        status = await admin.status()
        assert status.schema_revision == "0006" and status.totals["vhosts"] == 1
    finally:
        await conn.close()
