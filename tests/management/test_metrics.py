"""``/metrics`` on the management listener: rabbitmq_prometheus names (compared with
RabbitMQ's own 15692/metrics) and Cavalcade's histograms, values that follow traffic."""

from __future__ import annotations

import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Api, unique, wait_for

SHARED = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_messages_published_total",
    "rabbitmq_connections",
    "rabbitmq_channels",
    "rabbitmq_consumers",
    "rabbitmq_queues",
    "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_delivered_get_manual_ack_total",
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_get_empty_total",
    "rabbitmq_identity_info",
    "rabbitmq_build_info",
]
OURS = [
    "cavalcade_batch_commit_seconds_bucket",
    "cavalcade_batch_commit_seconds_count",
    "cavalcade_batch_rows_bucket",
    "cavalcade_claim_seconds_bucket",
    "cavalcade_publish_backlog_bytes",
    "cavalcade_blocked_connections",
    "cavalcade_database_up",
    "cavalcade_pool_connections",
    "cavalcade_pool_waiting",
    "cavalcade_node_heartbeat_age_seconds",
]


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def names(found: dict) -> set[str]:
    return {name for name, _ in found}


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_names_and_labels_match_rabbitmq_prometheus(node: Api) -> None:
    try:
        theirs = samples("http://127.0.0.1:15692/metrics")
    except requests.RequestException:
        pytest.skip("no rabbitmq_prometheus on 127.0.0.1:15692")
    ours = samples(node.root + "metrics")
    for name in SHARED:
        assert name in names(theirs), name  # what we copy really exists there
        assert name in names(ours), name
    received = [labels for n, labels in ours if n == "rabbitmq_global_messages_received_total"]
    assert received == [(("protocol", "amqp091"),)]
    assert [labels for n, labels in theirs if n == "rabbitmq_global_messages_received_total"] == (
        received
    )
    for name in OURS:
        assert name in names(ours), name


def test_values_follow_traffic(node: Api) -> None:
    queue = unique("metrics")
    base = samples(node.root + "metrics")
    conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        for _ in range(4):
            ch.basic_publish("", queue, b"m")
        method, _, _ = ch.basic_get(queue)
        ch.basic_ack(method.delivery_tag)
        per_object = samples(node.root + "metrics/per-object")
        labels = {"vhost": "/", "queue": queue}
        assert value(per_object, "rabbitmq_queue_messages_ready", **labels) == 3
        assert value(per_object, "rabbitmq_queue_messages_published_total", **labels) == 4
        now = samples(node.root + "metrics")
        grew = {
            n: value(now, n, protocol="amqp091") - value(base, n, protocol="amqp091")
            for n in (
                "rabbitmq_global_messages_received_total",
                "rabbitmq_global_messages_confirmed_total",
                "rabbitmq_global_messages_delivered_get_manual_ack_total",
            )
        }
        assert grew == {
            "rabbitmq_global_messages_received_total": 4,
            "rabbitmq_global_messages_confirmed_total": 4,
            "rabbitmq_global_messages_delivered_get_manual_ack_total": 1,
        }
        assert value(now, "rabbitmq_connections") >= 1
        assert value(now, "cavalcade_database_up") == 1
        assert value(now, "cavalcade_batch_commit_seconds_count") > value(
            base, "cavalcade_batch_commit_seconds_count"
        )
        acked = wait_for(
            lambda: (
                value(
                    samples(node.root + "metrics"),
                    "rabbitmq_global_messages_acknowledged_total",
                    protocol="amqp091",
                )
                > value(base, "rabbitmq_global_messages_acknowledged_total", protocol="amqp091")
            )
        )
        assert acked
        ch.queue_delete(queue)
    finally:
        conn.close()
