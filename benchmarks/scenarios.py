#!/usr/bin/env python3
"""Cavalcade and RabbitMQ side by side on the scenarios of issue 13, in one run.

Each scenario runs against a Cavalcade node (fresh database on ``--database-url``, or
the embedded PostgreSQL) and then against RabbitMQ (quorum queues where durability
matters), and one table with both figures and their ratio is printed at the end.

    python benchmarks/scenarios.py                       # every scenario, small sizes
    python benchmarks/scenarios.py --only backlog --messages 1000000
    python benchmarks/scenarios.py --only many_queues --queues 10000
    python benchmarks/scenarios.py --cavalcade-src /path/to/other/checkout   # before/after

Scenarios: ``rawbench`` (8 back-to-back runs of ../shared/bench/rawbench.py),
``backlog`` (publish a backlog with confirms, passive declare, node memory, drain with
prefetch 1000; then a backlog of at most 50k drained with prefetch 8 and an ack each, as
a Celery worker), ``many_queues`` (declare + bind N queues to a topic exchange, publish
through it), ``idle`` (CPU of idle consumers and idle connections,
broker and its PostgreSQL backends together), ``fanout`` (one exchange, 100 queues),
``large`` (1/16/100 MB round trips), ``latency`` (1 msg / 10 ms), ``competing`` (20
consumers, prefetch 10). The machine is shared and noisy: compare ratios, not figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness

HERE = Path(__file__).resolve().parent
RAWBENCH_DIR = HERE.parent.parent / "shared" / "bench"
CLK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (those that are gone count 0)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` in MB."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb(self.pid)
        self._t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._t.join()


def rabbitmq_pid() -> int:
    out = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else 0


@dataclass
class Target:
    """One broker under test: how to reach it and which processes are its cost."""

    name: str
    url: str
    pid: int
    quorum: bool
    database_url: str | None = None  # Cavalcade: the database whose backends count
    extra: dict[str, Any] = field(default_factory=dict)

    def backend_pids(self) -> list[int]:
        if not self.database_url:
            return []

        async def run() -> list[int]:
            import asyncpg

            conn = await asyncpg.connect(self.database_url)
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
                return [r[0] for r in rows]
            finally:
                await conn.close()

        return asyncio.run(run())

    def cost_pids(self) -> list[int]:
        return [self.pid, *self.backend_pids()]

    def queue_args(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.quorum else {}


@contextmanager
def cavalcade_target(args: argparse.Namespace, tmp: Path) -> Iterator[Target]:
    port = harness.free_port()
    env = harness.node_env()
    cmd = None
    src = None
    if args.cavalcade_src:
        # Run from that folder: ``python -m`` puts the working folder first on sys.path.
        src = str(Path(args.cavalcade_src).resolve())
        env["PYTHONPATH"] = src
        cmd = [sys.executable, "-m", "cavalcade.cli"]
    with ExitStack() as stack:
        db = None
        if args.database_url and cmd is not None:
            # The other checkout migrates its own database (its head may be older).
            db = harness.fresh_database(args.database_url)
            stack.callback(harness.drop_database, args.database_url, db)
            upgrade = [*cmd, "db", "upgrade", "--database-url", db]
            subprocess.run(upgrade, check=True, capture_output=True, env=env, cwd=src)
            storage = ["--database-url", db]
        elif args.database_url:
            db = stack.enter_context(harness.temporary_database(args.database_url))
            storage = ["--database-url", db]
        else:
            storage = ["--data-dir", str(tmp / "data")]
        if cmd is not None:
            serve = [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port), *storage]
            log = (tmp / "serve.log").open("wb")
            proc = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=src)
            stack.callback(harness.stop_node, proc)
            harness.wait_port(port, proc)
        else:
            proc = stack.enter_context(
                harness.running_node(port, tmp / "serve.log", storage, env=env)
            )
        from cavalcade.storage.dsn import normalize_dsn

        yield Target(
            "cavalcade",
            harness.amqp_url(port),
            proc.pid,
            quorum=False,
            database_url=normalize_dsn(db) if db else None,
        )


# --------------------------------------------------------------------------- clients


async def connect(url: str) -> Any:
    import aiormq

    return await aiormq.connect(url + "?heartbeat=0" if "?" not in url else url)


def stamp(size: int = 64) -> bytes:
    return struct.pack("d", time.perf_counter()) + b"x" * max(size - 8, 0)


def since(body: bytes) -> float:
    return time.perf_counter() - struct.unpack_from("d", body)[0]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def publish_confirmed(
    ch: Any, exchange: str, keys: Callable[[int], str], n: int, window: int, size: int = 64
) -> list[float]:
    """Publish n persistent messages with confirms, at most ``window`` in flight;
    returns each confirm's latency."""
    import aiormq

    sem = asyncio.Semaphore(window)
    lat: list[float] = []
    props = aiormq.spec.Basic.Properties(delivery_mode=2)

    async def one(i: int) -> None:
        t = time.perf_counter()
        try:
            await ch.basic_publish(
                stamp(size), exchange=exchange, routing_key=keys(i), properties=props
            )
        finally:
            sem.release()
        lat.append(time.perf_counter() - t)

    tasks = []
    for i in range(n):
        await sem.acquire()
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return lat


