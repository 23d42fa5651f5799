"""Several workers, pidbox, prefetch modes, priorities and publisher confirms."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import pytest
from celery import group

from .conftest import queue_counts, started_markers, wait_for

pytestmark = pytest.mark.timeout(120)


def gossip_alive(app, node: str) -> list[str]:
    replies = app.control.broadcast("cavtest_gossip", destination=[node], reply=True, timeout=5)
    for reply in replies:
        if node in reply:
            return reply[node]["alive"]
    return []


def test_gossip_and_mingle_between_two_workers(broker, celery_config, make_app, workers):
    config = celery_config()
    app = make_app(config)
    w1 = workers(config)
    w2 = workers(config)
    # w2 found w1 at startup (mingle: a broadcast "hello" and replies on its reply queue).
    assert re.search(r"mingle: sync with \d+ nodes", w2.log()), w2.log()
    # Each sees the other's heartbeats (gossip: the celeryev topic exchange, worker.#).
    wait_for(lambda: w2.name in gossip_alive(app, w1.name), 20, "w1 sees w2")
    wait_for(lambda: w1.name in gossip_alive(app, w2.name), 20, "w2 sees w1")
    # Both answer a broadcast ping.
    replies = app.control.inspect(destination=[w1.name, w2.name], timeout=5).ping()
    assert set(replies) == {w1.name, w2.name}
    # A warm shutdown of w2 sends worker-offline: w1 forgets it.
    assert w2.terminate() == 0
    wait_for(lambda: w2.name not in gossip_alive(app, w1.name), 20, "w1 forgets w2")
    assert app.tasks["t.add"].delay(1, 2).get(timeout=30) == 3


def test_same_node_name_gets_405_on_pidbox(broker, celery_config, make_app, workers):
    """The pidbox queue is exclusive: the second node of the same name is refused."""
    config = celery_config()
    app = make_app(config)
    w1 = workers(config)
    w2 = workers(config, name=w1.name, ready=False)
    wait_for(lambda: not w2.alive(), 60, "the duplicate worker to exit")
    log = w2.log()
    assert w2.returncode != 0, log
    assert "RESOURCE_LOCKED" in log and "405" in log, log
    assert f"{w1.name}.celery.pidbox" in log, log
    # The first one is untouched.
    assert app.control.inspect(destination=[w1.name], timeout=5).ping() == {w1.name: {"ok": "pong"}}
    assert app.tasks["t.add"].delay(2, 2).get(timeout=30) == 4


@pytest.mark.parametrize("qos_global", [True, False], ids=["global", "per_consumer"])
def test_prefetch_raised_and_lowered_for_eta_tasks(
    broker, celery_config, make_app, workers, marker_dir, qos_global
):
    """basic.qos changed at runtime: ETA tasks must not block the window.

    Celery sends global=True to RabbitMQ 3.x and global=False to other brokers
    (and for quorum queues); ``test_qos_global`` forces each mode on each broker.
    """
    if not qos_global and broker.is_rabbitmq:
        pytest.skip(
            "Cavalcade-only: RabbitMQ applies a per-consumer (global=false) basic.qos "
            "change only to consumers created afterwards, so Celery's runtime raise for "
            "ETA tasks has no effect there (Celery logs 'Prefetch count is now static')"
        )
    config = celery_config(worker_prefetch_multiplier=1, test_qos_global=qos_global)
    queue = config["task_default_queue"]
    app = make_app(config)
    w = workers(config, concurrency=1)
    inspect = app.control.inspect(destination=[w.name], timeout=5)
    assert inspect.stats()[w.name]["prefetch_count"] == 1

    info = app.tasks["t.info"]
    etas = [info.apply_async(kwargs={"tag": f"eta{i}"}, countdown=6) for i in range(3)]
    wait_for(lambda: inspect.stats()[w.name]["prefetch_count"] == 4, 10, "prefetch 1 -> 4")
    # With 3 ETA tasks held unacked, a new task still gets through at once.
    quick = info.delay(tag="quick").get(timeout=30)
    eta_infos = [r.get(timeout=30) for r in etas]
    assert quick["finished"] < min(i["started"] for i in eta_infos)
    wait_for(lambda: inspect.stats()[w.name]["prefetch_count"] == 1, 10, "prefetch back to 1")

    # The lowered limit holds at the broker: one slow task running (acked on start),
    # one task reserved by the worker, the third stays ready in the queue.
    slow = info.delay(tag="slow", sleep=3, marker_dir=str(marker_dir))
    rest = [info.delay(tag=f"after{i}") for i in range(2)]
    wait_for(lambda: started_markers(marker_dir, "slow"), 15, "slow task started")
    wait_for(lambda: queue_counts(broker.url, queue)[0] == 1, 5, "one message left ready")
    time.sleep(1)
    assert queue_counts(broker.url, queue)[0] == 1
    slow.get(timeout=30)
    assert [r.get(timeout=30)["tag"] for r in rest] == ["after0", "after1"]


def test_priorities_with_x_max_priority(broker, celery_config, make_app, workers):
    """Tasks queued before the worker starts run highest priority first."""
    config = celery_config(task_queue_max_priority=10, worker_prefetch_multiplier=1)
    app = make_app(config)
    priorities = list(range(10))
    random.Random(7).shuffle(priorities)
    results = [
        app.tasks["t.info"].apply_async(kwargs={"tag": str(p), "sleep": 0.05}, priority=p)
        for p in priorities
    ]
    wait_for(
        lambda: queue_counts(broker.url, config["task_default_queue"])[0] == 10,
        10,
        "10 tasks queued",
    )
    workers(config, concurrency=1)
    infos = [r.get(timeout=30) for r in results]
    order = [int(i["tag"]) for i in sorted(infos, key=lambda i: i["started"])]
    assert order == sorted(priorities, reverse=True)
    assert {i["priority"] for i in infos} == set(priorities)


def test_confirm_publish(broker, celery_config, make_app, workers):
    """broker_transport_options={'confirm_publish': True} on client and worker."""
    config = celery_config(broker_transport_options={"confirm_publish": True})
    app = make_app(config)
    workers(config)
    add = app.tasks["t.add"]
    assert group(add.s(i, 1) for i in range(50)).apply_async().get(timeout=60) == [
        i + 1 for i in range(50)
    ]
    info: Any = app.tasks["t.flaky"].delay(1, countdown=0.5).get(timeout=30)
    assert info["retries"] == 1  # the worker's retry publish was confirmed too


def test_failover_url_list(broker, celery_config, make_app, workers):
    """broker_url='amqp://dead;amqp://live': kombu fails over to the next URL."""
    from tests.conftest import free_port

    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    config = celery_config(broker_url=f"{dead};{broker.url}")
    app = make_app(config)
    workers(config)
    assert app.tasks["t.add"].delay(5, 5).get(timeout=60) == 10
