"""Worker shutdowns and crashes: nothing is lost, unacked tasks come back redelivered."""

from __future__ import annotations

import pytest

from .conftest import queue_counts, started_markers, wait_for

pytestmark = pytest.mark.timeout(120)


def test_warm_shutdown_requeues_prefetched_and_eta_tasks(
    broker, celery_config, make_app, workers, marker_dir
):
    """SIGTERM: the running task finishes; prefetched and ETA-held ones are left
    unacked and the broker requeues them when the worker's connection closes."""
    config = celery_config()
    queue = config["task_default_queue"]
    app = make_app(config)
    info = app.tasks["t.info"]
    w1 = workers(config, concurrency=1)

    slow = info.delay(tag="slow", sleep=3, marker_dir=str(marker_dir))
    wait_for(lambda: started_markers(marker_dir, "slow"), 20, "slow task started")
    queued = [info.delay(tag=f"q{i}") for i in range(3)]
    eta = info.apply_async(kwargs={"tag": "eta"}, countdown=10)
    # All four are at the worker (prefetch 4, +1 for the ETA task), none acked.
    wait_for(lambda: queue_counts(broker.url, queue)[0] == 0, 10, "all prefetched")

    assert w1.terminate() == 0
    assert slow.get(timeout=10)["hostname"] == w1.name  # finished before the exit
    assert queue_counts(broker.url, queue) == (4, 0)

    w2 = workers(config, concurrency=1)
    for r in queued:
        got = r.get(timeout=30)
        assert got["hostname"] == w2.name
        assert got["redelivered"] is True
    got = eta.get(timeout=30)
    assert got["hostname"] == w2.name and got["redelivered"] is True
    assert got["eta"] is not None
    assert queue_counts(broker.url, queue) == (0, 1)


def test_sigkill_mid_task_acks_late_redelivered_to_next_worker(
    broker, celery_config, make_app, workers, marker_dir
):
    """A worker killed (SIGKILL, whole process group) while running an acks_late task:
    the broker sees the TCP connection drop and redelivers it to the next worker."""
    config = celery_config()
    app = make_app(config)
    w1 = workers(config, concurrency=1)
    result = app.tasks["t.info_late"].delay(
        tag="crash", sleep=60, marker_dir=str(marker_dir), sleep_if_redelivered=False
    )
    wait_for(lambda: started_markers(marker_dir, "crash"), 20, "task started on w1")
    w1.kill()
    wait_for(
        lambda: queue_counts(broker.url, config["task_default_queue"])[0] == 1,
        15,
        "the task requeued",
    )

    w2 = workers(config, concurrency=1)
    got = result.get(timeout=30)
    assert got["hostname"] == w2.name
    assert got["redelivered"] is True
    starts = [s.split(".") for s in started_markers(marker_dir, "crash")]
    runs = [
        (hostname, redelivered)
        for _, hostname, redelivered, _, _ in sorted(starts, key=lambda parts: int(parts[4]))
    ]
    assert runs == [(w1.name, "0"), (w2.name, "1")]


def test_sigkill_with_prefetched_tasks_all_redelivered(
    broker, celery_config, make_app, workers, marker_dir
):
    """Early acks: the running task is lost with the worker (acked), every prefetched
    one comes back."""
    config = celery_config()
    app = make_app(config)
    info = app.tasks["t.info"]
    w1 = workers(config, concurrency=1)
    running = info.delay(tag="run", sleep=60, marker_dir=str(marker_dir))
    wait_for(lambda: started_markers(marker_dir, "run"), 20, "task started")
    queued = [info.delay(tag=f"p{i}") for i in range(3)]
    wait_for(
        lambda: queue_counts(broker.url, config["task_default_queue"])[0] == 0, 10, "all prefetched"
    )
    w1.kill()
    wait_for(
        lambda: queue_counts(broker.url, config["task_default_queue"])[0] == 3,
        15,
        "prefetched tasks requeued",
    )
    w2 = workers(config, concurrency=1)
    assert [r.get(timeout=30)["hostname"] for r in queued] == [w2.name] * 3
    assert not running.ready()