# --------------------------------------------------------------------------- scenarios

Row = tuple[str, str, float, float]  # scenario, metric, cavalcade, rabbitmq
Result = dict[str, float]


def raw() -> Any:
    """The raw AMQP helpers of ../shared/bench/rawbench.py (fast publish and drain)."""
    sys.path.insert(0, str(RAWBENCH_DIR))
    import rawbench

    return rawbench


async def _confirming(t: Target, qname: str) -> tuple[Any, Any, bytes]:
    """A raw connection with confirms on, a fresh durable queue ``qname``, and the frames
    of one persistent 256 B publish to it: (reader, writer, frames)."""
    from pamqp import body, commands, header

    rb = raw()
    r, w = await rb.open_conn(t.url)
    w.write(rb.enc(1, commands.Queue.Declare(queue=qname, durable=True, arguments=t.queue_args())))
    await rb.expect(r, commands.Queue.DeclareOk)
    w.write(rb.enc(1, commands.Confirm.Select()))
    await rb.expect(r, commands.Confirm.SelectOk)
    publish = rb.enc(1, commands.Basic.Publish(exchange="", routing_key=qname))
    hdr = rb.enc(1, header.ContentHeader(0, 256, commands.Basic.Properties(delivery_mode=2)))
    frame = publish + hdr + rb.enc(1, body.ContentBody(b"x" * 256))
    return r, w, frame


