"""Operator changes reach a running node within ~1 s (it polls the database): close
requests, cleared permissions, policies on existing queues, vhost and user limits. The
texts are RabbitMQ's (tests/e2e/test_operations compares where RabbitMQ answers alike)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest

from cavalcade.broker.admin import Admin


def _until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def node(database_url: str, start_broker: Callable[..., Any]) -> tuple[str, Any]:
    return database_url, start_broker(database_url)


def _admin(url: str, fn: Callable[[Admin], Any]) -> Any:
    async def go() -> Any:
        a = await Admin.connect(url)
        try:
            return await fn(a)
        finally:
            await a.close()

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def _params(port: int, user: str = "guest", password: str = "guest", vhost: str = "/") -> Any:
    return pika.ConnectionParameters(
        "127.0.0.1", port, vhost, pika.PlainCredentials(user, password), connection_attempts=1
    )


def test_close_connection_reaches_the_owning_node(node: tuple[str, Any]) -> None:
    url, broker = node
    conn = pika.BlockingConnection(_params(broker.port))
    try:
        conns = _admin(url, lambda a: a.list_connections())
        assert len(conns) == 1 and conns[0].user == "guest" and conns[0].port == broker.port
        _admin(url, lambda a: a.close_connection(conns[0].pid, "maintenance"))
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            conn.process_data_events(5)
            conn.channel()
        assert info.value.reply_code == 320
        assert info.value.reply_text == "CONNECTION_FORCED - maintenance"
    finally:
        if conn.is_open:
            conn.close()
    assert _until(lambda: "closing AMQP connection" in broker.stderr())
    assert "authenticated and granted access to vhost '/'" in broker.stderr()


def test_cleared_permissions_refuse_the_next_operation(node: tuple[str, Any]) -> None:
    url, broker = node

    async def setup(a: Admin) -> None:
        await a.add_user("worker", "pw")
        await a.set_permissions("/", "worker", ".*", ".*", ".*")

    _admin(url, setup)
    conn = pika.BlockingConnection(_params(broker.port, "worker", "pw"))
    try:
        conn.channel().queue_declare("perm-q1")
        _admin(url, lambda a: a.clear_permissions("/", "worker"))

        attempts = iter(range(1000))

        def refused() -> bool:
            name = f"perm-q2-{next(attempts)}"  # a redeclare is issue 9's check
            try:
                conn.channel().queue_declare(name)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 403
                assert exc.reply_text == (
                    f"ACCESS_REFUSED - access to queue '{name}' in vhost '/' refused for user "
                    "'worker'"
                )
                return True
            return False

        assert _until(refused)
    finally:
        conn.close()


def test_policy_applies_to_an_existing_queue(node: tuple[str, Any]) -> None:
    url, broker = node
    conn = pika.BlockingConnection(_params(broker.port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("pol-q")
        ch.queue_declare("pol-dlq")
        _admin(
            url,
            lambda a: a.set_policy(
                "/", "short", "^pol-q$", {"max-length": 2, "dead-letter-exchange": ""}
            ),
        )

        def capped() -> bool:
            ch.queue_purge("pol-q")
            for i in range(4):
                ch.basic_publish("", "pol-q", b"%d" % i)
            return ch.queue_declare("pol-q", passive=True).method.message_count == 2

        assert _until(capped)
        (q,) = [q for q in _admin(url, lambda a: a.list_queues("/")) if q.name == "pol-q"]
        assert q.policy == "short" and q.arguments == {}
    finally:
        conn.close()


def test_limits(node: tuple[str, Any]) -> None:
    url, broker = node
    _admin(url, lambda a: a.set_vhost_limits("/", {"max-connections": 1, "max-queues": 0}))
    first = pika.BlockingConnection(_params(broker.port))
    try:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            pika.BlockingConnection(_params(broker.port))
        assert (
            "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1)"
            " is reached" in str(info.value)
        )

        def queue_refused() -> bool:
            try:
                first.channel().queue_declare("lim-q")
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 406
                assert exc.reply_text == (
                    "PRECONDITION_FAILED - cannot declare queue 'lim-q': queue limit in vhost "
                    "'/' (0) is reached"
                )
                return True
            return False

        assert _until(queue_refused)
    finally:
        first.close()
    _admin(url, lambda a: a.clear_vhost_limits("/"))
    _admin(url, lambda a: a.set_user_limits("guest", {"max-connections": 1, "max-channels": 2}))
    conn = pika.BlockingConnection(_params(broker.port))
    try:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            pika.BlockingConnection(_params(broker.port))
        assert "connection refused for user 'guest': user connection limit (1) is reached" in str(
            info.value
        )
        conn.channel()
        conn.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.channel()
        assert closed.value.reply_code == 530
        assert closed.value.reply_text == (
            "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum "
            "allowed user limit of (2)"
        )
    finally:
        if conn.is_open:
            conn.close()
