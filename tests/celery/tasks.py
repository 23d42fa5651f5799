"""The task module of the Celery suite (``celery -A tests.celery.tasks worker``).

The worker and the test process build their apps with :func:`make_app` from the same
configuration: the worker reads it as JSON from ``CELERY_TEST_CONFIG`` (set by the
worker fixture), the tests pass it directly. Keys starting with ``test_`` are not
Celery settings:

* ``test_qos_global``: ``true``/``false`` forces Celery's basic.qos mode (global or
  per-consumer) whatever the broker's product/version says. Celery picks the mode
  from ``server_properties`` (global for RabbitMQ 3.x, per-consumer for anything
  else); this lets both modes run against both brokers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.worker.control import inspect_command

CONFIG_ENV = "CELERY_TEST_CONFIG"


def _force_qos_global(value: bool) -> None:
    from kombu.transport import pyamqp

    def qos_semantics_matches_spec(self: Any, connection: Any) -> bool:
        return not value

    pyamqp.Transport.qos_semantics_matches_spec = qos_semantics_matches_spec  # type: ignore[method-assign]


def _marker(marker_dir: str | None, tag: str | None, request: Any) -> None:
    """Tell the test that this task has started (one empty file per start)."""
    if not marker_dir:
        return
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    name = f"{tag}.{request.hostname}.{int(redelivered)}.{os.getpid()}.{time.time_ns()}"
    Path(marker_dir, name).touch()


def _describe(request: Any, tag: str | None, started: float) -> dict[str, Any]:
    info = request.delivery_info or {}
    return {
        "tag": tag,
        "hostname": request.hostname,
        "redelivered": bool(info.get("redelivered")),
        "exchange": info.get("exchange"),
        "routing_key": info.get("routing_key"),
        "priority": info.get("priority"),
        "eta": request.eta,
        "retries": request.retries,
        "started": started,
        "finished": time.time(),
    }


_redis_clients: dict[str, Any] = {}


def _count(redis_url: str, prefix: str, seq: int) -> None:
    import redis

    client = _redis_clients.get(redis_url)
    if client is None:
        client = _redis_clients[redis_url] = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(f"{prefix}:runs", str(seq), 1)
    pipe.rpush(f"{prefix}:ended", f"{time.time():.6f}")
    pipe.execute()


def make_app(config: dict[str, Any]) -> Celery:
    config = dict(config)
    qos_global = config.pop("test_qos_global", None)
    if qos_global is not None:
        _force_qos_global(bool(qos_global))
    app = Celery("cavalcade_celery_tests", set_as_current=False)
    app.conf.update(config)

    @app.task(name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.mul", shared=False)
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="t.echo", shared=False)
    def echo(payload: Any) -> Any:
        return payload

    def _info(
        self: Any,
        tag: str | None = None,
        sleep: float = 0,
        marker_dir: str | None = None,
        sleep_if_redelivered: bool = True,
    ) -> dict[str, Any]:
        started = time.time()
        _marker(marker_dir, tag, self.request)
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        if sleep and (sleep_if_redelivered or not redelivered):
            time.sleep(sleep)
        return _describe(self.request, tag, started)

    @app.task(name="t.info", shared=False, bind=True)
    def info(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _info(self, *args, **kwargs)

    @app.task(name="t.info_late", shared=False, bind=True, acks_late=True)
    def info_late(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _info(self, *args, **kwargs)

    @app.task(name="t.count", shared=False)
    def count(redis_url: str, prefix: str, seq: int) -> None:
        """Count this run in Redis: runs per task number, and when each run ended."""
        _count(redis_url, prefix, seq)

    @app.task(name="t.flaky", shared=False, bind=True, max_retries=5)
    def flaky(self: Any, fail_times: int, countdown: float = 1) -> dict[str, Any]:
        if self.request.retries < fail_times:
            raise self.retry(countdown=countdown)
        return _describe(self.request, "flaky", time.time())

    return app


@inspect_command()
def cavtest_gossip(state: Any) -> dict[str, Any]:
    """The nodes this worker's gossip step sees alive, and whom mingle synced with."""
    consumer = state.consumer
    gossip = getattr(consumer, "gossip", None)
    alive = []
    if gossip is not None and getattr(gossip, "state", None) is not None:
        alive = sorted(w.hostname for w in gossip.state.alive_workers())
    return {"alive": alive}


app = make_app(json.loads(os.environ.get(CONFIG_ENV) or "{}"))
