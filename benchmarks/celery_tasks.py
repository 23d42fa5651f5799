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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"cavalcade did not listen on {port}")


def cavalcade_cmd() -> list[str]:
    exe = shutil.which("cavalcade", path=str(Path(sys.executable).parent)) or shutil.which(
        "cavalcade"
    )
    return [exe] if exe else [sys.executable, "-m", "cavalcade.cli"]


def fresh_database(server_url: str) -> str:
    """CREATE DATABASE on the given server; returns the new database's URL."""
    import asyncio

    import asyncpg

    name = "cavalcade_bench_" + uuid.uuid4().hex[:8]

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(server_url: str, db_url: str) -> None:
    import asyncio

    import asyncpg

    name = db_url.rpartition("/")[2]

    async def drop() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


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
    ap.add_argument(
        "--database-url",
        default=os.environ.get("CAVALCADE_TEST_DATABASE_URL"),
        help="a PostgreSQL server where a fresh database may be created "
        "(default: the embedded PostgreSQL in a temporary data dir)",
    )
    args = ap.parse_args()

    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="cavalcade-celery-bench-"))
    cmd = cavalcade_cmd()
    db = None
    if args.database_url:
        db = fresh_database(args.database_url)
        subprocess.run(
            [*cmd, "db", "upgrade", "--database-url", db], check=True, capture_output=True
        )
        serve = [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port), "--database-url", db]
        where = "external PostgreSQL"
    else:
        serve = [
            *cmd,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp / "data"),
        ]
        where = "embedded PostgreSQL"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVALCADE_")}
    log = open(tmp / "serve.log", "w")  # noqa: SIM115
    node = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port)
        cav_url = f"amqp://guest:guest@127.0.0.1:{port}//"
        results: dict[str, list[dict[str, float]]] = {"cavalcade": [], "rabbitmq": []}
        for r in range(args.rounds):
            results["cavalcade"].append(one_round(cav_url, args.n, args.concurrency, tmp))
            results["rabbitmq"].append(one_round(args.rabbitmq_url, args.n, args.concurrency, tmp))
            print(
                f"round {r + 1}: cavalcade {results['cavalcade'][-1]['rate']:.0f} tasks/s, "
                f"rabbitmq {results['rabbitmq'][-1]['rate']:.0f} tasks/s",
                flush=True,
            )
        med = {k: statistics.median(x["rate"] for x in v) for k, v in results.items()}
        pub = {k: statistics.median(x["publish_rate"] for x in v) for k, v in results.items()}
        print(
            json.dumps(
                {
                    "tasks": args.n,
                    "rounds": args.rounds,
                    "worker": f"prefork -c {args.concurrency}",
                    "results": "rpc://",
                    "cavalcade_on": where,
                    "rabbitmq_queue": "classic",
                    "cavalcade_rate": round(med["cavalcade"]),
                    "rabbitmq_rate": round(med["rabbitmq"]),
                    "ratio": round(med["cavalcade"] / med["rabbitmq"], 3),
                    "cavalcade_publish_rate": round(pub["cavalcade"]),
                    "rabbitmq_publish_rate": round(pub["rabbitmq"]),
                }
            )
        )
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        if db is not None:
            drop_database(args.database_url, db)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
