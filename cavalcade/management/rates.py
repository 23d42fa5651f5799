"""Cluster statistics from what each node published: totals and rates added up, and
RabbitMQ's ``*_details`` objects (``{"rate": r}``, with ``samples`` on request)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cavalcade.broker.stats import GLOBAL_COUNTERS, QUEUE_COUNTERS
from cavalcade.storage.stats import NodeRow

STALE_AFTER = 30.0  # a node's rates older than this are not current any more
OVERVIEW_KEYS = tuple(k for k in GLOBAL_COUNTERS if k != "routed")


def _add(into: dict[str, float], values: Mapping[str, Any]) -> None:
    for k, v in values.items():
        if isinstance(v, int | float):
            into[k] = into.get(k, 0) + v


def _derived(values: dict[str, float]) -> dict[str, float]:
    values["deliver_get"] = sum(
        values.get(k, 0) for k in ("deliver", "deliver_no_ack", "get", "get_no_ack")
    )
    return values


def message_stats(
    totals: Mapping[str, float], rates: Mapping[str, float], keys: Iterable[str]
) -> dict[str, Any]:
    """RabbitMQ's ``message_stats``: each counter with its ``<name>_details.rate``."""
    out: dict[str, Any] = {}
    for k in sorted([*keys, "deliver_get"]):
        out[k] = int(totals.get(k, 0))
        out[f"{k}_details"] = {"rate": round(float(rates.get(k, 0.0)), 1)}
    return out


class ClusterStats:
    """Totals and rates of every live node, per cluster and per queue."""

    def __init__(self, nodes: Sequence[NodeRow]) -> None:
        self.nodes = list(nodes)
        self.totals: dict[str, float] = {}
        self.rates: dict[str, float] = {}
        self.queue_totals: dict[int, dict[str, float]] = {}
        self.queue_rates: dict[int, dict[str, float]] = {}
        for node in self.nodes:
            doc = node.stats
            current = node.stats_age is not None and node.stats_age < STALE_AFTER
            _add(self.totals, doc.get("totals", {}))
            if current:
                _add(self.rates, doc.get("rates", {}))
            for qid, q in doc.get("queues", {}).items():
                _add(self.queue_totals.setdefault(int(qid), {}), q.get("totals", {}))
                if current:
                    _add(self.queue_rates.setdefault(int(qid), {}), q.get("rates", {}))
        _derived(self.totals)
        _derived(self.rates)
        for table in (self.queue_totals, self.queue_rates):
            for values in table.values():
                _derived(values)

    def overview(self) -> dict[str, Any]:
        return message_stats(self.totals, self.rates, OVERVIEW_KEYS)

    def queue(self, queue_id: int) -> dict[str, Any]:
        if queue_id not in self.queue_totals:
            return {}
        return message_stats(
            self.queue_totals[queue_id], self.queue_rates.get(queue_id, {}), QUEUE_COUNTERS
        )

    def samples(self, key: str, age: float, incr: float, now: float) -> list[dict[str, Any]]:
        """``[{"sample": total, "timestamp": ms}]``, newest first, from the nodes'
        histories (each node's last value at or before each point, added up)."""
        incr = max(incr, 1.0)
        latest = [h[-1][0] for n in self.nodes if (h := n.stats.get("history"))]
        if latest:  # line the points up with the newest snapshot, not a partial interval
            now = min(now, max(latest))
        points = [now - i * incr for i in range(int(age // incr) + 1)]
        out = []
        for t in points:
            value = 0.0
            seen = False
            for node in self.nodes:
                last = None
                for at, counters in node.stats.get("history", []):
                    if at > t:
                        break
                    last = counters
                if last is not None:
                    seen = True
                    value += _derived(dict(last)).get(key, 0)
            if seen:  # no point before any node had counted anything
                out.append({"sample": int(value), "timestamp": int(t * 1000)})
        return out
