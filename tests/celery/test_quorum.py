"""``task_default_queue_type='quorum'``: quorum task queue and native delayed delivery.

With a quorum task queue Celery (5.5+) turns global QoS off and, instead of holding
countdown/ETA tasks unacked in the worker, publishes them into kombu's native
delayed delivery topology: 28 topic exchanges/queues ``celery_delayed_0..27``
(``x-queue-type: quorum``, ``x-message-ttl: 2^level s``, ``x-overflow:
reject-publish``, ``x-dead-letter-exchange`` to the next level,
``x-dead-letter-strategy: at-least-once``), chained by exchange-to-exchange bindings
down to ``celery_delayed_delivery``, to which the worker binds the task exchange
(exchange.bind, key ``#.<routing key>``). Celery uses it only when the task exchange
is not direct, hence ``task_default_exchange_type='topic'`` (as Celery's docs say).
"""

from __future__ import annotations

import time

import kombu
import pytest

from .conftest import queue_counts

pytestmark = pytest.mark.timeout(120)


def test_quorum_queue_tasks_and_native_delayed_delivery(broker, celery_config, make_app, workers):
    config = celery_config(task_default_queue_type="quorum", task_default_exchange_type="topic")
    queue = config["task_default_queue"]
    app = make_app(config)
    w = workers(config)
    assert "Global QoS is disabled" in w.log()

    assert app.tasks["t.add"].delay(20, 1).get(timeout=30) == 21

    # The delayed-delivery topology exists and is what it should be.
    with kombu.Connection(broker.url, connect_timeout=5) as conn:
        channel = conn.default_channel
        channel.exchange_declare("celery_delayed_delivery", type="topic", passive=True)
        for level in (0, 27):
            channel.queue_declare(f"celery_delayed_{level}", passive=True)

    sent = time.time()
    result = app.tasks["t.info"].apply_async(kwargs={"tag": "delayed"}, countdown=3)
    # Not at the worker: the message waits in a celery_delayed_N queue, not in ours.
    stats = app.control.inspect(destination=[w.name], timeout=5).stats()[w.name]
    assert stats["prefetch_count"] == 8  # static: no raise for an ETA task
    info = result.get(timeout=60)
    assert info["started"] >= sent + 2.5
    assert info["exchange"] == "celery_delayed_delivery"
    assert info["redelivered"] is False
    assert queue_counts(broker.url, queue)[0] == 0


def test_quorum_retry_with_countdown(broker, celery_config, make_app, workers):
    config = celery_config(task_default_queue_type="quorum", task_default_exchange_type="topic")
    app = make_app(config)
    workers(config)
    info = app.tasks["t.flaky"].delay(2, countdown=1).get(timeout=60)
    assert info["retries"] == 2
    assert info["exchange"] == "celery_delayed_delivery"
