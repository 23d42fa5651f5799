"""``/api/definitions``: RabbitMQ's export format both ways. A file exported from the
local RabbitMQ imports here, and what we export imports into RabbitMQ."""

from __future__ import annotations

import copy

import pytest
import requests

from .conftest import Api, unique


def _topology(api: Api, prefix: str) -> dict:
    doc = api.json("definitions")
    pick = lambda key: sorted(  # noqa: E731
        (
            e
            for e in doc[key]
            if str(e.get("name", e.get("source", ""))).startswith(prefix)
            or str(e.get("destination", "")).startswith(prefix)
        ),
        key=lambda e: sorted(e.items(), key=str),
    )
    return {k: pick(k) for k in ("queues", "exchanges", "bindings")}


def _make(api: Api, prefix: str) -> None:
    x, q = f"{prefix}.x", f"{prefix}.q"
    assert api.put(f"exchanges/%2F/{x}", {"type": "topic", "durable": True}).status_code == 201
    assert (
        api.put(f"queues/%2F/{q}", {"durable": True, "arguments": {"x-max-length": 10}}).status_code
        == 201
    )
    r = api.post(f"bindings/%2F/e/{x}/q/{q}", {"routing_key": "k.#", "arguments": {}})
    assert r.status_code == 201


def _drop(api: Api, prefix: str) -> None:
    api.delete(f"queues/%2F/{prefix}.q")
    api.delete(f"exchanges/%2F/{prefix}.x")


@pytest.mark.parametrize("direction", ["rabbitmq->cavalcade", "cavalcade->rabbitmq"])
def test_definitions_move_between_brokers(node: Api, rabbit: Api, direction: str) -> None:
    source, target = (rabbit, node) if direction.startswith("rabbitmq") else (node, rabbit)
    prefix = unique("defs")
    user = f"{prefix}.user"
    _make(source, prefix)
    assert (
        source.put(f"users/{user}", {"password": "s3cret", "tags": "monitoring"}).status_code == 201
    )
    try:
        exported = source.json("definitions")
        assert {
            "users",
            "vhosts",
            "permissions",
            "queues",
            "exchanges",
            "bindings",
            "policies",
            "parameters",
        } <= set(exported)
        mine = copy.deepcopy(exported)
        # only this test's objects: the brokers share nothing else
        mine["users"] = [u for u in mine["users"] if u["name"] == user]
        mine["permissions"] = []
        mine["policies"] = []
        mine["parameters"] = []
        for key in ("queues", "exchanges", "bindings"):
            mine[key] = _topology(source, prefix)[key]
        r = target.post("definitions", mine)
        assert r.status_code in (201, 204), r.text
        assert _topology(target, prefix) == _topology(source, prefix)
        # the password hash came over: the user logs in with the same password
        who = requests.get(target.url("whoami"), auth=(user, "s3cret"), timeout=5)
        assert who.json() == {"name": user, "tags": ["monitoring"]}
        # importing again changes nothing
        assert target.post("definitions", mine).status_code in (201, 204)
        assert _topology(target, prefix) == _topology(source, prefix)
    finally:
        for api in (source, target):
            _drop(api, prefix)
            api.delete(f"users/{user}")


def test_bad_definitions_are_refused_before_anything_is_written(node: Api) -> None:
    prefix = unique("bad")
    doc = {
        "queues": [
            {
                "name": f"{prefix}.ok",
                "vhost": "/",
                "durable": True,
                "auto_delete": False,
                "arguments": {},
            },
            {
                "name": f"{prefix}.bad",
                "vhost": "/",
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-max-length": -1},
            },
        ]
    }
    r = node.post("definitions", doc)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"
    assert node.get(f"queues/%2F/{prefix}.ok").status_code == 404
    assert node.http.post(node.url("definitions"), data=b"{nope", timeout=5).status_code == 400


def test_definitions_need_administrator(node: Api) -> None:
    user = unique("monitor")
    node.put(f"users/{user}", {"password": "pw", "tags": "monitoring"})
    try:
        r = requests.get(node.url("definitions"), auth=(user, "pw"), timeout=5)
        assert r.status_code == 401
    finally:
        node.delete(f"users/{user}")
