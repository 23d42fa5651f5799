"""Celery tasks sent inside a database transaction (``cavalcade.client.send_task``): an
ordinary ``celery worker`` runs those whose transaction committed, with its result
backend, and never those whose transaction rolled back. Cavalcade only (the function
lives in the broker's database).

The worker runs one task at a time (``-c 1``) from one queue: a rolled-back task sent
before a committed one would have run first, so the committed one's result proves the
other never will.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from celery.result import AsyncResult

from cavalcade import client
from cavalcade.storage.dsn import normalize_dsn

from .conftest import WorkerFactory, unique
from .tasks import make_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def setup(database_url: str, start_broker: Any, tmp_path: Path) -> dict[str, Any]:
    broker = start_broker(database_url)
    results = tmp_path / "results"
    results.mkdir()
    return {
        "dsn": normalize_dsn(database_url),
        "config": {
            "broker_url": broker.url,
            "result_backend": f"file://{results}",
            "task_default_queue": unique("outbox"),
            "broker_connection_retry_on_startup": True,
        },
    }


async def test_committed_task_runs_rolled_back_never(
    setup: dict[str, Any], workers: WorkerFactory
) -> None:
    config = setup["config"]
    app = make_app(config)
    workers(config, concurrency=1)  # declares the queue, then consumes it
    conn = await asyncpg.connect(setup["dsn"])
    try:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE orders (id int)")
                await client.send_task(conn, app, "t.add", [1, 1], {}, task_id="rolled-back")
                raise RuntimeError("the order could not be saved")
        async with conn.transaction():
            await client.send_task(conn, app, "t.add", [2, 3], {}, task_id="committed")
            await client.send_task(conn, app, "t.info", [], {"tag": "by-sql"}, task_id="info")
    finally:
        await conn.close()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, lambda: AsyncResult("committed", app=app).get(60)) == 5
    info = await loop.run_in_executor(None, lambda: AsyncResult("info", app=app).get(60))
    assert info["tag"] == "by-sql" and info["routing_key"] == config["task_default_queue"]
    assert info["exchange"] == "" and info["retries"] == 0
    assert AsyncResult("rolled-back", app=app).state == "PENDING"


def test_by_app_name_with_psycopg(setup: dict[str, Any], workers: WorkerFactory) -> None:
    """No Celery app on the sending side: the message is built by hand, as protocol 2."""
    config = setup["config"]
    app = make_app(config)
    workers(config, concurrency=1)
    queue = config["task_default_queue"]
    with psycopg.connect(setup["dsn"]) as conn:
        with conn.transaction():
            client.send_task(conn, "shop", "t.mul", [6, 7], {}, queue=queue, task_id="mul")
    assert AsyncResult("mul", app=app).get(60) == 42


def test_message_matches_celery_send_task(setup: dict[str, Any]) -> None:
    """The hand-built headers are the ones Celery's own ``as_task_v2`` sets."""
    app = make_app(setup["config"])
    _, key, body, by_app = client.celery_message(app, "t.add", [1, 2], {"z": 1}, task_id="x")
    _, key2, body2, by_name = client.celery_message(
        "proj", "t.add", [1, 2], {"z": 1}, task_id="x", queue=key
    )
    assert key == key2 == setup["config"]["task_default_queue"]
    assert (
        body == body2 == b'[[1, 2], {"z": 1}, {"callbacks": null, "errbacks": null,'
        b' "chain": null, "chord": null}]'
    )
    assert set(by_app["headers"]) == set(by_name["headers"])
    for k in ("lang", "task", "id", "root_id", "parent_id", "group", "retries", "eta",
              "expires", "argsrepr", "kwargsrepr", "timelimit", "ignore_result"):  # fmt: skip
        assert by_app["headers"][k] == by_name["headers"][k], k
    for props in (by_app, by_name):
        assert props["content_type"] == "application/json"
        assert props["content_encoding"] == "utf-8"
        assert props["delivery_mode"] == 2 and props["correlation_id"] == "x"
