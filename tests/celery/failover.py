"""Celery through the death of its broker node: the scenario behind
``tests/celery/test_failover.py`` (CI-sized) and ``benchmarks/celery_failover.py`` (full size).

Two ``cavalcade serve`` nodes share one database. A producer (in this process) and two
``celery worker -P prefork -c 2`` use a ``broker_url`` that lists both nodes, so all of
them start on the first one. Tasks are acks_late with reject_on_worker_lost, published
with confirms (a task counts as *accepted* once ``apply_async`` returned, i.e. once
the broker confirmed it), and count themselves in Redis. Mid-stream a fault hits the
first node (SIGKILL, SIGTERM) or the database (``pg_ctl stop -m immediate``) and is
repaired a few seconds later (the node restarted on its port, the database started).

The report: accepted, ran (distinct accepted tasks that ran), lost, duplicates, worker
exits, and the longest gap between two task completions (and the longest after the fault).
Nothing here asserts: the test and the benchmark decide what to do with the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import nodes
from tests.nodes import free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("CAVALCADE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FAULTS = ("none", "sigterm", "sigkill", "pgcrash")


def redis_available(url: str = REDIS_URL) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False


# --------------------------------------------------------------------------- nodes


@dataclass
class Node:
    """One ``cavalcade serve`` on a fixed port (so it can be restarted where it was)."""

    database_url: str
    port: int
    log_path: Path
    env: dict[str, str]
    node: nodes.Node | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.node is None else self.node.process

    def start(self, timeout: float = 60.0) -> Node:
        """Start the node (again, after a fault) and wait until it answers AMQP."""
        if self.node is not None:
            self.node.restart(timeout=timeout)
            return self
        self.node = nodes.start_node(
            self.log_path.parent,
            self.database_url,
            port=self.port,
            env=nodes.node_env(self.env),
            cwd=ROOT,
            log_path=self.log_path,
            timeout=timeout,
        )
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.node is not None
        self.node.signal(sig)

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def node_pair(
    database_url: str, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[list[Node]]:
    """Two nodes on one database; stopped afterwards."""
    nodes = [
        Node(database_url, port, workdir / f"node-{port}.log", dict(env or {}))
        for port in (free_port(), free_port())
    ]
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@contextlib.contextmanager
def private_postgres() -> Iterator[tuple[Any, str]]:
    """A PostgreSQL of our own (it gets crashed) and a migrated database on it:
    (the :class:`EmbeddedPostgres`, the database URL)."""
    import asyncio

    import asyncpg

    from cavalcade.storage import schema
    from cavalcade.storage.dsn import normalize_dsn, with_database
    from cavalcade.storage.embedded import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="cavalcade-failover-pg-"))
    data_dir.chmod(0o755)  # our own fresh folder: let the server's user traverse it
    embedded = EmbeddedPostgres(data_dir)
    try:
        server = embedded.start()

        async def create() -> None:
            conn = await asyncpg.connect(normalize_dsn(server))
            try:
                await conn.execute('CREATE DATABASE "failover"')
            finally:
                await conn.close()

        asyncio.run(create())
        url = with_database(server, "failover")
        # alembic's env.py runs its own event loop: keep it off ours (a thread of its own)
        t = threading.Thread(target=schema.upgrade, args=(url, "head"))
        t.start()
        t.join()
        yield embedded, url
    finally:
        try:
            embedded.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def crash_postgres(embedded: Any) -> None:
    """SIGQUIT to the postmaster, no checkpoint (``pg_ctl stop -m immediate``)."""
    result = embedded._pg_ctl(["-m", "immediate", "-t", "30", "-w", "stop"])
    if result.returncode != 0:
        raise RuntimeError(f"pg_ctl stop -m immediate failed: {result.stderr}")


@dataclass
class Fault:
    """What hits the first node (or the database), and how it is repaired."""

    name: str
    inject: Callable[[], None]
    repair: Callable[[], None]


def node_fault(name: str, node: Node) -> Fault:
    sig = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}[name]

    def restart() -> None:
        node.start()

    return Fault(name, lambda: node.signal(sig), restart)


def database_fault(embedded: Any) -> Fault:
    return Fault("pgcrash", lambda: crash_postgres(embedded), embedded.start)


# --------------------------------------------------------------------------- Celery


def celery_config(urls: list[str], queue: str) -> dict[str, Any]:
    """The failover configuration docs/celery.md recommends."""
    return {
        "broker_url": ";".join(urls),
        "broker_failover_strategy": "round-robin",
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {"confirm_publish": True},
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 60,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 1.0,
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_default_queue": queue,
    }


@dataclass
class CeleryWorker:
    """``celery -A tests.celery.tasks worker -P prefork -c 2`` in its own process group."""

    name: str
    config: dict[str, Any]
    log_path: Path
    concurrency: int = 2
    process: subprocess.Popen[bytes] | None = None
    exited_at: float | None = None

    def start(self) -> CeleryWorker:
        from .tasks import CONFIG_ENV

        env = dict(os.environ)
        env[CONFIG_ENV] = json.dumps(self.config)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.celery.tasks", "worker",
            "-P", "prefork", "-c", str(self.concurrency), "-n", self.name, "-l", "INFO",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while f"{self.name} ready." not in self.log():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            if self.exited_at is None:
                self.exited_at = time.time()
            return False
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class Producer(threading.Thread):
    """Sends the counting tasks ``seqs`` evenly over ``duration`` seconds (catching up as
    fast as it can after a stall). A task is accepted once ``apply_async`` returned."""

    def __init__(self, app: Any, prefix: str, seqs: range, duration: float) -> None:
        super().__init__(daemon=True)
        self.task = app.tasks["t.count"]
        self.prefix, self.seqs, self.duration = prefix, seqs, duration
        self.accepted: list[int] = []
        self.refused: list[tuple[int, str]] = []
        self.longest_publish = 0.0
        self.finished = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        for i, seq in enumerate(self.seqs):
            if self.halt.is_set():
                return
            wait = t0 + i * self.duration / len(self.seqs) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            started = time.monotonic()
            try:
                self.task.apply_async((REDIS_URL, self.prefix, seq))
            except Exception as exc:  # noqa: BLE001 - not accepted: counted, not lost
                self.refused.append((seq, repr(exc)))
            else:
                self.accepted.append(seq)
            self.longest_publish = max(self.longest_publish, time.monotonic() - started)
        self.finished = time.time()


@dataclass
class Report:
    fault: str
    accepted: int = 0
    refused: int = 0
    ran: int = 0
    lost: int = 0
    duplicates: int = 0
    worker_exits: int = 0
    longest_gap_s: float = 0.0
    gap_at_fault_s: float = 0.0
    longest_publish_s: float = 0.0
    published_in_s: float = 0.0
    seconds: float = 0.0
    lost_sample: list[int] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)

    def row(self) -> str:
        return (
            f"| {self.fault} | {self.accepted:,} | {self.ran:,} | {self.lost:,} | "
            f"{self.worker_exits} | {self.duplicates:,} | {self.longest_gap_s:.2f} s |"
        )

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "logs"}


TABLE_HEAD = (
    "| fault on the node everyone is connected to | accepted | ran | lost | worker exits "
    "| duplicates | longest gap |\n|---|---|---|---|---|---|---|"
)


def run(
    urls: list[str],
    fault: Fault | None,
    workdir: Path,
    *,
    tasks: int,
    duration: float,
    fault_at: float,
    repair_after: float,
    drain_timeout: float = 120.0,
    producers: int = 2,
    log: Callable[[str], None] = print,
) -> Report:
    """Run the scenario once (see the module docstring) and report."""
    import kombu
    import redis

    from .tasks import make_app

    tag = uuid.uuid4().hex[:8]
    queue = f"failover.{tag}"
    prefix = f"cavtest:failover:{tag}"
    config = celery_config(urls, queue)
    report = Report(fault.name if fault else "none")
    r = redis.Redis.from_url(REDIS_URL)
    workers = [
        CeleryWorker(f"fo{i}-{tag}@cavtest", config, workdir / f"worker-{i}-{tag}.log")
        for i in range(2)
    ]
    app = make_app(config)
    # Several publishing threads (each its own connection from the app's pool): one
    # alone waits for every confirm in turn and cannot keep up with a large run.
    group = [Producer(app, prefix, range(i, tasks, producers), duration) for i in range(producers)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        began = time.time()
        for p in group:
            p.start()
        fault_time = None
        if fault is not None:
            time.sleep(max(0.0, began + fault_at - time.time()))
            fault_time = time.time()
            fault.inject()
            log(f"{fault.name}: injected at {fault_time - began:.1f} s")
            time.sleep(repair_after)
            fault.repair()
            log(f"{fault.name}: repaired {time.time() - fault_time:.1f} s after")
        for p in group:
            p.join(max(0.0, began + duration + drain_timeout - time.time()))
            p.halt.set()
        accepted = {seq for p in group for seq in p.accepted}
        deadline = time.time() + drain_timeout
        while time.time() < deadline:
            ran = {int(k) for k in r.hkeys(f"{prefix}:runs")}
            if accepted <= ran:
                break
            for w in workers:
                w.alive()
            time.sleep(0.25)
        runs = {int(k): int(v) for k, v in r.hgetall(f"{prefix}:runs").items()}
        ended = sorted(float(t) for t in r.lrange(f"{prefix}:ended", 0, -1))
        report.accepted = len(accepted)
        report.refused = sum(len(p.refused) for p in group)
        report.ran = len(accepted & set(runs))
        missing = sorted(accepted - set(runs))
        report.lost = len(missing)
        report.lost_sample = missing[:20]
        report.duplicates = sum(runs.values()) - len(runs)
        report.longest_publish_s = round(max(p.longest_publish for p in group), 3)
        report.published_in_s = round(max(p.finished for p in group) - began, 1)
        report.seconds = round(time.time() - began, 1)
        gaps = [(b - a, a) for a, b in zip(ended, ended[1:], strict=False)]
        if gaps:
            report.longest_gap_s = round(max(g for g, _ in gaps), 3)
            if fault_time is not None:
                after = [g for g, a in gaps if a + g >= fault_time]
                report.gap_at_fault_s = round(max(after or [0.0]), 3)
        for w in workers:
            w.alive()
        report.worker_exits = sum(1 for w in workers if w.exited_at is not None)
    finally:
        for p in group:
            p.halt.set()
        for w in workers:
            w.stop()
            report.logs[w.name] = w.log()
        with contextlib.suppress(Exception):
            with kombu.Connection(config["broker_url"], connect_timeout=5) as conn:
                conn.default_channel.queue_delete(queue)
        with contextlib.suppress(Exception):
            app.close()
        with contextlib.suppress(Exception):
            r.delete(f"{prefix}:runs", f"{prefix}:ended")
    return report