async def scenario_backlog(t: Target, a: argparse.Namespace) -> Result:
    from pamqp import commands

    rb = raw()
    n = a.messages
    qname = f"backlog-{uuid.uuid4().hex[:8]}"
    r, w, frame = await _confirming(t, qname)
    confirmed = 0
    ev = asyncio.Event()

    async def confirms() -> None:
        nonlocal confirmed
        while confirmed < n:
            ftype, _, payload = await rb.read_frame(r)
            if ftype == 1 and struct.unpack_from(">HH", payload) == (60, 80):
                tag = struct.unpack_from(">Q", payload, 4)[0]
                confirmed = tag if payload[12] & 1 else max(confirmed, tag)
                ev.set()

    t0 = time.perf_counter()
    conf = asyncio.ensure_future(confirms())
    sent = 0
    while sent < n:
        while sent - confirmed >= 1000:
            ev.clear()
            await ev.wait()
        k = min(n - sent, 1000 - (sent - confirmed), 200)
        w.write(frame * k)
        sent += k
        await w.drain()
    await conf
    publish_rate = n / (time.perf_counter() - t0)
    mem = rss_mb(t.pid)
    # Passive declares (message count) on the full queue.
    times = []
    count = 0
    for _ in range(20):
        s = time.perf_counter()
        w.write(rb.enc(1, commands.Queue.Declare(queue=qname, passive=True)))
        ok = await rb.expect(r, commands.Queue.DeclareOk)
        times.append((time.perf_counter() - s) * 1000)
        count = ok.message_count
    # Drain, prefetch 1000, acks every 100.
    w.write(rb.enc(1, commands.Basic.Qos(prefetch_count=1000)))
    await rb.expect(r, commands.Basic.QosOk)
    w.write(rb.enc(1, commands.Basic.Consume(queue=qname, consumer_tag="d")))
    await rb.expect(r, commands.Basic.ConsumeOk)
    got, last, t0 = 0, 0, time.perf_counter()
    while got < n:
        ftype, _, payload = await rb.read_frame(r)
        if ftype == 1 and struct.unpack_from(">HH", payload) == (60, 60):
            off = 5 + payload[4]
            last = struct.unpack_from(">Q", payload, off)[0]
        elif ftype == 3:
            got += 1
            if got % 100 == 0 or got == n:
                w.write(rb.enc(1, commands.Basic.Ack(delivery_tag=last, multiple=True)))
    drain_rate = n / (time.perf_counter() - t0)
    w.write(rb.enc(1, commands.Queue.Delete(queue=qname)))
    await rb.close_conn(r, w)
    small = await _small_prefetch_drain(t, min(n, 50_000))
    return {
        "publish msg/s": publish_rate,
        "passive declare ms (median)": statistics.median(times),
        "declare-ok count / n": count / n,
        "memory with backlog MB": mem,
        "drain msg/s": drain_rate,
        "drain prefetch 8, ack each msg/s": small,
    }


async def _small_prefetch_drain(t: Target, n: int) -> float:
    """A backlog of ``n`` drained as a Celery worker does: prefetch 8, an ack per message."""
    from pamqp import commands

    rb = raw()
    qname = f"backlog8-{uuid.uuid4().hex[:8]}"
    r, w, frame = await _confirming(t, qname)
    for start in range(0, n, 500):  # in windows of 500, each confirmed before the next
        k = min(500, n - start)
        w.write(frame * k)
        confirmed = start
        while confirmed < start + k:
            ftype, _, payload = await rb.read_frame(r)
            if ftype == 1 and struct.unpack_from(">HH", payload) == (60, 80):
                confirmed = struct.unpack_from(">Q", payload, 4)[0]
    w.write(rb.enc(1, commands.Basic.Qos(prefetch_count=8)))
    await rb.expect(r, commands.Basic.QosOk)
    w.write(rb.enc(1, commands.Basic.Consume(queue=qname, consumer_tag="d8")))
    await rb.expect(r, commands.Basic.ConsumeOk)
    got, t0 = 0, time.perf_counter()
    while got < n:
        ftype, _, payload = await rb.read_frame(r)
        if ftype == 1 and struct.unpack_from(">HH", payload) == (60, 60):
            tag = struct.unpack_from(">Q", payload, 5 + payload[4])[0]
        elif ftype == 3:
            got += 1
            w.write(rb.enc(1, commands.Basic.Ack(delivery_tag=tag)))
    rate = n / (time.perf_counter() - t0)
    w.write(rb.enc(1, commands.Queue.Delete(queue=qname)))
    await rb.close_conn(r, w)
    return rate


