"""Tasks, results, canvas, delays and control through one shared worker per broker.

The worker is a plain ``celery worker -E -c 2`` (prefork) with ``task_track_started``
so that the rpc backend sees a non-final state (STARTED) first: ``ready()`` polling
then goes through basic.get + reject(requeue=True), as in CLIENTS.md 2.5.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import chain, group
from celery.exceptions import TaskRevokedError

from .conftest import (
    ROOT,
    Broker,
    WorkerFactory,
    delete_queues,
    queue_counts,
    unique,
    wait_for,
)
from .tasks import CONFIG_ENV
from .tasks import make_app as _make_app

pytestmark = pytest.mark.timeout(90)


class Shared:
    def __init__(self, broker: Broker, config: dict[str, Any], worker_name: str) -> None:
        self.broker = broker
        self.config = config
        self.node = worker_name
        self.apps: list[Any] = []
        self.extra_queues: list[str] = []

    def app(self, **overrides: Any):
        app = _make_app({**self.config, **overrides})
        self.apps.append(app)
        return app


@pytest.fixture(scope="module")
def shared(broker: Broker, module_workers: WorkerFactory) -> Iterator[Shared]:
    config = {
        "broker_url": broker.url,
        "result_backend": "rpc://",
        "task_default_queue": unique("basics"),
        "broker_connection_retry_on_startup": True,
        "task_track_started": True,
    }
    worker = module_workers(config, "-E", "-P", "prefork")
    s = Shared(broker, config, worker.name)
    try:
        yield s
    finally:
        queues = [config["task_default_queue"], *s.extra_queues]
        for app in s.apps:
            queues.append(app.backend.oid)
            app.close()
        delete_queues(broker.url, queues)


@pytest.fixture
def app(shared: Shared):
    return shared.app()


def test_result_over_rpc_get(app):
    assert app.tasks["t.add"].delay(2, 3).get(timeout=30) == 5


def test_ready_polling_with_basic_get(app, shared):
    """No .get() first: ready() polls the reply queue (basic.get; STARTED is requeued)."""
    result = app.tasks["t.info"].delay(tag="poll", sleep=1.5)
    states = set()
    deadline = time.monotonic() + 30
    while not result.ready():
        states.add(result.state)
        assert time.monotonic() < deadline, f"never ready; states seen {states}"
        time.sleep(0.1)
    assert result.state == "SUCCESS"
    assert "STARTED" in states  # the non-final state was seen and requeued
    assert result.result["hostname"] == shared.node
    # Polling again gives the cached final state.
    assert result.ready() and result.successful()


def test_many_results_polled_out_of_order(app):
    """Results of other tasks found while polling are kept (acked into the cache)."""
    results = [app.tasks["t.add"].delay(i, 1) for i in range(20)]
    for r in reversed(results):
        wait_for(r.ready, 30, f"task {r.id} ready")
    assert [r.result for r in results] == [i + 1 for i in range(20)]


def test_group_of_hundreds(app):
    add = app.tasks["t.add"]
    result = group(add.s(i, i) for i in range(300)).apply_async()
    assert result.get(timeout=60) == [2 * i for i in range(300)]


def test_chain(app):
    add, mul = app.tasks["t.add"], app.tasks["t.mul"]
    assert chain(add.s(1, 2), add.s(3), mul.s(10)).apply_async().get(timeout=30) == 60


def test_one_megabyte_payload_roundtrip(app):
    """A 1 MB argument and a 1 MB result: multi-frame bodies both ways."""
    payload = base64.b64encode(os.urandom(768 * 1024)).decode()  # 1 MiB of text
    assert len(payload) == 1024 * 1024
    back = app.tasks["t.echo"].delay(payload).get(timeout=60)
    assert hashlib.sha256(back.encode()).digest() == hashlib.sha256(payload.encode()).digest()


def test_retry_with_countdown(app):
    info = app.tasks["t.flaky"].delay(2, countdown=1).get(timeout=30)
    assert info["retries"] == 2
    assert info["eta"] is not None  # the retry was an ETA message


def test_countdown(app):
    sent = time.time()
    info = app.tasks["t.info"].apply_async(kwargs={"tag": "countdown"}, countdown=2).get(timeout=30)
    assert info["eta"] is not None
    eta = datetime.fromisoformat(info["eta"]).timestamp()
    assert eta >= sent + 1.5
    assert info["started"] >= eta - 0.5  # the worker held it until its ETA


def test_eta(app):
    eta = datetime.now(UTC) + timedelta(seconds=2)
    info = app.tasks["t.info"].apply_async(kwargs={"tag": "eta"}, eta=eta).get(timeout=30)
    assert datetime.fromisoformat(info["eta"]) == eta
    assert info["started"] >= eta.timestamp() - 0.5


def test_expires_before_eta_is_revoked(app):
    """expires (1 s) passes while the worker holds the ETA (3 s): REVOKED, never run."""
    result = app.tasks["t.info"].apply_async(kwargs={"tag": "exp"}, countdown=3, expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)


def test_revoke(app, shared):
    result = app.tasks["t.info"].apply_async(kwargs={"tag": "rev"}, countdown=3)
    app.control.revoke(result.id)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    revoked = app.control.inspect(destination=[shared.node], timeout=5).revoked()
    assert result.id in revoked[shared.node]


def test_acks_late(app, shared):
    info = app.tasks["t.info_late"].delay(tag="late").get(timeout=30)
    assert info["hostname"] == shared.node
    # Acked after the result was published: nothing left behind (ready or unacked).
    wait_for(
        lambda: queue_counts(shared.broker.url, shared.config["task_default_queue"])[0] == 0,
        10,
        "queue drained",
    )


def test_inspect_ping_stats_active_queues(app, shared):
    inspect = app.control.inspect(destination=[shared.node], timeout=5)
    assert inspect.ping() == {shared.node: {"ok": "pong"}}
    stats = inspect.stats()[shared.node]
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["broker"]["transport"] == "amqp"
    assert stats["prefetch_count"] >= 8  # concurrency 2 x multiplier 4 (+ any held ETAs)
    queues = inspect.active_queues()[shared.node]
    assert shared.config["task_default_queue"] in [q["name"] for q in queues]


def _celery_cli(config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    import json

    env = dict(os.environ)
    env[CONFIG_ENV] = json.dumps(config)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.celery.tasks", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_inspect_ping(shared):
    out = _celery_cli(shared.config, "inspect", "ping", "-d", shared.node, "-t", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert shared.node in out.stdout and "pong" in out.stdout


def test_add_and_cancel_consumer(app, shared):
    extra = unique("extra")
    shared.extra_queues.append(extra)
    control = app.control
    reply = control.add_consumer(extra, destination=[shared.node], reply=True, timeout=5)
    assert reply and "ok" in reply[0][shared.node], reply
    assert app.tasks["t.add"].apply_async((20, 22), queue=extra).get(timeout=30) == 42
    queues = control.inspect(destination=[shared.node], timeout=5).active_queues()
    assert extra in [q["name"] for q in queues[shared.node]]

    reply = control.cancel_consumer(extra, destination=[shared.node], reply=True, timeout=5)
    assert reply and "ok" in reply[0][shared.node], reply
    wait_for(lambda: queue_counts(shared.broker.url, extra)[1] == 0, 10, "consumer gone")
    app.tasks["t.add"].apply_async((1, 1), queue=extra)
    time.sleep(1)
    assert queue_counts(shared.broker.url, extra) == (1, 0)  # nobody takes it now


def test_purge_cli(shared, broker):
    """``celery purge -f`` empties the app's task queues and reports the count."""
    config = {**shared.config, "task_default_queue": unique("purge")}
    shared.extra_queues.append(config["task_default_queue"])
    app = shared.app(**config)
    for i in range(5):
        app.tasks["t.add"].delay(i, i)
    wait_for(
        lambda: queue_counts(broker.url, config["task_default_queue"])[0] == 5,
        10,
        "5 messages queued",
    )
    out = _celery_cli(config, "purge", "-f")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Purged 5 messages" in out.stdout, out.stdout
    assert queue_counts(broker.url, config["task_default_queue"])[0] == 0


