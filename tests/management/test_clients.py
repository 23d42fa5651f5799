"""Real consumers of the management API, unchanged: pyrabbit2 (a RabbitMQ HTTP client
library from PyPI) and Flower's broker view (``flower.utils.broker.RabbitMQ``, what its
Broker tab calls with ``--broker_api``)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from pyrabbit2.api import Client

from .conftest import Api, unique, wait_for


def client(api: Api) -> Client:
    return Client(urlsplit(api.base).netloc, "guest", "guest", timeout=10)


def depth(c: Client, q: str) -> int:
    try:
        return int(c.get_queue_depth("/", q))
    except KeyError:  # RabbitMQ: no counts until its first statistics tick
        return -1


def test_pyrabbit2_round_trip(api: Api) -> None:
    c = client(api)
    assert c.is_alive()
    assert "/" in c.get_vhost_names()
    assert c.get_whoami()["name"] == "guest"
    q, x = unique("pyrabbit"), unique("pyrabbit-x")
    c.create_exchange("/", x, "direct", durable=True)
    c.create_queue("/", q, durable=True)
    try:
        c.create_binding("/", x, q, "rk")
        assert [b["routing_key"] for b in c.get_queue_bindings("/", q)] == [q, "rk"]
        assert c.publish("/", x, "rk", "from pyrabbit2") is True
        assert wait_for(lambda: depth(c, q) == 1)
        msgs = c.get_messages("/", q, count=1, requeue=True)
        assert [m["payload"] for m in msgs] == ["from pyrabbit2"]
        assert wait_for(lambda: depth(c, q) == 1)
        assert q in [queue["name"] for queue in c.get_queues("/")]
        c.purge_queue("/", q)
        assert wait_for(lambda: depth(c, q) == 0)
        c.delete_binding("/", x, q, "rk")
        assert [b["routing_key"] for b in c.get_queue_bindings("/", q)] == [q]
        assert c.get_overview()["object_totals"]["queues"] >= 1
        assert any(n.get("running") for n in c.get_nodes())
    finally:
        c.delete_queue("/", q)
        c.delete_exchange("/", x)
    assert q not in [queue["name"] for queue in c.get_queues("/")]


def test_pyrabbit2_users_and_permissions(api: Api) -> None:
    c = client(api)
    user, vhost = unique("pyuser"), unique("pyvhost")
    c.create_vhost(vhost)
    c.create_user(user, "pw", tags="management")
    try:
        c.set_vhost_permissions(vhost, user, ".*", ".*", ".*")
        perms = c.get_vhost_permissions(vhost)
        # the creator of a vhost gets full permissions on it, as on RabbitMQ
        assert sorted((p["user"], p["configure"]) for p in perms) == sorted(
            [(user, ".*"), ("guest", ".*")]
        )
        as_user = Client(urlsplit(api.base).netloc, user, "pw", timeout=10)
        assert [v["name"] for v in as_user.get_all_vhosts()] == [vhost]
    finally:
        c.delete_user(user)
        c.delete_vhost(vhost)


@pytest.mark.parametrize("vhost", ["/", "flower-vhost"])
def test_flower_broker_view(node: Api, vhost: str) -> None:
    """Flower's ``RabbitMQ.queues(names)`` with ``--broker_api`` pointed at our API gives
    the queue depths it shows on its Broker page."""
    from flower.utils.broker import Broker

    q = unique("celery")
    path_vhost = "%2F" if vhost == "/" else vhost
    if vhost != "/":
        assert node.put(f"vhosts/{vhost}", {}).status_code in (201, 204)
        node.put(f"permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    node.put(f"queues/{path_vhost}/{q}", {"durable": True})
    try:
        for i in range(3):
            node.post(
                f"exchanges/{path_vhost}/amq.default/publish",
                {
                    "routing_key": q,
                    "payload": str(i),
                    "payload_encoding": "string",
                    "properties": {},
                },
            )
        amqp = urlsplit(node.amqp_url)
        broker_url = f"amqp://guest:guest@127.0.0.1:{amqp.port}/{'' if vhost == '/' else vhost}"
        if vhost == "/":
            broker_url += "/"
        broker_api = f"http://guest:guest@{urlsplit(node.base).netloc}/api/"
        broker = Broker(broker_url, http_api=broker_api, broker_options={})

        async def ask() -> list[dict]:
            return await broker.queues([q, "no-such-queue"])

        info = asyncio.run(ask())
        assert [(i["name"], i["messages"], i["consumers"]) for i in info] == [(q, 3, 0)]
    finally:
        node.delete(f"queues/{path_vhost}/{q}")
        if vhost != "/":
            node.delete(f"vhosts/{vhost}")
