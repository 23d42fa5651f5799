"""Fixtures of the SQL-surface suite: a broker node with its own database (the tests
need the database URL too), and helpers that wait for messages through AMQP.

* ``node`` (module): ``Node(database_url, broker)``, a ``cavalcade serve`` on a fresh
  database at head.
* ``sql`` (function): an asyncpg connection to that database.
* ``channel`` (function): a pika channel on that node.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pika
import pytest

from cavalcade.storage.dsn import normalize_dsn
from tests.conftest import BrokerProcess, _fresh_database, free_port, spawn_broker


@dataclass
class Node:
    database_url: str
    broker: BrokerProcess

    @property
    def dsn(self) -> str:
        return normalize_dsn(self.database_url)


@pytest.fixture(scope="module")
def node(
    pg_dsn: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    with _fresh_database(pg_dsn, template_database) as url:
        broker = spawn_broker(url, free_port(), tmp_path_factory.mktemp("sqlnode"))
        try:
            broker.wait_ready()
            yield Node(url, broker)
        finally:
            broker.stop()
            broker.report()


@pytest.fixture
async def sql(node: Node) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(node.dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def channel(node: Node) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(node.broker.url))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def name(prefix: str) -> str:
    return f"sql.{prefix}.{uuid.uuid4().hex[:10]}"


def wait_messages(ch: Any, queue: str, count: int, timeout: float = 20.0) -> list[Any]:
    """basic.get (with ack) until ``count`` messages came, or fail after ``timeout``."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{queue}: {len(got)} of {count} messages arrived: {got}")
            time.sleep(0.05)
            continue
        got.append((method, props, body))
    return got


def drained(ch: Any, queue: str) -> list[Any]:
    """Whatever is in the queue right now (basic.get until empty)."""
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))
