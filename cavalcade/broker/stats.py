"""What one node counts: message counters (global and per queue), timings, and the
snapshot it publishes to PostgreSQL so that any node can show the cluster's rates.

Counting is a few dict increments on paths that already do far more work (a commit,
a claim, a delivery batch). Rates are worked out by the counting node itself, between
two of its snapshots, and published with them; readers add the nodes up.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# RabbitMQ's message_stats keys (overview, queues, channels).
GLOBAL_COUNTERS = (
    "publish",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
    "routed",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "redeliver",
    "ack",
)
QUEUE_COUNTERS = (
    "publish",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "redeliver",
    "ack",
)
HISTORY_SECONDS = 600.0  # RabbitMQ's "basic" retention: the last ten minutes


class Histogram:
    """Cumulative buckets, Prometheus-style, with no dependency on prometheus_client."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) pairs, ending with (+inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROWS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)


@dataclass
class Timings:
    """Cavalcade's own histograms and counters (``cavalcade_*`` metrics)."""

    batch_commit_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    batch_rows: Histogram = field(default_factory=lambda: Histogram(ROWS_BUCKETS))
    claim_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    batch_failures: int = 0


def _rates(now: dict[str, int], before: dict[str, int] | None, dt: float) -> dict[str, float]:
    if before is None or dt <= 0:
        return {k: 0.0 for k in now}
    return {k: round(max(0, v - before.get(k, 0)) / dt, 2) for k, v in now.items()}


class NodeStats:
    """The counters of one node incarnation (they start at zero, like RabbitMQ's on boot)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.totals: dict[str, int] = dict.fromkeys(GLOBAL_COUNTERS, 0)
        self.queues: dict[int, dict[str, int]] = {}
        self.timings = Timings()
        self.database_up = True
        # Set by the composition root: what the protocol layer can tell about its
        # connections and channels (a list of JSON-ready dicts), and gauges.
        self.describe_connections: Callable[[], list[dict[str, Any]]] = list
        self.blocked_connections: Callable[[], int] = lambda: 0
        self._last: tuple[float, dict[str, int], dict[int, dict[str, int]]] | None = None
        self.history: deque[tuple[float, dict[str, int]]] = deque()

    # -- counting (called from the batcher, the dispatchers, get and the channels) --

    def _queue(self, queue_id: int) -> dict[str, int]:
        q = self.queues.get(queue_id)
        if q is None:
            q = self.queues[queue_id] = dict.fromkeys(QUEUE_COUNTERS, 0)
        return q

    def committed(
        self,
        seconds: float,
        publishes: int,
        unroutable: int,
        queue_rows: Iterable[int],
        acks: int,
    ) -> None:
        """A write batch committed: ``publishes`` client messages, ``unroutable`` of
        them routed nowhere, one queue id per stored row, ``acks`` acked rows."""
        t = self.totals
        t["publish"] += publishes
        t["drop_unroutable"] += unroutable
        t["ack"] += acks
        rows = 0
        for qid, n in Counter(queue_rows).items():
            self._queue(qid)["publish"] += n
            rows += n
        t["routed"] += publishes - unroutable
        self.timings.batch_commit_seconds.observe(seconds)
        self.timings.batch_rows.observe(rows + acks)

    def acked(self, queue_ids: Iterable[int]) -> None:
        for qid in queue_ids:
            self._queue(qid)["ack"] += 1

    def confirmed(self, n: int) -> None:
        self.totals["confirm"] += n

    def delivered(self, queue_id: int, n: int, no_ack: bool, redelivered: int) -> None:
        key = "deliver_no_ack" if no_ack else "deliver"
        self.totals[key] += n
        self.totals["redeliver"] += redelivered
        q = self._queue(queue_id)
        q[key] += n
        q["redeliver"] += redelivered

    def got(self, queue_id: int, found: bool, no_ack: bool, redelivered: bool) -> None:
        if not found:
            self.totals["get_empty"] += 1
            self._queue(queue_id)["get_empty"] += 1
            return
        key = "get_no_ack" if no_ack else "get"
        self.totals[key] += 1
        q = self._queue(queue_id)
        q[key] += 1
        if redelivered:
            self.totals["redeliver"] += 1
            q["redeliver"] += 1

    def claimed(self, seconds: float) -> None:
        self.timings.claim_seconds.observe(seconds)

    # -- the snapshot published to PostgreSQL ------------------------------------

    def snapshot(self, gauges: dict[str, Any] | None = None) -> dict[str, Any]:
        """Totals, rates since the previous snapshot, per-queue counters and rates,
        connections and channels, and the last ten minutes of totals."""
        now = self.clock()
        totals = dict(self.totals)
        queues = {qid: dict(c) for qid, c in self.queues.items()}
        before = self._last
        dt = now - before[0] if before else 0.0
        rates = _rates(totals, before[1] if before else None, dt)
        queue_doc = {}
        for qid, counters in queues.items():
            prev = before[2].get(qid) if before else None
            queue_doc[str(qid)] = {"totals": counters, "rates": _rates(counters, prev, dt)}
        self._last = (now, totals, queues)
        self.history.append((now, totals))
        while self.history and self.history[0][0] < now - HISTORY_SECONDS:
            self.history.popleft()
        return {
            "at": now,
            "totals": totals,
            "rates": rates,
            "queues": queue_doc,
            "connections": self.describe_connections(),
            "history": [[t, c] for t, c in self.history],
            "gauges": gauges or {},
        }