async def scenario_many_queues(t: Target, a: argparse.Namespace) -> Result:
    n = a.queues
    conn = await connect(t.url)
    ch = await conn.channel()
    ex = f"many-{uuid.uuid4().hex[:6]}"
    await ch.exchange_declare(ex, exchange_type="topic")
    per: list[float] = []
    names = [f"{ex}-q{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, q in enumerate(names):
        s = time.perf_counter()
        await ch.queue_declare(q, durable=False, auto_delete=False)
        await ch.queue_bind(q, ex, routing_key=f"mq.{i}.#")
        per.append((time.perf_counter() - s) * 1000)
    setup = time.perf_counter() - t0
    tenth = max(1, n // 10)
    cch = await conn.channel()
    await cch.confirm_delivery()
    p = a.publishes
    t0 = time.perf_counter()
    lat = await publish_confirmed(cch, ex, lambda i: f"mq.{(i * 7919) % n}.x", p, 100)
    rate = p / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in names:
        await ch.queue_delete(q)
    teardown = time.perf_counter() - t0
    await ch.exchange_delete(ex)
    await conn.close()
    return {
        f"declare+bind {n} queues s": setup,
        "declare+bind first 10% ms each": statistics.mean(per[:tenth]),
        "declare+bind last 10% ms each": statistics.mean(per[-tenth:]),
        "publish via topic msg/s": rate,
        "publish via topic confirm p50 ms": pct(lat, 0.5) * 1000,
        f"delete {n} queues s": teardown,
    }


async def scenario_idle(t: Target, a: argparse.Namespace) -> Result:
    consumers, per_conn = a.idle, 20
    conns = []
    tag = uuid.uuid4().hex[:6]
    for c in range(0, consumers, per_conn):
        conn = await connect(t.url)
        ch = await conn.channel()
        for i in range(c, min(c + per_conn, consumers)):
            q = f"idle-{tag}-{i}"
            await ch.queue_declare(q, exclusive=True)
            await ch.basic_consume(q, lambda m: None)
        conns.append(conn)
    await asyncio.sleep(5)
    pids = await asyncio.to_thread(t.cost_pids)
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    await asyncio.sleep(a.idle_seconds)
    consumer_cpu = (cpu_seconds(pids) - c0) / (time.perf_counter() - t0) * 100
    for conn in conns:
        await conn.close()
    # Idle connections (no consumers): memory and CPU.
    base = rss_mb(t.pid)
    idle_conns = []
    for _ in range(a.connections):
        idle_conns.append(await connect(t.url))
    await asyncio.sleep(3)
    mem = rss_mb(t.pid) - base
    pids = await asyncio.to_thread(t.cost_pids)
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    await asyncio.sleep(a.idle_seconds / 2)
    conn_cpu = (cpu_seconds(pids) - c0) / (time.perf_counter() - t0) * 100
    for conn in idle_conns:
        await conn.close()
    return {
        f"{consumers} idle consumers CPU % (broker+PG)": consumer_cpu,
        f"{a.connections} idle connections CPU %": conn_cpu,
        f"{a.connections} idle connections MB": mem,
    }


async def scenario_fanout(t: Target, a: argparse.Namespace) -> Result:
    conn = await connect(t.url)
    ch = await conn.channel()
    ex = f"fan-{uuid.uuid4().hex[:6]}"
    await ch.exchange_declare(ex, exchange_type="fanout")
    got = 0
    done = asyncio.Event()
    total = 100 * a.fanout_messages

    def on(_m: Any) -> None:
        nonlocal got
        got += 1
        if got >= total:
            done.set()

    names = []
    for i in range(100):
        q = f"{ex}-{i}"
        await ch.queue_declare(q, durable=True, arguments=t.queue_args())
        await ch.queue_bind(q, ex)
        names.append(q)
    cch = await conn.channel()
    for q in names:
        await cch.basic_consume(q, on, no_ack=True)
    pch = await conn.channel()
    await pch.confirm_delivery()
    t0 = time.perf_counter()
    await publish_confirmed(pch, ex, lambda i: "", a.fanout_messages, 100)
    await asyncio.wait_for(done.wait(), 600)
    rate = total / (time.perf_counter() - t0)
    for q in names:
        await ch.queue_delete(q)
    await ch.exchange_delete(ex)
    await conn.close()
    return {"fan-out to 100 queues deliveries/s": rate}


async def scenario_large(t: Target, a: argparse.Namespace) -> Result:
    import aiormq

    out: Result = {}
    conn = await connect(t.url)
    ch = await conn.channel()
    await ch.confirm_delivery()
    q = f"large-{uuid.uuid4().hex[:6]}"
    await ch.queue_declare(q, durable=True, arguments=t.queue_args())
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    cch = await conn.channel()
    await cch.basic_qos(prefetch_count=1)
    await cch.basic_consume(q, inbox.put)
    for mb in (1, 16, 100):
        body = b"z" * (mb * 1024 * 1024)
        times = []
        with PeakRss(t.pid) as peak:
            base = peak.peak
            for _ in range(3):
                s = time.perf_counter()
                await ch.basic_publish(
                    body, routing_key=q, properties=aiormq.spec.Basic.Properties(delivery_mode=2)
                )
                msg = await asyncio.wait_for(inbox.get(), 300)
                times.append((time.perf_counter() - s) * 1000)
                assert len(msg.body) == len(body)
                await cch.basic_ack(msg.delivery.delivery_tag)
        out[f"{mb} MB round trip ms"] = statistics.median(times)
        out[f"{mb} MB node memory peak / body"] = max(peak.peak - base, 0) / mb
    await ch.queue_delete(q)
    await conn.close()
    return out


async def scenario_latency(t: Target, a: argparse.Namespace) -> Result:
    import aiormq

    conn = await connect(t.url)
    ch = await conn.channel()
    q = f"lat-{uuid.uuid4().hex[:6]}"
    await ch.queue_declare(q, durable=True, arguments=t.queue_args())
    lat: list[float] = []
    done = asyncio.Event()
    cch = await conn.channel()
    await cch.basic_qos(prefetch_count=10)

    async def on(m: Any) -> None:
        lat.append(since(m.body))
        await cch.basic_ack(m.delivery.delivery_tag)
        if len(lat) >= a.latency_messages:
            done.set()

    await cch.basic_consume(q, on)
    pch = await conn.channel()
    await pch.confirm_delivery()
    props = aiormq.spec.Basic.Properties(delivery_mode=2)
    pending = []
    for _ in range(a.latency_messages):
        pending.append(
            asyncio.ensure_future(pch.basic_publish(stamp(), routing_key=q, properties=props))
        )
        await asyncio.sleep(0.01)
    await asyncio.gather(*pending)
    await asyncio.wait_for(done.wait(), 60)
    await ch.queue_delete(q)
    await conn.close()
    return {
        "1 msg/10 ms deliver p50 ms": pct(lat, 0.5) * 1000,
        "1 msg/10 ms deliver p99 ms": pct(lat, 0.99) * 1000,
    }


async def scenario_competing(t: Target, a: argparse.Namespace) -> Result:
    n = a.competing_messages
    q = f"comp-{uuid.uuid4().hex[:6]}"
    conn = await connect(t.url)
    ch = await conn.channel()
    await ch.queue_declare(q, durable=True, arguments=t.queue_args())
    lat: list[float] = []
    done = asyncio.Event()
    consumers = []
    for _ in range(20):
        cconn = await connect(t.url)
        cch = await cconn.channel()
        await cch.basic_qos(prefetch_count=10)

        async def on(m: Any, cch: Any = cch) -> None:
            lat.append(since(m.body))
            await cch.basic_ack(m.delivery.delivery_tag)
            if len(lat) >= n:
                done.set()

        await cch.basic_consume(q, on)
        consumers.append(cconn)
    pch = await conn.channel()
    await pch.confirm_delivery()
    t0 = time.perf_counter()
    await publish_confirmed(pch, "", lambda i: q, n, 1000, 256)
    await asyncio.wait_for(done.wait(), 600)
    rate = n / (time.perf_counter() - t0)
    await ch.queue_delete(q)
    for c in consumers:
        await c.close()
    await conn.close()
    return {"20 consumers prefetch 10 msg/s": rate, "20 consumers p50 ms": pct(lat, 0.5) * 1000}


async def scenario_rawbench(t: Target, a: argparse.Namespace) -> Result:
    """Back-to-back runs of ../shared/bench/rawbench.py (confirms + acks, 256 B)."""
    runs = []
    for _ in range(a.rawbench_runs):
        cmd = [sys.executable, str(RAWBENCH_DIR / "rawbench.py"), "--url", t.url]
        cmd += ["-n", str(a.rawbench_messages), *(["--quorum"] if t.quorum else [])]
        out = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=900
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rates = [r["rate"] for r in runs]
    return {
        "rawbench msg/s (median)": statistics.median(rates),
        "rawbench slowest / median": min(rates) / statistics.median(rates),
        "rawbench confirm msg/s": statistics.median(r["confirm_rate"] for r in runs),
        "rawbench p50 ms": statistics.median(r["p50_ms"] for r in runs),
        "rawbench p99 ms": statistics.median(r["p99_ms"] for r in runs),
    }


SCENARIOS: dict[str, Callable[[Target, argparse.Namespace], Awaitable[Result]]] = {
    "rawbench": scenario_rawbench,
    "latency": scenario_latency,
    "competing": scenario_competing,
    "fanout": scenario_fanout,
    "large": scenario_large,
    "many_queues": scenario_many_queues,
    "idle": scenario_idle,
    "backlog": scenario_backlog,
}

HIGHER_IS_BETTER = ("msg/s", "deliveries/s", "count / n", "(median)", "slowest / median")


def ratio_note(metric: str, cav: float, rmq: float) -> str:
    if not rmq or rmq != rmq or cav != cav:
        return ""
    r = cav / rmq
    better = any(metric.endswith(s) for s in HIGHER_IS_BETTER)
    return f"{r:.2f}" + ("" if better else " (lower is better)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians)")
    ap.add_argument("--messages", type=int, default=100_000, help="backlog size")
    ap.add_argument("--queues", type=int, default=2_000, help="many_queues: queues")
    ap.add_argument("--publishes", type=int, default=2_000, help="many_queues: publishes")
    ap.add_argument("--idle", type=int, default=1_000, help="idle consumers")
    ap.add_argument("--connections", type=int, default=800, help="idle connections")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--fanout-messages", type=int, default=1_000)
    ap.add_argument("--latency-messages", type=int, default=500)
    ap.add_argument("--competing-messages", type=int, default=20_000)
    ap.add_argument("--rawbench-runs", type=int, default=8)
    ap.add_argument("--rawbench-messages", type=int, default=50_000)
    ap.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--classic", action="store_true", help="RabbitMQ classic queues, not quorum")
    ap.add_argument("--cavalcade-src", help="run the cavalcade package of another checkout")
    ap.add_argument("--json", type=Path, help="also write the results here")
    harness.add_database_option(ap)
    args = ap.parse_args()
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # its noise on every close
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    rows: list[Row] = []
    with harness.work_dir("cavalcade-scen-") as tmp, cavalcade_target(args, tmp) as cav:
        rmq = Target("rabbitmq", args.rabbitmq_url, rabbitmq_pid(), quorum=not args.classic)
        for name in chosen:
            fn = SCENARIOS[name]
            results: dict[str, list[Result]] = {"cavalcade": [], "rabbitmq": []}
            for _ in range(args.rounds):
                for target in (cav, rmq):
                    res = asyncio.run(fn(target, args))
                    results[target.name].append(res)
                    print(
                        name,
                        target.name,
                        json.dumps({k: round(v, 3) for k, v in res.items()}),
                        flush=True,
                    )
            for metric in results["cavalcade"][0]:
                c = statistics.median(r[metric] for r in results["cavalcade"])
                r = statistics.median(x[metric] for x in results["rabbitmq"])
                rows.append((name, metric, c, r))
    kind = "classic" if args.classic else "quorum"
    print(f"\n| scenario | metric | Cavalcade | RabbitMQ ({kind}) | ratio |")
    print("|---|---|---|---|---|")
    for name, metric, c, r in rows:
        print(f"| {name} | {metric} | {c:.4g} | {r:.4g} | {ratio_note(metric, c, r)} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    dict(zip(("scenario", "metric", "cavalcade", "rabbitmq"), x, strict=True))
                    for x in rows
                ],
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
