"""Chaos: nodes and PostgreSQL die mid-stream; no confirmed message is lost.

A publisher (confirms, persistent messages, a durable queue) and a consumer (manual
acks) run in threads. Each talks to one of two nodes and, when its connection is lost,
fails over to the other node (a client with two URLs does exactly this). Then:

* each node in turn is SIGKILLed and restarted on the same port;
* PostgreSQL itself crashes (``pg_ctl stop -m immediate``) and is restarted.

Every confirmed message must be consumed at least once. Duplicates (a delivery that was
in flight when its node died, or a publish retried after a lost confirm) are allowed and
counted, as are the recovery times.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from cavalcade.storage import schema
from cavalcade.storage.dsn import with_database
from cavalcade.storage.embedded import EmbeddedPostgres
from tests.conftest import admin_execute, run_sync

from . import (
    FAST_ENV,
    FAST_THRESHOLD,
    Nodes,
    connect,
    consumer_count,
    kill,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

CLIENT_ERRORS = (pika.exceptions.AMQPError, OSError)


@pytest.fixture
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    started.stop_all(report=bool(getattr(request.node, "rep_call_failed", False)))


class FailoverClient(threading.Thread):
    """A client thread that reconnects to the next URL whenever its connection is lost."""

    def __init__(self, urls: list[str], queue: str, start_at: int) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.queue = queue
        self.index = start_at
        self.halt = threading.Event()
        self.failovers: list[tuple[float, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                try:
                    conn = connect(self.urls[self.index], heartbeat=10)
                except CLIENT_ERRORS:
                    self.index = (self.index + 1) % len(self.urls)
                    time.sleep(0.1)
                    continue
                try:
                    self.session(conn)
                except CLIENT_ERRORS as exc:
                    self.failovers.append((time.monotonic(), type(exc).__name__))
                    self.index = (self.index + 1) % len(self.urls)
                finally:
                    try:
                        if conn.is_open:
                            conn.close()
                    except Exception:  # noqa: BLE001 - a dead connection may refuse
                        pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def session(self, conn: pika.BlockingConnection) -> None:
        raise NotImplementedError


class Publisher(FailoverClient):
    """Publishes 0, 1, 2, ... with confirms; a publish without a confirm is retried."""

    def __init__(self, urls: list[str], queue: str, start_at: int, interval: float) -> None:
        super().__init__(urls, queue, start_at)
        self.interval = interval
        self.next = 0
        self.confirmed: dict[int, float] = {}  # seq -> when its confirm arrived
        self.retries = 0
        self._unconfirmed = False

    def session(self, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(self.queue, durable=True)
        while not self.halt.is_set():
            if self._unconfirmed:
                self.retries += 1
            self._unconfirmed = True
            ch.basic_publish(
                "",
                self.queue,
                str(self.next).encode(),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
            self._unconfirmed = False
            self.confirmed[self.next] = time.monotonic()
            self.next += 1
            time.sleep(self.interval)


class Consumer(FailoverClient):
    """Consumes with manual acks (prefetch 50, acked ten at a time, so a node always holds
    some unacked deliveries of it) and records every delivery."""

    def __init__(self, urls: list[str], queue: str, start_at: int) -> None:
        super().__init__(urls, queue, start_at)
        self.received: list[tuple[int, bool, float]] = []  # (seq, redelivered, when)
        self.unacked = 0  # deliveries received and not acked yet
        self.hold_acks = threading.Event()  # set: acks wait (a kill then finds some held)

    @property
    def url(self) -> str:
        return self.urls[self.index]

    def session(self, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        ch.queue_declare(self.queue, durable=True)
        last_tag = unacked = 0
        for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.1):
            if self.halt.is_set():
                return
            if method is not None:
                self.received.append((int(body), bool(method.redelivered), time.monotonic()))
                last_tag, unacked = method.delivery_tag, unacked + 1
            if self.hold_acks.is_set():
                self.unacked = unacked
                continue
            if unacked >= 10 or (method is None and unacked):
                ch.basic_ack(last_tag, multiple=True)
                unacked = 0
            self.unacked = unacked

    def seen(self) -> set[int]:
        return {seq for seq, _, _ in self.received}


def first_after(times: list[float], moment: float) -> float | None:
    later = [t for t in times if t > moment]
    return min(later) - moment if later else None


def finish(publisher: Publisher, consumer: Consumer, drain_timeout: float) -> dict:
    """Stop the publisher, wait until the consumer has every confirmed message, report."""
    publisher.halt.set()
    publisher.join(30)
    assert not publisher.is_alive(), "publisher stuck"
    assert publisher.error is None, repr(publisher.error)
    confirmed = set(publisher.confirmed)
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline and not confirmed <= consumer.seen():
        time.sleep(0.1)
    consumer.halt.set()
    consumer.join(30)
    assert consumer.error is None, repr(consumer.error)
    missing = sorted(confirmed - consumer.seen())
    duplicates = len(consumer.received) - len(consumer.seen())
    report = {
        "confirmed": len(confirmed),
        "received": len(consumer.received),
        "duplicates": duplicates,
        "redelivered_flagged": sum(1 for _, r, _ in consumer.received if r),
        "publisher_retries": publisher.retries,
        "publisher_failovers": len(publisher.failovers),
        "consumer_failovers": len(consumer.failovers),
        "missing": len(missing),
    }
    assert not missing, f"confirmed but never consumed: {missing[:20]} ... {report}"
    return report


def test_sigkill_each_node_in_turn_mid_stream(nodes, database_url):
    # A 30 s poll interval: every wake-up must come from NOTIFY, the reaper or a consumer.
    a = nodes.spawn(database_url, env=FAST_ENV, poll_interval=30)
    b = nodes.spawn(database_url, env=FAST_ENV, poll_interval=30)
    urls = [a.url, b.url]
    q = unique("chaos-nodes")
    publisher = Publisher(urls, q, start_at=0, interval=0.004)
    consumer = Consumer(urls, q, start_at=1)
    consumer.start()
    wait_until(lambda: consumer_count(b.url, q), 20, "the consumer on B")
    publisher.start()
    recoveries = []
    try:
        for victim_index in (0, 1, 0):
            time.sleep(3.0)
            victim = a if victim_index == 0 else b
            consumer.hold_acks.set()  # so that some deliveries are surely unacked
            time.sleep(0.2)
            # The victim holds unacked deliveries (acks wait until after the kill).
            held = consumer.url == victim.url and consumer.unacked > 0
            killed = time.monotonic()
            kill(victim)
            consumer.hold_acks.clear()
            time.sleep(0.5)
            restarted = nodes.spawn(database_url, port=victim.port, env=FAST_ENV, poll_interval=30)
            if victim_index == 0:
                a = restarted
            else:
                b = restarted
            # Let the survivor declare the victim dead and hand back its deliveries.
            time.sleep(FAST_THRESHOLD + 1.5)
            recoveries.append(
                {
                    "killed": "AB"[victim_index],
                    "held_consumer": held,
                    "publish_resumed_s": round(
                        first_after(list(publisher.confirmed.values()), killed) or -1, 3
                    ),
                    "consume_resumed_s": round(
                        first_after([t for _, _, t in consumer.received], killed) or -1, 3
                    ),
                    "redelivered_after_s": round(
                        first_after([t for _, r, t in consumer.received if r], killed) or -1, 3
                    ),
                }
            )
        report = finish(publisher, consumer, drain_timeout=30)
    finally:
        publisher.halt.set()
        consumer.halt.set()
    print(f"\nchaos (SIGKILL nodes): {report}")
    for r in recoveries:
        print(f"  kill {r}")
    assert report["confirmed"] > 500
    assert report["redelivered_flagged"] > 0
    for r in recoveries:
        assert 0 <= r["publish_resumed_s"] < 5, r
        assert 0 <= r["consume_resumed_s"] < 5, r
        if r["held_consumer"]:
            # the survivor hands back the victim's unacked deliveries after the threshold
            assert 0 <= r["redelivered_after_s"] < FAST_THRESHOLD + 4, r


@pytest.fixture
def owned_postgres() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL of this test's own (it gets crashed), and a migrated database on it."""
    data_dir = Path(tempfile.mkdtemp(prefix="cavalcade-ha-pg-"))
    data_dir.chmod(0o755)  # our own fresh folder: let the server's user traverse it
    embedded = EmbeddedPostgres(data_dir)
    try:
        server = embedded.start()
        admin_execute(server, 'CREATE DATABASE "chaos"')
        url = with_database(server, "chaos")
        run_sync(lambda: schema.upgrade(url, "head"))
        yield embedded, url
    finally:
        try:
            embedded.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def crash(embedded: EmbeddedPostgres) -> None:
    """Crash the server: SIGQUIT to the postmaster, no checkpoint (``-m immediate``)."""
    result = embedded._pg_ctl(["-m", "immediate", "-t", "30", "-w", "stop"])
    assert result.returncode == 0, result.stderr
    assert not embedded.is_running()


