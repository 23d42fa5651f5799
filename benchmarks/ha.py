#!/usr/bin/env python3
"""Two Cavalcade nodes on one database: cross-node latency and node-death detection.

Starts two ``cavalcade serve`` nodes on a fresh database (on the PostgreSQL given, or on
an embedded PostgreSQL in a temporary folder), then measures:

* cross-node delivery latency: a consumer on node B, a publisher (confirms, persistent
  messages, one at a time) on node A; the time from the start of ``basic.publish`` on A
  to ``basic.deliver`` on B, p50/p99 over ``-n`` messages;
* node-death detection: node A holds ``--unacked`` unacked deliveries, a consumer waits
  on B, A is SIGKILLed; the time until B delivers the first and the last of them again
  (flagged redelivered).

Prints one JSON line.

    python benchmarks/ha.py
    python benchmarks/ha.py --database-url postgresql://postgres@127.0.0.1/postgres
    python benchmarks/ha.py --heartbeat 0.5 --threshold 3 --notify poll
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack

import harness
import pika


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.connection_attempts = 3
    return pika.BlockingConnection(params)


class Collector(threading.Thread):
    """Consumes ``queue`` on its own connection; records (body, redelivered, when)."""

    def __init__(self, url: str, queue: str, expect: int) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.expect = url, queue, expect
        self.got: list[tuple[bytes, bool, float]] = []
        self.ready = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        conn = connect(self.url)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)

        def on_message(ch, method, _props, body) -> None:  # noqa: ANN001
            self.got.append((body, bool(method.redelivered), time.perf_counter()))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(self.queue, on_message)
        conn.process_data_events(time_limit=0.1)
        self.ready.set()
        while len(self.got) < self.expect and not self.done.is_set():
            conn.process_data_events(time_limit=0.05)
        self.done.set()
        conn.close()


def measure_latency(url_a: str, url_b: str, n: int) -> dict:
    queue = "bench.ha.latency." + uuid.uuid4().hex[:6]
    conn_a = connect(url_a)
    ch = conn_a.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    consumer = Collector(url_b, queue, n)
    consumer.start()
    consumer.ready.wait(10)
    sent: dict[bytes, float] = {}
    confirm: list[float] = []
    for i in range(n):
        body = str(i).encode()
        start = time.perf_counter()
        sent[body] = start
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        confirm.append(time.perf_counter() - start)
        time.sleep(0.005)  # one message at a time, not a batch
    consumer.done.wait(30)
    consumer.done.set()
    consumer.join(5)
    conn_a.close()
    lat = [when - sent[body] for body, _, when in consumer.got if body in sent]
    if len(lat) < n:
        raise SystemExit(f"latency: only {len(lat)} of {n} messages arrived on node B")
    return {
        "latency_p50_ms": round(statistics.median(lat) * 1000, 2),
        "latency_p99_ms": round(percentile(lat, 99) * 1000, 2),
        "latency_max_ms": round(max(lat) * 1000, 2),
        "confirm_p50_ms": round(statistics.median(confirm) * 1000, 2),
    }


def measure_death(node_a: subprocess.Popen, url_a: str, url_b: str, unacked: int) -> dict:
    queue = "bench.ha.death." + uuid.uuid4().hex[:6]
    conn_b = connect(url_b)
    ch_b = conn_b.channel()
    ch_b.queue_declare(queue, durable=True)
    ch_b.confirm_delivery()
    for i in range(unacked):
        ch_b.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    conn_b.close()
    conn_a = connect(url_a)
    ch_a = conn_a.channel()
    ch_a.basic_qos(prefetch_count=unacked)
    held: list[int] = []
    ch_a.basic_consume(queue, lambda _c, m, _p, _b: held.append(m.delivery_tag))
    deadline = time.time() + 30
    while len(held) < unacked and time.time() < deadline:
        conn_a.process_data_events(time_limit=0.05)
    if len(held) < unacked:
        raise SystemExit(f"death: node A got only {len(held)} of {unacked} deliveries")
    survivor = Collector(url_b, queue, unacked)
    survivor.start()
    survivor.ready.wait(10)
    killed = time.perf_counter()
    node_a.send_signal(signal.SIGKILL)
    node_a.wait()
    survivor.done.wait(120)
    survivor.done.set()
    survivor.join(5)
    got = survivor.got
    if len(got) < unacked or not all(r for _, r, _ in got):
        raise SystemExit(f"death: {len(got)} of {unacked} came back, not all redelivered")
    return {
        "unacked": unacked,
        "death_first_redelivery_s": round(min(t for _, _, t in got) - killed, 3),
        "death_all_redelivered_s": round(max(t for _, _, t in got) - killed, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="messages for the latency measure")
    ap.add_argument("--unacked", type=int, default=100)
    ap.add_argument("--heartbeat", type=float, default=2.0, help="CAVALCADE_NODE_HEARTBEAT")
    ap.add_argument("--threshold", type=float, default=10.0, help="CAVALCADE_NODE_DEATH_THRESHOLD")
    ap.add_argument("--notify", choices=["listen", "poll"], default="listen")
    ap.add_argument("--poll-interval", type=float, default=1.0)
    harness.add_database_option(ap, "an embedded PostgreSQL in a temporary folder")
    args = ap.parse_args()

    with ExitStack() as stack:
        tmp = stack.enter_context(harness.work_dir("cavalcade-bench-ha-"))
        server = args.database_url or stack.enter_context(harness.embedded_server(tmp / "data"))
        db = stack.enter_context(harness.temporary_database(server))
        env = harness.node_env(node_heartbeat=args.heartbeat, node_death_threshold=args.threshold)
        extra = ["--notify", args.notify, "--poll-interval", str(args.poll_interval)]
        ports = [harness.free_port(), harness.free_port()]
        nodes = [
            stack.enter_context(
                harness.running_node(
                    port, tmp / f"node-{port}.log", ["--database-url", db], extra, env
                )
            )
            for port in ports
        ]
        url_a, url_b = (harness.amqp_url(p) for p in ports)
        result: dict = {
            "nodes": 2,
            "database": harness.database_label(args.database_url),
            "notify": args.notify,
            "messages": args.n,
        }
        result.update(measure_latency(url_a, url_b, args.n))
        result.update(
            {"node_heartbeat_s": args.heartbeat, "node_death_threshold_s": args.threshold}
        )
        result.update(measure_death(nodes[0], url_a, url_b, args.unacked))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
