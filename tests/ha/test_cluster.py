"""Two or more ``cavalcade serve`` nodes on one database behave as one broker.

Everything a client can observe is cluster-wide: deliveries, topology, counts, exclusive
owners, auto-delete, x-expires, single active consumer. A node that dies is noticed by
the others within the death threshold; a node that is stopped says 320 and hands back
what it held.
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from . import (
    FAST_ENV,
    FAST_HEARTBEAT,
    FAST_THRESHOLD,
    Nodes,
    connect,
    kill,
    publish_refused,
    sql,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    started.stop_all(report=bool(getattr(request.node, "rep_call_failed", False)))


def passive(url: str, queue: str) -> tuple[int, int]:
    """(message_count, consumer_count) from a passive declare on a fresh connection."""
    conn = connect(url)
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return ok.message_count, ok.consumer_count
    finally:
        conn.close()


def queue_state(url: str, queue: str) -> int:
    """200 if the queue exists, else the reply code of the passive declare (404, 405)."""
    conn = connect(url)
    try:
        conn.channel().queue_declare(queue, passive=True)
        return 200
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def drain(conn: pika.BlockingConnection, box: list, count: int, timeout: float) -> None:
    """Process the connection's events until ``box`` holds ``count`` items."""
    deadline = time.monotonic() + timeout
    while len(box) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    assert len(box) >= count, f"got {len(box)} of {count} deliveries in {timeout}s"


def collector(box: list) -> callable:
    def on_message(ch, method, properties, body) -> None:
        box.append((time.monotonic(), method, properties, body))

    return on_message


# --------------------------------------------------------------------------- delivery


