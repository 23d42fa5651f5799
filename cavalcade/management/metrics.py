"""``/metrics`` (and ``/metrics/per-object``) in the Prometheus text format, with
rabbitmq_prometheus names and labels where a concept maps, plus ``cavalcade_*``.

Message counters (``rabbitmq_global_*``) and ``cavalcade_*`` timings are this node's
own, as each RabbitMQ node reports its own. Queue gauges come from PostgreSQL and are
the whole cluster's on every node (aggregate them with ``max``, not ``sum``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cavalcade import __version__
from cavalcade.broker import monitoring
from cavalcade.broker.service import Broker
from cavalcade.broker.stats import Histogram
from cavalcade.storage.stats import NodeRow, QueueDepth

from .context import CTX

PROTOCOL = {"protocol": "amqp091"}
# rabbitmq_global_messages_<name>_total from our counter names.
GLOBAL = {
    "received": ("publish",),
    "routed": ("routed",),
    "unroutable_dropped": ("drop_unroutable",),
    "unroutable_returned": ("return_unroutable",),
    "confirmed": ("confirm",),
    "delivered": ("deliver", "deliver_no_ack", "get", "get_no_ack"),
    "delivered_consume_manual_ack": ("deliver",),
    "delivered_consume_auto_ack": ("deliver_no_ack",),
    "delivered_get_manual_ack": ("get",),
    "delivered_get_auto_ack": ("get_no_ack",),
    "get_empty": ("get_empty",),
    "redelivered": ("redeliver",),
    "acknowledged": ("ack",),
}


class _Snapshot:
    """Everything one scrape reads, fetched once before the collector runs."""

    def __init__(
        self,
        broker: Broker,
        node_name: str,
        queues: list[QueueDepth],
        nodes: list[NodeRow],
        database_up: bool,
        per_object: bool,
    ) -> None:
        self.broker = broker
        self.node_name = node_name
        self.queues = queues
        self.nodes = nodes
        self.database_up = database_up
        self.per_object = per_object


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(_bound(b), float(n)) for b, n in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class _Collector:
    def __init__(self, snap: _Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        broker = s.broker
        yield from self._identity()
        yield from self._queues()
        connections = broker.stats.describe_connections()
        channels = sum(len(c.get("channels", [])) for c in connections)
        consumers = sum(ch.get("consumer_count", 0) for c in connections for ch in c["channels"])
        for name, doc, value in (
            ("rabbitmq_connections", "Connections currently open", len(connections)),
            ("rabbitmq_channels", "Channels currently open", channels),
            ("rabbitmq_consumers", "Consumers currently connected", consumers),
            ("rabbitmq_queues", "Queues available", len(s.queues)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        publishers = sum(
            1 for c in connections for ch in c["channels"] if ch.get("confirm") or False
        )
        g = GaugeMetricFamily(
            "rabbitmq_global_publishers", "Publishers currently connected", labels=["protocol"]
        )
        g.add_metric(["amqp091"], publishers)
        yield g
        g = GaugeMetricFamily(
            "rabbitmq_global_consumers", "Consumers currently connected", labels=["protocol"]
        )
        g.add_metric(["amqp091"], consumers)
        yield g
        totals = broker.stats.totals
        for suffix, keys in GLOBAL.items():
            c = CounterMetricFamily(
                f"rabbitmq_global_messages_{suffix}",
                f"Total number of messages {suffix.replace('_', ' ')}",
                labels=["protocol"],
            )
            c.add_metric(["amqp091"], float(sum(totals.get(k, 0) for k in keys)))
            yield c
        yield from self._cavalcade(connections)

    def _identity(self) -> Iterator[Metric]:
        s = self.snap
        info = InfoMetricFamily("rabbitmq_identity", "Node and cluster identity")
        info.add_metric([], {"rabbitmq_node": s.node_name, "rabbitmq_cluster": s.node_name})
        yield info
        build = InfoMetricFamily("rabbitmq_build", "Version information")
        build.add_metric(
            [], {"rabbitmq_version": "3.10.8", "product": "Cavalcade", "version": __version__}
        )
        yield build

    def _queues(self) -> Iterator[Metric]:
        s = self.snap
        specs: tuple[tuple[str, str, Callable[[QueueDepth], int]], ...] = (
            (
                "rabbitmq_queue_messages_ready",
                "Messages ready to be delivered to consumers",
                lambda q: q.ready,
            ),
            (
                "rabbitmq_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
                lambda q: q.unacked,
            ),
            (
                "rabbitmq_queue_messages",
                "Sum of ready and unacknowledged messages",
                lambda q: q.ready + q.unacked,
            ),
            (
                "rabbitmq_queue_messages_bytes",
                "Size in bytes of ready and unacknowledged messages",
                lambda q: q.ready_bytes + q.unacked_bytes,
            ),
            (
                "rabbitmq_queue_messages_ready_bytes",
                "Size in bytes of ready messages",
                lambda q: q.ready_bytes,
            ),
            (
                "rabbitmq_queue_messages_unacked_bytes",
                "Size in bytes of all unacknowledged messages",
                lambda q: q.unacked_bytes,
            ),
            ("rabbitmq_queue_messages_persistent", "Persistent messages", lambda q: q.persistent),
            ("rabbitmq_queue_consumers", "Consumers on a queue", lambda q: q.consumers),
        )
        for name, doc, get in specs:
            if s.per_object:
                g = GaugeMetricFamily(name, doc, labels=["vhost", "queue"])
                for q in s.queues:
                    g.add_metric([q.vhost, q.name], get(q))
            else:
                g = GaugeMetricFamily(name, doc, value=sum(get(q) for q in s.queues))
            yield g
        published = CounterMetricFamily(
            "rabbitmq_queue_messages_published",
            "Total number of messages published to queues",
            labels=["vhost", "queue"] if s.per_object else None,
        )
        per_queue = s.broker.stats.queues
        if s.per_object:
            for q in s.queues:
                published.add_metric([q.vhost, q.name], per_queue.get(q.id, {}).get("publish", 0))
        else:
            published.add_metric([], sum(c.get("publish", 0) for c in per_queue.values()))
        yield published

    def _cavalcade(self, connections: list[dict[str, Any]]) -> Iterator[Metric]:
        s = self.snap
        stats = s.broker.stats
        t = stats.timings
        yield _histogram(
            "cavalcade_batch_commit_seconds",
            "Time to write and commit one write batch",
            t.batch_commit_seconds,
        )
        yield _histogram(
            "cavalcade_batch_rows",
            "Rows (stored messages and acks) per write batch",
            t.batch_rows,
        )
        yield _histogram(
            "cavalcade_claim_seconds",
            "Time of one claim (UPDATE ... SKIP LOCKED)",
            t.claim_seconds,
        )
        yield CounterMetricFamily(
            "cavalcade_batch_failures",
            "Write batches that failed and were retried",
            value=t.batch_failures,
        )
        yield GaugeMetricFamily(
            "cavalcade_publish_backlog_bytes",
            "Bytes published and not yet committed",
            value=s.broker.publish_backlog().bytes,
        )
        yield GaugeMetricFamily(
            "cavalcade_publish_backlog_limit_bytes",
            "Backlog above which publishers block",
            value=s.broker.publish_backlog().limit,
        )
        yield GaugeMetricFamily(
            "cavalcade_blocked_connections",
            "Connections blocked by the publish backlog",
            value=sum(1 for c in connections if c.get("blocked")),
        )
        yield GaugeMetricFamily(
            "cavalcade_database_up",
            "1 if the database answered this scrape, else 0",
            value=1 if s.database_up else 0,
        )
        pools = monitoring.pools(s.broker)
        size = GaugeMetricFamily(
            "cavalcade_pool_connections", "Pool connections", labels=["pool", "state"]
        )
        waiting = GaugeMetricFamily(
            "cavalcade_pool_waiting", "Tasks waiting for a pool connection", labels=["pool"]
        )
        for name, p in pools.items():
            size.add_metric([name, "idle"], p["idle"])
            size.add_metric([name, "busy"], max(0, p["size"] - p["idle"]))
            waiting.add_metric([name], p["waiting"])
        yield size
        yield waiting
        ages = GaugeMetricFamily(
            "cavalcade_node_heartbeat_age_seconds",
            "Seconds since each live node's heartbeat",
            labels=["node", "node_id"],
        )
        for n in s.nodes:
            ages.add_metric([n.name, str(n.id)], n.heartbeat_age)
        yield ages
        yield GaugeMetricFamily("cavalcade_nodes", "Live nodes in the cluster", value=len(s.nodes))


async def _scrape(request: web.Request, per_object: bool) -> web.Response:
    ctx = request.app[CTX]
    broker = ctx.broker
    queues: list[QueueDepth] = []
    nodes: list[NodeRow] = []
    up = True
    try:
        queues, nodes = await asyncio.wait_for(
            asyncio.gather(monitoring.queue_depths(broker), monitoring.nodes(broker)), 5.0
        )
    except Exception:  # noqa: BLE001 - a scrape must answer even with the database away
        up = False
    snap = _Snapshot(broker, ctx.settings.effective_node_name(), queues, nodes, up, per_object)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def metrics(request: web.Request) -> web.Response:
    return await _scrape(request, per_object=False)


async def metrics_per_object(request: web.Request) -> web.Response:
    return await _scrape(request, per_object=True)


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/per-object", metrics_per_object)
