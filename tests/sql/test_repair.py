"""The operators' SQL surface on a running node: the stable views and the repair
functions of migration 0007 (see docs/sql.md)."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import asyncpg
import pika
import pytest

from .conftest import Node, drained, name, wait_messages

pytestmark = pytest.mark.timeout(90)


def publish(ch: Any, queue: str, bodies: list[str], **props: Any) -> None:
    ch.confirm_delivery()
    for body in bodies:
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, **props))


def fresh_channel(url: str) -> tuple[pika.BlockingConnection, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


async def test_queue_stats_and_decoded_messages(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    q = name("stats")
    channel.queue_declare(q, arguments={"x-max-priority": 4})
    publish(channel, q, ["a", "b", "c"], headers={"k": "v", "n": 7}, message_id="m", priority=2)
    conn, ch = fresh_channel(node.broker.url)
    try:
        ch.basic_qos(prefetch_count=1)
        ch.basic_consume(q, lambda *_: None)
        ch.connection.process_data_events(time_limit=0.5)
        for _ in range(200):
            row = await sql.fetchrow("SELECT * FROM cavalcade_queue_stats WHERE queue = $1", q)
            if row["unacked"] == 1:
                break
            ch.connection.process_data_events(time_limit=0.05)
        assert row["vhost"] == "/" and row["messages"] == 3
        assert row["ready"] == 2 and row["unacked"] == 1 and row["delayed"] == 0
        assert row["consumers"] == 1 and row["bytes"] == 3
        assert row["oldest_ready_age_s"] >= 0
        states = await sql.fetch(
            "SELECT state, properties, body FROM cavalcade_messages WHERE queue = $1 ORDER BY id",
            q,
        )
        assert [s["state"] for s in states] == ["unacked", "ready", "ready"]
        props = json.loads(states[1]["properties"])
        assert props == {
            "headers": {"k": "v", "n": 7},
            "delivery_mode": 2,
            "priority": 2,
            "message_id": "m",
        }
        nodes = await sql.fetch("SELECT * FROM cavalcade_nodes")
        assert sum(n["unacked"] for n in nodes) >= 1 and not any(n["draining"] for n in nodes)
    finally:
        conn.close()


async def test_requeue_what_a_dead_node_holds(
    node: Node, sql: asyncpg.Connection, channel: Any, start_broker: Any
) -> None:
    q = name("dead")
    channel.queue_declare(q)
    publish(channel, q, ["held"])
    other = start_broker(node.database_url, node_name=name("victim"))
    conn, ch = fresh_channel(other.url)
    got: list[bytes] = []
    ch.basic_consume(q, lambda _c, _m, _p, body: got.append(body))
    while not got:
        conn.process_data_events(time_limit=0.1)
    victim = await sql.fetchval(
        "SELECT owner_node FROM messages m JOIN queues q ON q.id = m.queue_id WHERE q.name = $1",
        q,
    )
    assert victim is not None
    with pytest.raises(asyncpg.PostgresError, match="is alive"):
        await sql.fetchval("SELECT cavalcade_requeue_node($1)", victim)
    other.process.send_signal(signal.SIGKILL)
    other.process.wait()
    # Dead, but long before the reaper's 10 s: the operator hands its messages back.
    assert await sql.fetchval("SELECT cavalcade_requeue_node($1, true)", victim) == 1
    [(method, _props, body)] = wait_messages(channel, q, 1)
    assert body == b"held" and method.redelivered
    assert await sql.fetchval("SELECT count(*) FROM nodes WHERE id = $1", victim) == 0


async def test_move_messages_to_a_consumed_queue(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    src, dst = name("src"), name("dst")
    channel.queue_declare(src)
    channel.queue_declare(dst, arguments={"x-max-priority": 3})
    publish(channel, src, [f"m{i}" for i in range(5)], priority=9)
    conn, ch = fresh_channel(node.broker.url)
    got: list[bytes] = []
    try:
        ch.basic_consume(dst, lambda _c, _m, _p, body: got.append(body), auto_ack=True)
        conn.process_data_events(time_limit=0.2)
        moved = await sql.fetchval("SELECT cavalcade_move_messages($1, $2, 3)", src, dst)
        assert moved == 3
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert got == [b"m0", b"m1", b"m2"]
    finally:
        conn.close()
    assert [b for *_, b in drained(channel, src)] == [b"m3", b"m4"]
    with pytest.raises(asyncpg.PostgresError, match="no queue 'nope'"):
        await sql.fetchval("SELECT cavalcade_move_messages($1, 'nope')", src)


async def test_republish_dead_letters_to_their_queue(
    node: Node, sql: asyncpg.Connection, channel: Any
) -> None:
    work, dlq = name("work"), name("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(
        work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    )
    publish(channel, work, ["x", "y"])
    for _ in range(2):
        method, _p, _b = channel.basic_get(work)
        channel.basic_reject(method.delivery_tag, requeue=False)
    dead = wait_messages(channel, dlq, 2, timeout=20)
    assert [p.headers["x-death"][0]["queue"] for _, p, _ in dead] == [work, work]
    # put them back: the dead-letter queue holds them again (the channel confirms)
    for _m, props, body in dead:
        channel.basic_publish("", dlq, body, props)
    assert await sql.fetchval("SELECT cavalcade_republish_dead_letters($1)", dlq) == 2
    back = wait_messages(channel, work, 2)
    assert [b for *_, b in back] == [b"x", b"y"]
    assert back[0][1].headers["x-death"][0]["reason"] == "rejected"
    assert drained(channel, dlq) == []


async def test_purge_by_predicate(node: Node, sql: asyncpg.Connection, channel: Any) -> None:
    q = name("purge")
    channel.queue_declare(q)
    channel.confirm_delivery()
    for i in range(6):
        kind = "stale" if i % 2 else "fresh"
        channel.basic_publish("", q, f"{kind}{i}", pika.BasicProperties(headers={"kind": kind}))
    purged = await sql.fetchval(
        "SELECT cavalcade_purge($1, $2)", q, "properties->'headers'->>'kind' = 'stale'"
    )
    assert purged == 3
    assert [b for *_, b in drained(channel, q)] == [b"fresh0", b"fresh2", b"fresh4"]
