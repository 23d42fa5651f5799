"""Transactional publish: ``cavalcade_publish()`` inside a transaction, delivered through a
running node once the transaction commits, routed as a ``basic.publish`` would be.

Absence is never awaited with a timer: a rolled-back publish is followed by a committed
one to the same queue, and the outbox is drained in order, so the committed one
arriving alone proves the other never will.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pika
import pytest

from cavalcade import client
from tests.conftest import admin_execute
from tests.waiting import wait_until_async

from .conftest import Node, drained, name, wait_messages

pytestmark = pytest.mark.timeout(90)

ALL_PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": 2,
    "headers": {
        "s": "text",
        "i": 42,
        "neg": -70000,
        "big": 2**40,
        "f": 2.5,
        "b": True,
        "n": None,
        "list": [1, "two", [3]],
        "table": {"nested": {"deep": "yes"}},
    },
    "message_id": "m-1",
    "correlation_id": "c-1",
    "reply_to": "replies",
    "expiration": "60000",
    "priority": 3,
    "timestamp": 1700000000,
    "type": "order.created",
    "user_id": "guest",
    "app_id": "shop",
}


def declare(ch: Any, queue: str, **arguments: Any) -> str:
    ch.queue_declare(queue, arguments=arguments or None)
    return queue


async def test_committed_publish_arrives_with_every_property(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    q = declare(channel, name("props"))
    async with sql.transaction():
        outbox_id = await client.publish(sql, "", q, b"payload", ALL_PROPERTIES)
    assert isinstance(outbox_id, int)
    # the view decodes the stored header bytes back to JSON
    decoded = await wait_until_async(
        lambda: sql.fetchval("SELECT properties FROM cavalcade_messages WHERE queue = $1", q),
        20,
        "the message in cavalcade_messages",
    )
    assert decoded is not None and json.loads(decoded) == ALL_PROPERTIES
    [(method, props, body)] = wait_messages(channel, q, 1)
    assert body == b"payload" and method.exchange == "" and method.routing_key == q
    assert props.content_type == "application/json"
    assert props.content_encoding == "utf-8"
    assert props.delivery_mode == 2
    assert props.message_id == "m-1" and props.correlation_id == "c-1"
    assert props.reply_to == "replies" and props.expiration == "60000"
    assert props.priority == 3 and props.type == "order.created"
    assert props.user_id == "guest" and props.app_id == "shop"
    assert props.timestamp == 1700000000
    h = props.headers
    assert h["s"] == "text" and h["i"] == 42 and h["neg"] == -70000 and h["big"] == 2**40
    assert int(h["f"]) == 2 and h["b"] is True  # pika truncates doubles to int and h["n"] is None
    assert h["list"] == [1, "two", [3]] and h["table"] == {"nested": {"deep": "yes"}}
    assert await sql.fetchval("SELECT count(*) FROM outbox") == 0


async def test_rollback_delivers_nothing_and_order_is_kept(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    q = declare(channel, name("order"))
    with pytest.raises(RuntimeError):
        async with sql.transaction():
            await client.publish(sql, "", q, b"rolled-back")
            raise RuntimeError("the application's transaction fails")
    async with sql.transaction():
        for i in range(200):
            await client.publish(sql, "", q, str(i))
    got = wait_messages(channel, q, 200)
    assert [b for _, _, b in got] == [str(i).encode() for i in range(200)]
    assert drained(channel, q) == []


async def test_routing_as_basic_publish(node: Node, sql: asyncpg.Connection, channel: Any) -> None:
    topic, fan, hdr, inner, alt = (name(k) for k in ("topic", "fan", "hdr", "inner", "alt"))
    channel.exchange_declare(alt, "fanout")
    channel.exchange_declare(topic, "topic", arguments={"alternate-exchange": alt})
    channel.exchange_declare(fan, "fanout")
    channel.exchange_declare(hdr, "headers")
    channel.exchange_declare(inner, "direct")
    qs = {k: declare(channel, name(k)) for k in ("t", "f1", "f2", "h", "e2e", "alt")}
    channel.queue_bind(qs["t"], topic, "orders.*.created")
    channel.queue_bind(qs["f1"], fan)
    channel.queue_bind(qs["f2"], fan)
    channel.queue_bind(qs["h"], hdr, arguments={"x-match": "all", "kind": "a"})
    channel.exchange_bind(inner, topic, "e2e.#")
    channel.queue_bind(qs["e2e"], inner, "e2e.x")
    channel.queue_bind(qs["alt"], alt)
    async with sql.transaction():
        await client.publish(sql, topic, "orders.eu.created", b"topic")
        await client.publish(sql, fan, "", b"fanout")
        await client.publish(sql, hdr, "", b"no-match", {"headers": {"kind": "b"}})
        await client.publish(sql, hdr, "", b"headers", {"headers": {"kind": "a"}})
        await client.publish(sql, topic, "e2e.x", b"e2e")
        await client.publish(sql, topic, "nobody.listens", b"alternate")
    assert [b for *_, b in wait_messages(channel, qs["t"], 1)] == [b"topic"]
    assert [b for *_, b in wait_messages(channel, qs["f1"], 1)] == [b"fanout"]
    assert [b for *_, b in wait_messages(channel, qs["f2"], 1)] == [b"fanout"]
    assert [b for *_, b in wait_messages(channel, qs["h"], 1)] == [b"headers"]
    assert [b for *_, b in wait_messages(channel, qs["e2e"], 1)] == [b"e2e"]
    assert [b for *_, b in wait_messages(channel, qs["alt"], 1)] == [b"alternate"]
    assert drained(channel, qs["h"]) == []


async def test_priorities_ttl_dead_lettering_and_delays(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    prio = declare(channel, name("prio"), **{"x-max-priority": 5})
    dlq = declare(channel, name("dlq"))
    ttl = declare(
        channel, name("ttl"), **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    )
    delayed_ex = name("delayed")
    channel.exchange_declare(
        delayed_ex, "x-delayed-message", arguments={"x-delayed-type": "direct"}
    )
    later = declare(channel, name("later"))
    channel.queue_bind(later, delayed_ex, "k")
    async with sql.transaction():
        for p in (1, 9, 3):
            await client.publish(sql, "", prio, f"p{p}", {"priority": p})
        await client.publish(sql, "", ttl, b"expires", {"expiration": "1"})
        await client.publish(sql, delayed_ex, "k", b"later", {"headers": {"x-delay": 600000}})
    got = wait_messages(channel, prio, 3)
    assert [b for *_, b in got] == [b"p9", b"p3", b"p1"]  # 9 is clamped to 5, still first
    [(_, props, body)] = wait_messages(channel, dlq, 1)
    assert body == b"expires"
    death = props.headers["x-death"][0]
    assert death["queue"] == ttl and death["reason"] == "expired"
    state = await sql.fetchval("SELECT state FROM cavalcade_messages WHERE queue = $1", later)
    assert state == "delayed"


async def test_bad_input_is_refused_in_the_transaction(sql: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="NOT_FOUND - no exchange 'missing'"):
        await client.publish(sql, "missing", "k", b"x")
    with pytest.raises(asyncpg.PostgresError, match="unknown properties: colour"):
        await client.publish(sql, "", "k", b"x", {"colour": "red"})
    with pytest.raises(asyncpg.PostgresError, match="wrong type: priority"):
        await client.publish(sql, "", "k", b"x", {"priority": "high"})
    with pytest.raises(asyncpg.PostgresError, match="no vhost 'nowhere'"):
        await client.publish(sql, "", "k", b"x", vhost="nowhere")
    with pytest.raises(asyncpg.PostgresError, match="internal"):
        await sql.execute(
            "INSERT INTO exchanges (vhost_id, name, type, internal) VALUES (1, 'sql.int', "
            "'direct', true)"
        )
        await client.publish(sql, "sql.int", "k", b"x")


async def test_row_that_cannot_encode_goes_to_outbox_dead(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    q = declare(channel, name("dead"))
    async with sql.transaction():
        bad = await client.publish(sql, "", q, b"bad", {"content_type": "x" * 300})
        await client.publish(sql, "", q, b"good")
    assert [b for *_, b in wait_messages(channel, q, 1)] == [b"good"]
    row = await sql.fetchrow("SELECT error, body FROM outbox_dead WHERE id = $1", bad)
    assert row is not None and "255" in row["error"] and row["body"] == b"bad"
    assert drained(channel, q) == []


async def test_poll_mode_node_drains(database_url: str, start_broker: Any) -> None:
    from cavalcade.storage.dsn import normalize_dsn

    broker = start_broker(database_url, notify="poll", poll_interval=0.2)
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    q = declare(ch, name("poll"))
    sql = await asyncpg.connect(normalize_dsn(database_url))
    try:
        async with sql.transaction():
            await client.publish(sql, "", q, b"polled")
        assert [b for *_, b in wait_messages(ch, q, 1)] == [b"polled"]
    finally:
        await sql.close()
        conn.close()


# --------------------------------------------------------------------------- helpers


async def test_psycopg_sync_and_async(node: Node, channel: Any) -> None:
    import psycopg

    q = declare(channel, name("psycopg"))
    with psycopg.connect(node.dsn) as conn:
        with conn.transaction():
            client.publish(conn, "", q, b"sync-rolled-back")
            raise psycopg.Rollback()
    with psycopg.connect(node.dsn) as conn:
        with conn.transaction():
            assert isinstance(client.publish(conn, "", q, b"sync"), int)
    aconn = await psycopg.AsyncConnection.connect(node.dsn)
    try:
        async with aconn.transaction():
            await client.publish(aconn, "", q, b"async-rolled-back")
            raise psycopg.Rollback()
        async with aconn.transaction():
            await client.publish(aconn, "", q, b"async", {"message_id": "a"})
    finally:
        await aconn.close()
    got = wait_messages(channel, q, 2)
    assert [b for *_, b in got] == [b"sync", b"async"]
    assert got[1][1].message_id == "a"
    assert drained(channel, q) == []


async def test_sqlalchemy_session_and_async_session(node: Node, channel: Any) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session

    q = declare(channel, name("sqla"))
    url = node.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            with session.begin():
                client.publish(session, "", q, b"rolled-back")
                session.rollback()
        with Session(engine) as session, session.begin():
            assert isinstance(client.publish(session, "", q, b"session"), int)
    finally:
        engine.dispose()
    aengine = create_async_engine(node.dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with AsyncSession(aengine) as session:
            async with session.begin():
                await client.publish(session, "", q, b"async-rolled-back")
                await session.rollback()
            async with session.begin():
                await client.publish(session, "", q, b"async-session")
    finally:
        await aengine.dispose()
    got = wait_messages(channel, q, 2)
    assert [b for *_, b in got] == [b"session", b"async-session"]
    assert drained(channel, q) == []


async def test_application_role_needs_only_execute(node: Node, pg_dsn: str, channel: Any) -> None:
    role = name("role").replace(".", "_")
    admin_execute(pg_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        q = declare(channel, name("role"))
        app_dsn = node.dsn.replace("postgres@", f"{role}:pw@", 1)
        app = await asyncpg.connect(app_dsn)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await client.publish(app, "", q, b"refused")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("SELECT count(*) FROM messages")
            owner = await asyncpg.connect(node.dsn)
            try:
                await owner.execute(
                    "GRANT EXECUTE ON FUNCTION"
                    f" cavalcade_publish(text, text, bytea, jsonb, text) TO {role}"
                )
            finally:
                await owner.close()
            async with app.transaction():
                await client.publish(app, "", q, b"granted", {"headers": {"a": json.dumps(1)}})
        finally:
            await app.close()
        assert [b for *_, b in wait_messages(channel, q, 1)] == [b"granted"]
    finally:
        admin_execute(
            node.dsn,
            f"REVOKE ALL ON FUNCTION cavalcade_publish(text, text, bytea, jsonb, text) FROM {role}",
        )
        admin_execute(pg_dsn, f"DROP ROLE IF EXISTS {role}")