def test_postgres_crash_and_restart_mid_stream(nodes, owned_postgres):
    embedded, url = owned_postgres
    # Death threshold above the outage: the nodes ride it out without fencing each other.
    env = {"CAVALCADE_NODE_HEARTBEAT": "1", "CAVALCADE_NODE_DEATH_THRESHOLD": "10"}
    # A 30 s poll interval: after the restart, wake-ups across nodes need LISTEN back.
    a = nodes.spawn(url, env=env, poll_interval=30)
    b = nodes.spawn(url, env=env, poll_interval=30)
    q = unique("chaos-db")
    publisher = Publisher([a.url, b.url], q, start_at=0, interval=0.004)
    consumer = Consumer([a.url, b.url], q, start_at=1)
    consumer.start()
    wait_until(lambda: consumer_count(b.url, q), 20, "the consumer on B")
    publisher.start()
    try:
        time.sleep(3.0)
        before = len(publisher.confirmed)
        crash_started = time.monotonic()
        crash(embedded)
        crashed = time.monotonic()
        time.sleep(4.0)
        restarting = time.monotonic()
        embedded.start()
        restarted = time.monotonic()
        time.sleep(6.0)
        assert a.process.poll() is None, f"node A exited:\n{a.stderr()[-3000:]}"
        assert b.process.poll() is None, f"node B exited:\n{b.stderr()[-3000:]}"
        report = finish(publisher, consumer, drain_timeout=30)
    finally:
        publisher.halt.set()
        consumer.halt.set()
    confirms = sorted(publisher.confirmed.values())
    # Publishers are held while the database is away: no confirm for a commit that
    # cannot have happened (a little grace for confirms of commits just before the crash).
    during = [t for t in confirms if crashed + 0.5 < t < restarting]
    # Publisher on A, consumer on B: once LISTEN is back, deliveries follow confirms closely.
    lag = [
        received - publisher.confirmed[seq]
        for seq, _, received in consumer.received
        if publisher.confirmed.get(seq, 0) > restarted + 3
    ]
    resumed = first_after(confirms, restarting)
    delivered = first_after([t for _, _, t in consumer.received], restarting)
    report.update(
        {
            "confirmed_before_crash": before,
            "crash_took_s": round(crashed - crash_started, 3),
            "restart_took_s": round(restarted - restarting, 3),
            "publish_resumed_after_restart_s": round(resumed or -1, 3),
            "consume_resumed_after_restart_s": round(delivered or -1, 3),
            "confirms_during_outage": len(during),
            "max_lag_after_recovery_s": round(max(lag), 3) if lag else None,
        }
    )
    print(f"\nchaos (PostgreSQL crash): {report}")
    assert not during, f"{len(during)} confirms while the database was down"
    assert report["confirmed"] > before + 100, "publishing did not resume"
    assert resumed is not None and resumed < 15
    assert delivered is not None and delivered < 15
    assert publisher.failovers == [] and consumer.failovers == []  # nobody was disconnected
    assert lag and max(lag) < 1.0
    # both nodes are usable again, and they did not fence each other
    for node in (a, b):
        conn = connect(node.url)
        conn.channel().queue_declare(q, passive=True)
        conn.close()
        assert "fenced" not in node.stderr()


def test_publish_after_a_declare_is_held_while_the_database_is_down(nodes, owned_postgres):
    embedded, url = owned_postgres
    node = nodes.spawn(url)
    conn = connect(node.url)
    ch = conn.channel()
    ch.queue_declare("held", durable=True)
    ch.confirm_delivery()
    crash(embedded)
    restart = threading.Timer(3.0, embedded.start)
    restart.start()
    try:
        ch.basic_publish("", "held", b"x")  # held without a confirm until the restart
    finally:
        restart.join()
    assert ch.basic_get("held", auto_ack=True)[2] == b"x"
    conn.close()