def test_publish_on_a_is_delivered_to_consumer_on_b_within_milliseconds(start_broker, database_url):
    """With a 30 s poll interval only LISTEN/NOTIFY can wake B's dispatcher in time."""
    a = start_broker(database_url, poll_interval=30)
    b = start_broker(database_url, poll_interval=30)
    q = unique("xnode")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.queue_declare(q, durable=True)
        ch_a.confirm_delivery()
        ch_b = conn_b.channel()
        got: list = []
        ch_b.basic_consume(q, collector(got), auto_ack=False)
        conn_b.process_data_events(time_limit=0.2)  # consume-ok, dispatcher ready
        latencies = []
        for i in range(30):
            sent = time.monotonic()
            ch_a.basic_publish("", q, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
            drain(conn_b, got, i + 1, timeout=5)
            latencies.append(got[i][0] - sent)
            ch_b.basic_ack(got[i][1].delivery_tag)
        assert [g[3] for g in got] == [f"m{i}".encode() for i in range(30)]
        assert not any(g[1].redelivered for g in got)
        median = statistics.median(latencies)
        print(
            f"cross-node latency (publish+confirm on A -> deliver on B): "
            f"median {median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        )
        assert median < 0.25
        assert max(latencies) < 2.0
        conn_b.process_data_events(time_limit=0.2)
        assert passive(a.url, q) == (0, 1)
    finally:
        conn_a.close()
        conn_b.close()


def test_topology_declared_on_a_is_visible_on_b(start_broker, database_url):
    """Declarations, bindings and deletions on A reach B's routing within a few ms."""
    a = start_broker(database_url)
    b = start_broker(database_url)
    ex, q = unique("ex"), unique("q")
    conn_a, conn_b = connect(a.url), connect(b.url)

    def routes_on_b(key: str, body: bytes, exchange: str | None = None) -> bool:
        try:
            ch_b.basic_publish(ex if exchange is None else exchange, key, body, mandatory=True)
            return True
        except pika.exceptions.UnroutableError:
            return False

    try:
        ch_a = conn_a.channel()
        ch_b = conn_b.channel()
        ch_b.confirm_delivery()
        ch_a.exchange_declare(ex, "direct", durable=True)
        ch_a.queue_declare(q, durable=True)
        # B has the exchange in its cache (with no bindings) before A binds.
        assert not routes_on_b("k0", b"warm")
        waits = []
        for i in range(10):
            ch_a.queue_bind(q, ex, f"k{i}")
            bound = time.monotonic()
            wait_until(lambda i=i: routes_on_b(f"k{i}", f"m{i}".encode()), 2, f"bind k{i} on B")
            waits.append(time.monotonic() - bound)
        assert passive(a.url, q)[0] == 10
        for i in range(10):
            ch_a.queue_unbind(q, ex, f"k{i}")
            wait_until(lambda i=i: not routes_on_b(f"k{i}", b"late"), 2, f"unbind k{i} on B")
        late = passive(b.url, q)[0] - 10  # publishes B routed before it saw an unbind
        print(
            f"bind on A -> routes on B after at most {max(waits) * 1000:.1f} ms; "
            f"{late} publish(es) on B routed right after an unbind-ok on A"
        )
        # a queue declared on A is a default-exchange destination on B at once (cache miss)
        q2 = unique("q2")
        ch_a.queue_declare(q2)
        assert routes_on_b(q2, b"direct", exchange="")
        assert passive(a.url, q2)[0] == 1
        ch_a.queue_delete(q2)
        wait_until(lambda: not routes_on_b(q2, b"gone", exchange=""), 2, "queue delete on B")
        # an exchange deleted on A is a 404 on B
        ch_a.exchange_delete(ex)
        wait_until(lambda: publish_refused(b.url, ex, "k1") == 404, 2, "exchange delete on B")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            ch_b.basic_publish(ex, "k1", b"x")
        assert closed.value.reply_code == 404
    finally:
        conn_a.close()
        if conn_b.is_open:
            conn_b.close()


def test_binding_change_on_a_applies_to_the_next_publish_on_b(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    ex, q = unique("ex"), unique("q")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_b = conn_b.channel()
        ch_b.confirm_delivery()
        ch_a.exchange_declare(ex, "direct")
        ch_a.queue_declare(q)
        stale_bind = stale_unbind = 0
        for _ in range(200):
            ch_a.queue_bind(q, ex, "k")
            try:
                ch_b.basic_publish(ex, "k", b"x", mandatory=True)
            except pika.exceptions.UnroutableError:
                stale_bind += 1
            ch_a.queue_unbind(q, ex, "k")
            try:
                ch_b.basic_publish(ex, "k", b"x", mandatory=True)
                stale_unbind += 1
            except pika.exceptions.UnroutableError:
                pass
        print(f"200 rounds: {stale_bind} unroutable after bind, {stale_unbind} routed after unbind")
        assert (stale_bind, stale_unbind) == (0, 0)
    finally:
        conn_a.close()
        conn_b.close()


def test_counts_are_cluster_wide(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("counts")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.confirm_delivery()
        ch_a.queue_declare(q, durable=True)
        for i in range(5):
            ch_a.basic_publish("", q, f"m{i}".encode())
        assert passive(b.url, q) == (5, 0)
        ch_b = conn_b.channel()
        ch_b.basic_qos(prefetch_count=2)
        got: list = []
        ch_b.basic_consume(q, collector(got))
        drain(conn_b, got, 2, timeout=5)
        # two unacked on B: three ready, one consumer, seen from A and from B
        assert passive(a.url, q) == (3, 1)
        assert passive(b.url, q) == (3, 1)
        ch_b2 = conn_b.channel()
        ch_b2.basic_consume(q, collector([]), auto_ack=False)
        conn_b.process_data_events(time_limit=0.1)
        assert passive(a.url, q)[1] == 2
        conn_b.close()
        # B's consumer is gone: its two deliveries are ready again
        assert wait_until(lambda: passive(a.url, q) == (5, 0), 5, "requeue on close")
    finally:
        conn_a.close()
        if conn_b.is_open:
            conn_b.close()


def test_a_consumer_on_b_is_counted_at_once_by_a_declare_on_a(start_broker, database_url):
    """A's waiting consumer lets A answer a declare from memory; B's new consumer ends
    that (its NOTIFY), so A's next declare-ok counts both, and A's count follows B's
    publishes."""
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("counts-memory")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.queue_declare(q, durable=True)
        ch_a.basic_qos(prefetch_count=1)
        got: list = []
        ch_a.basic_consume(q, collector(got))
        conn_a.process_data_events(time_limit=0.3)
        for _ in range(5):  # answered on A from what A knows (its look at B is fresh)
            assert passive(a.url, q) == (0, 1)
        ch_b = conn_b.channel()
        ch_b.basic_qos(prefetch_count=1)
        got_b: list = []
        ch_b.basic_consume(q, collector(got_b))
        # The NOTIFY takes a moment; a second of a stale look at B would not do.
        assert wait_until(lambda: passive(a.url, q) == (0, 2), 0.5, "B's consumer, on A")
        ch_b.confirm_delivery()
        for i in range(4):  # one for each consumer; two ready
            ch_b.basic_publish("", q, f"m{i}".encode())
        drain(conn_a, got, 1, timeout=5)
        drain(conn_b, got_b, 1, timeout=5)
        assert passive(a.url, q) == (2, 2)
    finally:
        conn_a.close()
        conn_b.close()


# --------------------------------------------------------------------------- ownership


def test_exclusive_queue_is_locked_from_the_other_node(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("excl")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        conn_a.channel().queue_declare(q, exclusive=True)
        attempts = {
            "declare": lambda ch: ch.queue_declare(q),
            "declare exclusive": lambda ch: ch.queue_declare(q, exclusive=True),
            "passive": lambda ch: ch.queue_declare(q, passive=True),
            "consume": lambda ch: ch.basic_consume(q, lambda *a: None),
            "get": lambda ch: ch.basic_get(q),
            "purge": lambda ch: ch.queue_purge(q),
            "delete": lambda ch: ch.queue_delete(q),
            "bind": lambda ch: ch.queue_bind(q, "amq.direct", "k"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
                attempt(conn_b.channel())
            assert closed.value.reply_code == 405, what
            assert "RESOURCE_LOCKED" in closed.value.reply_text, what
        conn_a.close()
        # the owner's connection closed on A: the queue is gone for B too
        assert wait_until(lambda: queue_state(b.url, q) == 404, 5, "exclusive queue dropped")
    finally:
        if conn_a.is_open:
            conn_a.close()
        conn_b.close()


def test_exclusive_consumer_refuses_consumers_on_the_other_node(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("exclc")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.queue_declare(q)
        ch_a.basic_consume(q, lambda *a: None, exclusive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            conn_b.channel().basic_consume(q, lambda *a: None)
        assert closed.value.reply_code == 403
    finally:
        conn_a.close()
        conn_b.close()


def test_auto_delete_counts_consumers_on_every_node(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("autodel")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.queue_declare(q, auto_delete=True)
        tag_a = ch_a.basic_consume(q, lambda *a: None)
        ch_b = conn_b.channel()
        tag_b = ch_b.basic_consume(q, lambda *a: None)
        ch_a.basic_cancel(tag_a)
        # the consumer on B keeps the queue
        assert queue_state(a.url, q) == 200
        ch_b.basic_cancel(tag_b)
        assert wait_until(lambda: queue_state(a.url, q) == 404, 5, "auto-delete")
    finally:
        conn_a.close()
        conn_b.close()


def test_x_expires_sees_consumers_on_every_node(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("expires")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        conn_a.channel().queue_declare(q, arguments={"x-expires": 800})
        ch_b = conn_b.channel()
        tag = ch_b.basic_consume(q, lambda *a: None)
        time.sleep(2.0)  # A's sweeper must not expire a queue with a consumer on B
        assert queue_state(a.url, q) == 200
        ch_b.basic_cancel(tag)
        time.sleep(2.0)  # no polling meanwhile: a passive declare counts as a use
        assert queue_state(a.url, q) == 404
    finally:
        conn_a.close()
        conn_b.close()


def test_single_active_consumer_is_cluster_wide(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("sac")
    conn_a, conn_b, conn_p = connect(a.url), connect(b.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.queue_declare(q, durable=True, arguments={"x-single-active-consumer": True})
        got_a: list = []
        got_b: list = []
        ch_a.basic_consume(q, collector(got_a), auto_ack=True)
        conn_a.process_data_events(time_limit=0.1)
        ch_b = conn_b.channel()
        ch_b.basic_consume(q, collector(got_b), auto_ack=True)
        conn_b.process_data_events(time_limit=0.1)
        pub = conn_p.channel()
        pub.confirm_delivery()
        for i in range(5):
            pub.basic_publish("", q, f"m{i}".encode())
        drain(conn_a, got_a, 5, timeout=5)
        conn_b.process_data_events(time_limit=0.5)
        assert got_b == []
        conn_a.close()
        for i in range(5, 8):
            pub.basic_publish("", q, f"m{i}".encode())
        drain(conn_b, got_b, 3, timeout=5)
        assert [g[3] for g in got_b] == [b"m5", b"m6", b"m7"]
    finally:
        for conn in (conn_a, conn_b, conn_p):
            if conn.is_open:
                conn.close()


# --------------------------------------------------------------------------- node death


def test_exclusive_queue_of_a_killed_node_without_locks_waits_for_the_death_threshold(
    nodes, database_url
):
    """Heartbeat only (no advisory locks, as on a database without them): a passive
    declare meeting the killed node's exclusive queue is not answered 405; it waits
    until the node is declared dead and then finds the queue gone (404)."""
    env = dict(FAST_ENV, CAVALCADE_NODE_LOCK="false")
    a = nodes.spawn(database_url, env=env)
    b = nodes.spawn(database_url, env=env)
    q = unique("excl-dead")
    conn_a = connect(a.url)
    conn_a.channel().queue_declare(q, exclusive=True)
    assert queue_state(b.url, q) == 405  # alive: its heartbeat moves
    assert len(sql(database_url, "SELECT id FROM nodes")) == 2
    kill(a)
    killed = time.monotonic()
    assert queue_state(b.url, q) == 404  # held until the owner was reaped, never 405
    detected = time.monotonic() - killed
    print(
        f"exclusive queue of the killed node dropped after {detected:.2f}s "
        f"(threshold {FAST_THRESHOLD}s, heartbeat {FAST_HEARTBEAT}s, no locks)"
    )
    assert FAST_THRESHOLD - FAST_HEARTBEAT - 0.5 <= detected <= FAST_THRESHOLD + 3
    assert len(sql(database_url, "SELECT id FROM nodes")) == 1
    with contextlib.suppress(Exception):
        conn_a.close()


def test_unacked_deliveries_of_a_killed_node_are_redelivered_by_the_survivor(nodes, database_url):
    a = nodes.spawn(database_url, env=FAST_ENV)
    b = nodes.spawn(database_url, env=FAST_ENV)
    q = unique("unacked-dead")
    conn_b = connect(b.url)
    ch_b = conn_b.channel()
    ch_b.queue_declare(q, durable=True)
    ch_b.confirm_delivery()
    for i in range(10):
        ch_b.basic_publish("", q, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    conn_a = connect(a.url)
    ch_a = conn_a.channel()
    ch_a.basic_qos(prefetch_count=20)
    held: list = []
    ch_a.basic_consume(q, collector(held), auto_ack=False)
    drain(conn_a, held, 10, timeout=5)
    assert passive(b.url, q) == (0, 1)
    got: list = []
    ch_b.basic_consume(q, collector(got), auto_ack=False)
    kill(a)
    killed = time.monotonic()
    drain(conn_b, got, 10, timeout=FAST_THRESHOLD + 10)
    recovered = got[-1][0] - killed
    print(f"unacked deliveries of the killed node redelivered after {recovered:.2f}s")
    assert sorted(g[3] for g in got) == sorted(h[3] for h in held)
    assert [g[3] for g in got] == [f"m{i}".encode() for i in range(10)]  # FIFO kept
    assert all(g[1].redelivered for g in got)
    assert recovered <= FAST_THRESHOLD + 3
    for g in got:
        ch_b.basic_ack(g[1].delivery_tag)
    conn_b.process_data_events(time_limit=0.2)
    # the dead node's consumer row went with it
    assert passive(b.url, q) == (0, 1)
    conn_b.close()
    with contextlib.suppress(Exception):
        conn_a.close()


def test_restarted_node_on_the_same_port_is_a_new_node(nodes, database_url):
    a = nodes.spawn(database_url, env=FAST_ENV)
    b = nodes.spawn(database_url, env=FAST_ENV)
    before = wait_until(
        lambda: (
            len(ids := {r["id"] for r in sql(database_url, "SELECT id FROM nodes")}) == 2 and ids
        ),
        20,
        "both nodes' rows",
    )
    kill(a)
    a2 = nodes.spawn(database_url, port=a.port, env=FAST_ENV)
    # The restarted node registers under a new id (a moment after it listens; the dead
    # one may already be reaped, so do not count on seeing three rows).
    rows = wait_until(
        lambda: (
            (ids := {r["id"] for r in sql(database_url, "SELECT id FROM nodes")}) - before and ids
        ),
        20,
        "the restarted node's row",
    )
    assert len(rows) in (2, 3)
    wait_until(
        lambda: len(sql(database_url, "SELECT id FROM nodes")) == 2,
        FAST_THRESHOLD + 5,
        "dead node reaped",
    )
    q = unique("restart")
    conn = connect(a2.url)
    conn.channel().queue_declare(q)
    conn.close()
    assert queue_state(b.url, q) == 200


# --------------------------------------------------------------------------- modes


def test_notify_poll_node_pair(start_broker, database_url):
    a = start_broker(database_url, notify="poll", poll_interval=0.2)
    b = start_broker(database_url, notify="poll", poll_interval=0.2)
    q, ex = unique("poll"), unique("pollex")
    conn_a, conn_b = connect(a.url), connect(b.url)
    try:
        ch_a = conn_a.channel()
        ch_a.queue_declare(q, durable=True)
        ch_a.exchange_declare(ex, "fanout")
        ch_a.confirm_delivery()
        ch_b = conn_b.channel()
        ch_b.confirm_delivery()
        got: list = []
        ch_b.basic_consume(q, collector(got))
        latencies = []
        for i in range(10):
            sent = time.monotonic()
            ch_a.basic_publish("", q, f"m{i}".encode())
            drain(conn_b, got, i + 1, timeout=5)
            latencies.append(got[i][0] - sent)
        print(f"poll mode cross-node latency: median {statistics.median(latencies) * 1000:.0f} ms")
        assert max(latencies) < 2.0
        # B knows the fanout exchange (with no bindings) before A binds the queue
        with pytest.raises(pika.exceptions.UnroutableError):
            ch_b.basic_publish(ex, "", b"warm", mandatory=True)
        ch_a.queue_bind(q, ex)
        bound = time.monotonic()

        def routes() -> bool:
            try:
                ch_b.basic_publish(ex, "", b"via-b", mandatory=True)
                return True
            except pika.exceptions.UnroutableError:
                return False

        wait_until(routes, 10, "binding made on A seen by B in poll mode", interval=0.1)
        print(f"poll mode: binding made on A routes on B after {time.monotonic() - bound:.2f}s")
        drain(conn_b, got, 11, timeout=5)
        assert got[-1][3] == b"via-b"
    finally:
        conn_a.close()
        conn_b.close()


def test_workers_2_serves_on_one_port(start_broker, database_url):
    node = start_broker(database_url, workers=2)
    wait_until(
        lambda: len(sql(database_url, "SELECT id FROM nodes")) == 2, 30, "two nodes registered"
    )
    q = unique("workers")
    conns = [connect(node.url) for _ in range(8)]
    try:
        conns[0].channel().queue_declare(q, durable=True)
        boxes: list[list] = []
        for conn in conns[1:]:
            box: list = []
            conn.channel().basic_consume(q, collector(box))
            boxes.append(box)
        # which node holds each consumer: the kernel spreads the accepts
        holders = sql(database_url, "SELECT DISTINCT node_id FROM consumers")
        print(f"--workers 2: 7 consumers on {len(holders)} node(s)")
        pub = conns[0].channel()
        pub.confirm_delivery()
        for i in range(70):
            pub.basic_publish("", q, f"m{i}".encode())
        deadline = time.monotonic() + 10
        while sum(len(b) for b in boxes) < 70 and time.monotonic() < deadline:
            for conn in conns[1:]:
                conn.process_data_events(time_limit=0.01)
        assert sorted(g[3] for b in boxes for g in b) == sorted(f"m{i}".encode() for i in range(70))
    finally:
        for conn in conns:
            conn.close()
    assert node.stop(timeout=20) == 0
    assert sql(database_url, "SELECT id FROM nodes") == []


def test_sigterm_sends_320_requeues_and_exits(start_broker, database_url):
    a = start_broker(database_url)
    b = start_broker(database_url)
    q = unique("sigterm")
    conn_a = connect(a.url)
    ch_a = conn_a.channel()
    ch_a.queue_declare(q, durable=True)
    ch_a.confirm_delivery()
    ch_a.basic_publish("", q, b"held", pika.BasicProperties(delivery_mode=2))
    held: list = []
    ch_a.basic_consume(q, collector(held))
    drain(conn_a, held, 1, timeout=5)
    a.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn_a.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 320
    assert "CONNECTION_FORCED" in closed.value.reply_text
    code = a.process.wait(15)
    took = time.monotonic() - sent
    print(f"SIGTERM: exit {code} after {took:.2f}s")
    assert code == 0
    assert took < 10
    # what A held is ready again, flagged, on B
    conn_b = connect(b.url)
    method, _props, body = conn_b.channel().basic_get(q, auto_ack=True)
    assert body == b"held" and method.redelivered
    conn_b.close()
    assert len(sql(database_url, "SELECT id FROM nodes")) == 1


def test_notify_poll_needs_no_pg_notify(start_broker, database_url):
    """A stand-in for a database without LISTEN/NOTIFY: pg_notify raises."""
    name = database_url.split("?")[0].rsplit("/", 1)[-1]
    sql(database_url, "CREATE SCHEMA shim")
    sql(
        database_url,
        "CREATE FUNCTION shim.pg_notify(text, text) RETURNS void LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'pg_notify is not supported'; END $$",
    )
    sql(database_url, f'ALTER DATABASE "{name}" SET search_path = public, shim, pg_catalog')
    node = start_broker(database_url, notify="poll", poll_interval=0.2)
    conn = connect(node.url)
    try:
        ch = conn.channel()
        ch.queue_declare("q", durable=True)
        ch.confirm_delivery()
        conn.call_later(5, conn.close)  # a publish that is never confirmed ends the test
        ch.basic_publish("", "q", b"x")
        assert ch.basic_get("q", auto_ack=True)[2] == b"x"
    finally:
        if conn.is_open:
            conn.close()


def test_connections_per_node_are_listed(start_broker, database_url):
    """The management view of connections per node, in SQL: open ones only."""
    a = start_broker(database_url)
    b = start_broker(database_url)
    conns = [connect(a.url), connect(a.url), connect(b.url)]
    try:
        rows = sql(
            database_url,
            "SELECT n.name, count(c.id) AS n FROM nodes n"
            " LEFT JOIN connections c ON c.node_id = n.id GROUP BY n.name ORDER BY n DESC",
        )
        assert sorted(r["n"] for r in rows) == [1, 2]
        listed = sql(database_url, "SELECT user_name, peer, client_properties FROM connections")
        assert {r["user_name"] for r in listed} == {"guest"}
        assert all(r["peer"] == "127.0.0.1" for r in listed)
    finally:
        for c in conns:
            c.close()
    wait_until(
        lambda: not sql(database_url, "SELECT 1 FROM connections"), 5, "connections unlisted"
    )
