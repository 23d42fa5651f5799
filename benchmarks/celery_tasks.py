#!/usr/bin/env python3
"""Celery tasks/s through one worker: Cavalcade vs RabbitMQ, side by side in one run.

Starts a Cavalcade node (on a fresh database of the PostgreSQL given, or the embedded
one in a temporary data dir), then alternates rounds against it and against the
machine's RabbitMQ. A round: start one ``celery worker -P prefork -c 2`` (defaults
otherwise: mingle, gossip, heartbeats, early acks, prefetch 2x4), send a warm-up of 50
tasks, then time N no-op tasks *with rpc:// results*: from the first ``delay()`` to
the last ``.get()``. Each round uses a fresh task queue (classic on RabbitMQ, Celery's
default). Prints one line per round, then medians and the ratio as one JSON line.

This file is also the worker's task module (``celery -A celery_tasks``, run with
this folder on PYTHONPATH and the app's config as JSON in CELERY_BENCH_CONFIG).

    python benchmarks/celery_tasks.py --rounds 3 -n 2000
    python benchmarks/celery_tasks.py --database-url postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import harness
from celery import Celery

HERE = Path(__file__).resolve().parent
CONFIG_ENV = "CELERY_BENCH_CONFIG"


def make_app(config: dict[str, Any]) -> Celery:
    app = Celery("cavalcade_bench", set_as_current=False)
    app.conf.update(config)

    @app.task(name="bench.noop", shared=False)
    def noop() -> None:
        return None

    return app


app = make_app(json.loads(os.environ.get(CONFIG_ENV) or "{}"))


# --------------------------------------------------------------------------- the run


def delete_queue(url: str, name: str) -> None:
    import kombu

    try:
        with kombu.Connection(url, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(name)
    except Exception:  # noqa: BLE001
        pass


class Worker:
    def __init__(self, config: dict[str, Any], concurrency: int, log_path: Path) -> None:
        self.name = f"bench-{uuid.uuid4().hex[:8]}@bench"
        env = dict(os.environ)
        env[CONFIG_ENV] = json.dumps(config)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
                    "-P", "prefork", "-c", str(concurrency), "-n", self.name, "-l", "INFO",
                ],
                cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while f"{self.name} ready." not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.time() > deadline:
                raise SystemExit(f"worker not ready:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


def one_round(url: str, n: int, concurrency: int, tmp: Path) -> dict[str, float]:
    queue = f"bench.{uuid.uuid4().hex[:10]}"
    config = {
        "broker_url": url,
        "result_backend": "rpc://",
        "task_default_queue": queue,
        "broker_connection_retry_on_startup": True,
    }
    client = make_app(config)
    worker = Worker(config, concurrency, tmp / f"worker-{queue}.log")
    try:
        worker.wait_ready()
        noop = client.tasks["bench.noop"]
        for r in [noop.delay() for _ in range(50)]:  # warm-up: connections, pool, queues
            r.get(timeout=60)
        t0 = time.perf_counter()
        results = [noop.delay() for _ in range(n)]
        t1 = time.perf_counter()
        for r in results:
            r.get(timeout=300)
        t2 = time.perf_counter()
    finally:
        worker.stop()
        delete_queue(url, queue)
        try:
            delete_queue(url, client.backend.oid)
        finally:
            client.close()
    return {"rate": n / (t2 - t0), "publish_rate": n / (t1 - t0), "seconds": t2 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=2000, help="timed tasks per round")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672//")
    harness.add_database_option(ap)
    args = ap.parse_args()

    with (
        harness.work_dir("cavalcade-celery-bench-") as tmp,
        harness.cavalcade_node(args.database_url, tmp, path="//") as cav_url,
    ):
        results = harness.alternate_rounds(
            args.rounds,
            lambda: one_round(cav_url, args.n, args.concurrency, tmp),
            lambda: one_round(args.rabbitmq_url, args.n, args.concurrency, tmp),
            "tasks/s",
        )
        med = harness.medians(results, "rate")
        pub = harness.medians(results, "publish_rate")
        print(
            json.dumps(
                {
                    "tasks": args.n,
                    "rounds": args.rounds,
                    "worker": f"prefork -c {args.concurrency}",
                    "results": "rpc://",
                    "cavalcade_on": harness.database_label(args.database_url),
                    "rabbitmq_queue": "classic",
                    "cavalcade_rate": round(med["cavalcade"]),
                    "rabbitmq_rate": round(med["rabbitmq"]),
                    "ratio": round(med["cavalcade"] / med["rabbitmq"], 3),
                    "cavalcade_publish_rate": round(pub["cavalcade"]),
                    "rabbitmq_publish_rate": round(pub["rabbitmq"]),
                }
            )
        )


if __name__ == "__main__":
    main()
