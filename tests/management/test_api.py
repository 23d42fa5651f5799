"""The management HTTP API over real HTTP against a real node; every ``api`` test runs
the same requests on RabbitMQ's management API too (status codes and JSON fields)."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pika
import pytest
import requests

from .conftest import Api, unique, wait_for

Q = quote


def q_path(name: str, vhost: str = "/") -> str:
    return f"queues/{Q(vhost, safe='')}/{Q(name, safe='')}"


@pytest.fixture
def queue(api: Api):
    name = unique("q")
    assert api.put(q_path(name), {"durable": True}).status_code == 201
    yield name
    api.delete(q_path(name))


def depth(api: Api, name: str, key: str = "messages") -> int:
    return int(api.json(q_path(name)).get(key, 0))


def settles(api: Api, name: str, expected: int, key: str = "messages") -> bool:
    """RabbitMQ's counts trail by up to its 5 s statistics interval, ours are read live."""
    return bool(wait_for(lambda: depth(api, name, key) == expected))


def publish(
    api: Api, routing_key: str, payload: str, exchange: str = "amq.default", **properties: object
) -> dict:
    r = api.post(
        f"exchanges/%2F/{Q(exchange, safe='')}/publish",
        {
            "routing_key": routing_key,
            "payload": payload,
            "payload_encoding": "string",
            "properties": properties,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- auth


def test_no_credentials_is_401_with_a_basic_challenge(api: Api) -> None:
    r = requests.get(api.url("overview"), timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'


def test_wrong_password_is_401_login_failed(api: Api) -> None:
    r = requests.get(api.url("overview"), auth=("guest", "wrong"), timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorized", "reason": "Login failed"}


def test_whoami(api: Api) -> None:
    assert api.json("whoami") == {"name": "guest", "tags": ["administrator"]}


def test_tags_gate_access(api: Api) -> None:
    """No management tag: 401; ``management``: own vhosts only, no users list;
    ``monitoring``: nodes; ``administrator``: everything."""
    names = {tag: unique(tag or "none") for tag in ("", "management", "monitoring")}
    try:
        for tag, name in names.items():
            assert api.put(f"users/{name}", {"password": "pw", "tags": tag}).status_code == 201
        as_user = {t: (n, "pw") for t, n in names.items()}
        r = requests.get(api.url("overview"), auth=as_user[""], timeout=5)
        assert r.status_code == 401
        assert r.json()["reason"] == "Not management user"
        mgmt = as_user["management"]
        assert requests.get(api.url("overview"), auth=mgmt, timeout=5).status_code == 200
        assert requests.get(api.url("users"), auth=mgmt, timeout=5).status_code == 401
        assert requests.get(api.url("nodes"), auth=mgmt, timeout=5).status_code == 401
        # no permissions anywhere: sees no vhost and no queue
        assert requests.get(api.url("vhosts"), auth=mgmt, timeout=5).json() == []
        assert requests.get(api.url("queues"), auth=mgmt, timeout=5).json() == []
        monitor = as_user["monitoring"]
        assert requests.get(api.url("nodes"), auth=monitor, timeout=5).status_code == 200
        assert requests.get(api.url("users"), auth=monitor, timeout=5).status_code == 401
        vhosts = requests.get(api.url("vhosts"), auth=monitor, timeout=5).json()
        assert "/" in [v["name"] for v in vhosts]
    finally:
        for name in names.values():
            api.delete(f"users/{name}")


# --------------------------------------------------------------------------- overview


OVERVIEW_KEYS = {
    "management_version",
    "rates_mode",
    "exchange_types",
    "message_stats",
    "queue_totals",
    "object_totals",
    "node",
    "listeners",
    "cluster_name",
    "product_name",
    "product_version",
    "rabbitmq_version",
    "contexts",
}


def test_overview_fields(node: Api, rabbit: Api) -> None:
    ours, theirs = node.json("overview"), rabbit.json("overview")
    assert OVERVIEW_KEYS <= set(theirs) and OVERVIEW_KEYS <= set(ours)
    assert set(theirs["object_totals"]) == set(ours["object_totals"])
    assert set(theirs["queue_totals"]) == set(ours["queue_totals"])
    # every counter RabbitMQ shows in message_stats, with its *_details.rate
    missing = (
        set(theirs["message_stats"])
        - set(ours["message_stats"])
        - {"disk_reads", "disk_reads_details", "disk_writes", "disk_writes_details"}
    )
    assert not missing
    assert {t["name"] for t in theirs["exchange_types"]} <= {
        t["name"] for t in ours["exchange_types"]
    }


def test_nodes_show_heartbeat_age(node: Api) -> None:
    nodes = node.json("nodes")
    assert len(nodes) == 1
    n = nodes[0]
    assert n["running"] is True
    assert 0 <= n["heartbeat_age"] < 10
    assert n["uptime"] > 0
    assert node.json(f"nodes/{Q(n['name'], safe='')}")["name"] == n["name"]


def test_unknown_path_is_404_json(api: Api) -> None:
    r = api.get("nosuch")
    assert r.status_code == 404
    assert r.json() == {"error": "Object Not Found", "reason": "Not Found"}


# --------------------------------------------------------------------------- queues


def test_queue_put_get_delete_status_codes(api: Api) -> None:
    name = unique("life")
    path = q_path(name)
    assert api.get(path).status_code == 404
    assert api.put(path, {"durable": True}).status_code == 201
    assert api.put(path, {"durable": True}).status_code == 204
    r = api.put(path, {"durable": False})
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"
    assert "inequivalent arg 'durable'" in r.json()["reason"]
    r = api.http.put(api.url(path), data=b"{bad", timeout=5)
    assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "not_json"})
    q = api.json(path)
    assert (q["name"], q["vhost"], q["durable"], q.get("messages", 0)) == (name, "/", True, 0)
    assert api.delete(path).status_code == 204
    assert api.delete(path).status_code == 404
    assert api.get("queues/nosuchvhost").status_code == 404


def _full_stats(api: Api, name: str) -> dict | None:
    q = api.json(q_path(name))
    return q if q.get("messages") and "state" in q else None


def test_queue_fields_match_rabbitmq(node: Api, rabbit: Api) -> None:
    fields = {}
    for api in (node, rabbit):
        name = unique("fields")
        api.put(q_path(name), {"durable": True, "arguments": {"x-max-priority": 3}})
        try:
            publish(api, name, "x")
            fields[api.name] = wait_for(lambda a=api, n=name: _full_stats(a, n))
        finally:
            api.delete(q_path(name))
    ours, theirs = fields["cavalcade"], fields["rabbitmq"]
    internal = {"backing_queue_status", "garbage_collection", "message_stats"}
    assert set(theirs) - set(ours) - internal == set()
    for key in (
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "type",
        "state",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ):
        assert ours[key] == theirs[key], key


def test_publish_get_and_purge(api: Api, queue: str) -> None:
    assert publish(api, queue, "one", content_type="text/plain", headers={"h": 1}) == {
        "routed": True
    }
    assert publish(api, queue, "two", delivery_mode=2) == {"routed": True}
    assert publish(api, "no-such-queue-" + queue, "x") == {"routed": False}
    assert settles(api, queue, 2)
    got = api.post(
        q_path(queue) + "/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}
    ).json()
    assert len(got) == 1
    m = got[0]
    assert (m["payload"], m["payload_encoding"], m["payload_bytes"]) == ("one", "string", 3)
    assert m["properties"] == {"content_type": "text/plain", "headers": {"h": 1}}
    assert (m["exchange"], m["routing_key"], m["redelivered"], m["message_count"]) == (
        "",
        queue,
        False,
        1,
    )
    # requeued: it comes back first, now redelivered; truncate and base64
    got = api.post(
        q_path(queue) + "/get",
        {"count": 5, "ackmode": "ack_requeue_false", "encoding": "base64", "truncate": 2},
    ).json()
    assert [g["payload"] for g in got] == [
        base64.b64encode(b"on").decode(),
        base64.b64encode(b"tw").decode(),
    ]
    assert [g["redelivered"] for g in got] == [True, False]
    assert [g["payload_bytes"] for g in got] == [3, 3]
    assert settles(api, queue, 0)
    publish(api, queue, "three")
    assert settles(api, queue, 1, "messages_ready")
    assert api.delete(q_path(queue) + "/contents").status_code == 204
    assert settles(api, queue, 0)
    bad = api.post(q_path(queue) + "/get", {"count": 1, "ackmode": "nope", "encoding": "auto"})
    # RabbitMQ 3.10 answers 500 (its handler crashes) or, seen on a freshly enabled plugin, 400.
    assert bad.status_code in ((400,) if api.name == "cavalcade" else (400, 500))


def test_publish_to_a_missing_exchange_is_400(api: Api) -> None:
    r = api.post(
        "exchanges/%2F/no.such.exchange/publish",
        {"routing_key": "k", "payload": "p", "payload_encoding": "string", "properties": {}},
    )
    assert r.status_code == 400
    assert r.json()["reason"] == "404 NOT_FOUND - no exchange 'no.such.exchange' in vhost '/'"


def test_counts_follow_a_real_consumer(api: Api, queue: str) -> None:
    """messages_unacknowledged and consumers as an AMQP consumer holds two messages."""
    for i in range(3):
        publish(api, queue, f"m{i}")
    conn = pika.BlockingConnection(pika.URLParameters(api.amqp_url))
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=2)
        ch.basic_consume(queue, lambda *a: None, consumer_tag="mgmt-test")

        def counts() -> tuple[int, int, int] | None:
            conn.process_data_events(0.05)
            q = api.json(q_path(queue))
            got = (q.get("messages_ready"), q.get("messages_unacknowledged"), q.get("consumers"))
            return got if got == (1, 2, 1) else None

        assert wait_for(counts) == (1, 2, 1)

        def listed() -> list[dict] | None:
            # RabbitMQ's consumer list lags its queue counts by a stats interval.
            conn.process_data_events(0.05)
            found = [c for c in api.json("consumers/%2F") if c["queue"]["name"] == queue]
            return found or None

        consumers = wait_for(listed)
        assert consumers is not None and len(consumers) == 1
        c = consumers[0]
        assert (c["consumer_tag"], c["ack_required"], c["exclusive"]) == ("mgmt-test", True, False)

        def details() -> list[str] | None:
            conn.process_data_events(0.05)
            return [d["consumer_tag"] for d in api.json(q_path(queue))["consumer_details"]] or None

        assert wait_for(details) == ["mgmt-test"]
    finally:
        conn.close()


def test_message_stats_count_publishes_and_deliveries(node: Api) -> None:
    name = unique("stats")
    node.put(q_path(name), {})
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", name, b"x%d" % i)
        for _ in range(2):
            method, _, _ = ch.basic_get(name)
            ch.basic_ack(method.delivery_tag)
        conn.close()

        def stats() -> dict | None:
            s = node.json(q_path(name)).get("message_stats", {})
            return s if s.get("publish") == 5 and s.get("get") == 2 else None

        s = wait_for(stats)
        assert s is not None, node.json(q_path(name))
        assert s["deliver_get"] == 2
        assert s["ack"] == 2
        assert "rate" in s["publish_details"]
        overview = node.json("overview")["message_stats"]
        assert overview["publish"] >= 5 and overview["confirm"] >= 5
    finally:
        node.delete(q_path(name))


# --------------------------------------------------------------------------- listing params


def test_pagination_sort_columns_and_name_filter(api: Api) -> None:
    tag = unique("page")
    names = [f"{tag}.{i}" for i in range(5)]
    for i, name in enumerate(names):
        api.put(q_path(name), {})
        for _ in range(i):
            publish(api, name, "x")
    try:
        for i, name in enumerate(names):
            assert settles(api, name, i)
        r = api.get(
            "queues/%2F",
            params={
                "page": 1,
                "page_size": 2,
                "name": tag,
                "sort": "messages",
                "sort_reverse": "true",
                "columns": "name,messages",
            },
        )
        assert r.status_code == 200
        body = r.json()
        assert {
            k: body[k] for k in ("filtered_count", "item_count", "page", "page_count", "page_size")
        } == {"filtered_count": 5, "item_count": 2, "page": 1, "page_count": 3, "page_size": 2}
        assert body["total_count"] >= 5
        assert body["items"] == [
            {"name": names[4], "messages": 4},
            {"name": names[3], "messages": 3},
        ]
        last = api.get("queues/%2F", params={"page": 3, "page_size": 2, "name": tag}).json()
        assert [i["name"] for i in last["items"]] == [names[4]]  # default: by name
        regex = api.get(
            "queues", params={"page": 1, "name": f"^{tag}\\.[13]$", "use_regex": "true"}
        ).json()
        assert [i["name"] for i in regex["items"]] == [names[1], names[3]]
        out = api.get("queues/%2F", params={"page": 9, "page_size": 2, "name": tag})
        assert out.status_code == 400
    finally:
        for name in names:
            api.delete(q_path(name))


# --------------------------------------------------------------------------- exchanges, bindings


def test_exchanges_and_bindings(api: Api, queue: str) -> None:
    x = unique("x")
    xpath = f"exchanges/%2F/{x}"
    assert api.put(xpath, {"type": "topic", "durable": True}).status_code == 201
    try:
        ex = api.json(xpath)
        assert {
            k: ex[k]
            for k in ("name", "type", "durable", "auto_delete", "internal", "arguments", "vhost")
        } == {
            "name": x,
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
            "vhost": "/",
        }
        assert api.put(xpath, {"type": "direct", "durable": True}).status_code == 400
        edge = f"bindings/%2F/e/{x}/q/{queue}"
        r = api.post(edge, {"routing_key": "a.#", "arguments": {}})
        assert r.status_code == 201
        assert r.headers["Location"] == f"{queue}/a.%2523"
        listed = api.json(edge)
        assert listed == [
            {
                "source": x,
                "vhost": "/",
                "destination": queue,
                "destination_type": "queue",
                "routing_key": "a.#",
                "arguments": {},
                "properties_key": "a.%23",
            }
        ]
        queue_bindings = api.json(q_path(queue) + "/bindings")
        assert [b["source"] for b in queue_bindings] == ["", x]  # the default one first
        assert api.json(f"exchanges/%2F/{x}/bindings/source") == listed
        assert publish(api, "a.b.c", "via topic", exchange=x) == {"routed": True}
        assert api.delete(edge + "/" + Q("a.#", safe="")).status_code == 204
        assert api.delete(edge + "/" + Q("a.#", safe="")).status_code == 404
        assert api.json(edge) == []
        assert api.json(f"bindings/%2F/e/{x}/q/no.such.queue") == []
    finally:
        assert api.delete(xpath).status_code == 204
    assert api.delete(xpath).status_code == 404


def test_default_exchange_is_listed(api: Api) -> None:
    names = {e["name"] for e in api.json("exchanges/%2F")}
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"} <= names


# --------------------------------------------------------------------------- admin objects


def test_users_vhosts_permissions(api: Api) -> None:
    user, vhost = unique("user"), unique("vhost")
    try:
        assert (
            api.put(f"users/{user}", {"password": "secret", "tags": "monitoring"}).status_code
            == 201
        )
        assert (
            api.put(f"users/{user}", {"password": "secret", "tags": "monitoring"}).status_code
            == 204
        )
        u = api.json(f"users/{user}")
        assert (u["name"], u["tags"], u["hashing_algorithm"]) == (
            user,
            ["monitoring"],
            "rabbit_password_hashing_sha256",
        )
        assert api.put(f"vhosts/{vhost}", {"description": "d"}).status_code == 201
        assert api.json(f"vhosts/{vhost}")["name"] == vhost
        body = {"configure": "^$", "write": ".*", "read": ".*"}
        assert api.put(f"permissions/{vhost}/{user}", body).status_code == 201
        assert api.put(f"permissions/{vhost}/{user}", body).status_code == 204
        assert api.json(f"permissions/{vhost}/{user}") == {"user": user, "vhost": vhost, **body}
        assert [p["vhost"] for p in api.json(f"users/{user}/permissions")] == [vhost]
        r = requests.get(api.url("whoami"), auth=(user, "secret"), timeout=5)
        assert r.json() == {"name": user, "tags": ["monitoring"]}
        assert api.delete(f"permissions/{vhost}/{user}").status_code == 204
        assert api.get(f"permissions/{vhost}/{user}").status_code == 404
    finally:
        api.delete(f"users/{user}")
        api.delete(f"vhosts/{vhost}")
    assert api.get(f"users/{user}").status_code == 404
    assert api.delete(f"vhosts/{vhost}").status_code == 404


def test_policies(api: Api) -> None:
    name = unique("policy")
    path = f"policies/%2F/{name}"
    body = {
        "pattern": "^mgmt-nothing-matches$",
        "definition": {"max-length": 10},
        "priority": 1,
        "apply-to": "queues",
    }
    try:
        assert api.put(path, body).status_code == 201
        assert api.put(path, body).status_code == 204
        assert api.json(path) == {"vhost": "/", "name": name, **body}
        assert name in [p["name"] for p in api.json("policies/%2F")]
        bad = api.put(path, {**body, "definition": {"max-length": "ten"}})
        assert bad.status_code == 400
    finally:
        assert api.delete(path).status_code == 204
    assert api.get(path).status_code == 404


# --------------------------------------------------------------------------- health


def test_health_checks(api: Api) -> None:
    assert api.json("aliveness-test/%2F") == {"status": "ok"}
    assert api.get("aliveness-test/no-such-vhost").status_code == 404
    for check in ("alarms", "local-alarms", "virtual-hosts"):
        assert api.json(f"health/checks/{check}") == {"status": "ok"}
    amqp_port = int(api.amqp_url.rsplit(":", 1)[1].strip("/"))
    assert api.json(f"health/checks/port-listener/{amqp_port}") == {
        "status": "ok",
        "port": amqp_port,
    }
    r = api.get("health/checks/port-listener/1")
    assert r.status_code == 503
    assert (r.json()["status"], r.json()["missing"]) == ("failed", 1)


# --------------------------------------------------------------------------- connections


def test_connections_and_channels_listed(api: Api) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(api.amqp_url))
    try:
        conn.channel()
        conn.channel().confirm_delivery()
        port = conn._impl.socket.getsockname()[1] if hasattr(conn._impl, "socket") else None
        del port

        def mine() -> list | None:
            conn.process_data_events(0.05)
            found = [
                c
                for c in api.json("connections")
                if c["client_properties"].get("product") == "Pika Python Client Library"
                and c["channels"] == 2
            ]
            return found or None

        found = wait_for(mine)
        assert found, api.json("connections")
        c = found[-1]
        assert (c["user"], c["vhost"], c["protocol"], c["state"]) == (
            "guest",
            "/",
            "AMQP 0-9-1",
            "running",
        )
        assert " -> " in c["name"]
        shown = api.json(f"connections/{Q(c['name'], safe='')}")
        assert shown["name"] == c["name"]
        chans = api.json(f"connections/{Q(c['name'], safe='')}/channels")
        assert sorted(ch["number"] for ch in chans) == [1, 2]
        assert [ch["confirm"] for ch in sorted(chans, key=lambda ch: ch["number"])] == [False, True]
    finally:
        conn.close()
    assert api.get("connections/no-such-connection").status_code == 404


def test_delete_connection_closes_it(api: Api) -> None:
    """DELETE /api/connections/{name} (X-Reason): the client gets connection.close 320."""
    import importlib.util

    if api.name == "cavalcade" and importlib.util.find_spec("cavalcade.broker.control") is None:
        pytest.skip("nodes act on close requests once issue 10's control loop is merged")
    conn = pika.BlockingConnection(pika.URLParameters(api.amqp_url))
    conn.channel()
    reason = "closed by test " + unique("reason")
    try:
        port = _local_port(conn)

        def listed() -> list:
            conn.process_data_events(0.05)
            return [c for c in api.json("connections") if c.get("peer_port") == port]

        ours = wait_for(listed)
        assert ours, api.json("connections")
        r = api.delete(f"connections/{Q(ours[0]['name'], safe='')}", headers={"X-Reason": reason})
        assert r.status_code == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(200):
                conn.process_data_events(0.05)
        assert closed.value.reply_code == 320
        assert reason in closed.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


def _local_port(conn: pika.BlockingConnection) -> int:
    transport = conn._impl._transport  # pika's socket, to find our row by peer port
    return int(transport._sock.getsockname()[1])
