"""A killed node is seen at once: its advisory lock goes with its database session.

The death threshold here is 60 s, so anything that happens within a few seconds of a
SIGKILL comes from the lock, not from the heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from . import Nodes, connect, kill, sql, unique, wait_until

pytestmark = pytest.mark.timeout(120)

SLOW_THRESHOLD = 60.0
LOCK_ENV = {"CAVALCADE_NODE_HEARTBEAT": "2", "CAVALCADE_NODE_DEATH_THRESHOLD": "60"}


@pytest.fixture
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    started.stop_all(report=bool(getattr(request.node, "rep_call_failed", False)))


def node_ids(database_url: str, count: int | None = None) -> set[str]:
    """The ids in the nodes table (first waiting, if asked, until there are ``count``: a
    node listens a moment before its row is written)."""

    def ids() -> set[str]:
        return {str(r[0]) for r in sql(database_url, "SELECT id FROM nodes")}

    if count is None:
        return ids()

    def exactly() -> set[str] | None:
        found = ids()
        return found if len(found) == count else None

    return wait_until(exactly, 20, f"{count} node rows")


def test_sigkilled_node_is_reaped_by_a_survivor_well_before_the_threshold(nodes, database_url):
    a = nodes.spawn(database_url, env=LOCK_ENV)
    before = node_ids(database_url, 1)
    b = nodes.spawn(database_url, env=LOCK_ENV)
    (b_id,) = node_ids(database_url, 2) - before
    q, excl = unique("held"), unique("excl")
    conn_b = connect(b.url)
    ch_b = conn_b.channel()
    ch_b.queue_declare(q, durable=True)
    ch_b.confirm_delivery()
    for i in range(20):
        ch_b.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    conn_a = connect(a.url)
    ch_a = conn_a.channel()
    ch_a.queue_declare(excl, exclusive=True)
    ch_a.basic_qos(prefetch_count=20)
    held: list[int] = []
    ch_a.basic_consume(q, lambda _c, m, _p, _b: held.append(m.delivery_tag))
    wait_until(lambda: conn_a.process_data_events(0.05) or len(held) == 20, 20, "A holds 20")
    # While A lives, its exclusive queue is locked from B at once.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as locked:
        ch_b.queue_declare(excl, exclusive=True)
    assert locked.value.reply_code == 405
    ch_b = conn_b.channel()
    # Let B's liveness loop see A holding its lock (it looks twice a second).
    time.sleep(1.0)

    killed = time.monotonic()
    kill(a)
    wait_until(lambda: node_ids(database_url) == {b_id}, SLOW_THRESHOLD / 2, "A reaped by B")
    reaped_after = time.monotonic() - killed
    owned = sql(database_url, "SELECT count(*) FROM messages WHERE owner_node IS NOT NULL")
    assert owned[0][0] == 0
    got: list[bool] = []
    ch_b.basic_consume(q, lambda _c, m, _p, _b: got.append(m.redelivered), auto_ack=True)
    wait_until(lambda: conn_b.process_data_events(0.05) or len(got) == 20, 20, "20 redelivered")
    assert all(got)
    # A's exclusive queue went with it: B may declare it as its own now.
    ch_b.queue_declare(excl, exclusive=True)
    print(f"\nSIGKILLed node reaped after {reaped_after:.2f} s (threshold {SLOW_THRESHOLD:.0f} s)")
    assert "fenced" not in b.stderr()
    conn_b.close()


def test_declare_meeting_a_dead_owners_exclusive_queue_waits_and_proceeds(nodes, database_url):
    """The declare comes before any liveness loop ran after the kill: it settles the
    owner itself (lock free: reaped now) instead of answering 405."""
    env = dict(LOCK_ENV, CAVALCADE_NODE_LIVENESS_INTERVAL="30")  # only the declare looks
    a = nodes.spawn(database_url, env=env)
    b = nodes.spawn(database_url, env=env)
    excl = unique("pidbox")
    conn_a = connect(a.url)
    conn_a.channel().queue_declare(excl, exclusive=True, auto_delete=True)
    conn_b = connect(b.url)
    ch_b = conn_b.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as locked:
        ch_b.queue_declare(excl, exclusive=True, auto_delete=True)
    assert locked.value.reply_code == 405  # alive: refused at once
    ch_b = conn_b.channel()
    kill(a)
    started = time.monotonic()
    ok = ch_b.queue_declare(excl, exclusive=True, auto_delete=True)
    took = time.monotonic() - started
    print(f"\ndeclare over a SIGKILLed owner's exclusive queue took {took:.2f} s")
    assert ok.method.queue == excl
    conn_b.close()


def test_exclusive_consumer_of_a_dead_node_is_settled(nodes, database_url):
    env = dict(LOCK_ENV, CAVALCADE_NODE_LIVENESS_INTERVAL="30")
    a = nodes.spawn(database_url, env=env)
    b = nodes.spawn(database_url, env=env)
    q = unique("excl-consumer")
    conn_a = connect(a.url)
    ch_a = conn_a.channel()
    ch_a.queue_declare(q, durable=True)
    ch_a.basic_consume(q, lambda *_: None, exclusive=True)
    conn_b = connect(b.url)
    ch_b = conn_b.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch_b.basic_consume(q, lambda *_: None)
    assert refused.value.reply_code == 403
    ch_b = conn_b.channel()
    kill(a)
    ch_b.basic_consume(q, lambda *_: None, exclusive=True)
    conn_b.process_data_events(0.1)
    conn_b.close()


def test_a_survivor_whose_own_session_ends_never_reaps_itself(nodes, database_url):
    """B's lock connection is cut (as a database admin could): B takes its lock again
    and stays the node it was; it never reaps itself."""
    b = nodes.spawn(database_url, env=LOCK_ENV)
    (b_id,) = node_ids(database_url, 1)
    key_sql = (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND ((classid::int8 << 32) | objid::int8) ="
        " ('x' || substr(replace($1::text, '-', ''), 1, 16))::bit(64)::int8"
    )
    (old_pid,) = (r[0] for r in sql(database_url, key_sql, b_id))
    sql(database_url, "SELECT pg_terminate_backend($1)", old_pid)
    new_pid = wait_until(
        lambda: [r[0] for r in sql(database_url, key_sql, b_id) if r[0] != old_pid],
        20,
        "B's lock taken again",
    )
    assert new_pid
    time.sleep(3.0)  # a heartbeat or two, and several liveness looks
    assert node_ids(database_url) == {b_id}
    conn = connect(b.url)
    conn.channel().queue_declare(unique("still-serving"))
    conn.close()
    assert "fenced" not in b.stderr()


def test_poll_mode_sees_a_killed_node_by_its_lock_too(nodes, database_url):
    """No LISTEN/NOTIFY needed: the lock is read from pg_locks."""
    a = nodes.spawn(database_url, env=LOCK_ENV, notify="poll")
    before = node_ids(database_url, 1)
    b = nodes.spawn(database_url, env=LOCK_ENV, notify="poll")
    (b_id,) = node_ids(database_url, 2) - before
    time.sleep(1.0)  # B sees A holding its lock
    kill(a)
    wait_until(lambda: node_ids(database_url) == {b_id}, SLOW_THRESHOLD / 2, "A reaped by B")
    assert "is gone (its database session ended)" in b.stderr()