def test_control_purge_api(shared, broker):
    config = {**shared.config, "task_default_queue": unique("purge")}
    shared.extra_queues.append(config["task_default_queue"])
    app = shared.app(**config)
    for i in range(3):
        app.tasks["t.add"].delay(i, i)
    wait_for(
        lambda: queue_counts(broker.url, config["task_default_queue"])[0] == 3,
        10,
        "3 messages queued",
    )
    assert app.control.purge() == 3


def test_events_task_succeeded(app, shared):
    """The worker runs with -E: an event receiver sees heartbeats and task-succeeded."""
    seen: list[dict[str, Any]] = []
    got_heartbeat = threading.Event()
    done = threading.Event()
    wanted: dict[str, str] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("hostname") == shared.node and event["type"] == "worker-heartbeat":
            got_heartbeat.set()
        if event["type"] == "task-succeeded" and event.get("uuid") == wanted.get("id"):
            seen.append(event)
            done.set()

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        thread = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False),
            daemon=True,
        )
        thread.start()
        try:
            assert got_heartbeat.wait(15), "no worker-heartbeat event"
            result = app.tasks["t.add"].delay(4, 4)
            wanted["id"] = result.id
            assert result.get(timeout=30) == 8
            assert done.wait(15), "no task-succeeded event"
        finally:
            receiver.should_stop = True
            thread.join(10)
    assert seen[0]["result"] == "8"
