"""Fixtures of the Celery suite: a real ``celery worker`` process per scenario.

Every test runs once against Cavalcade and once against the local RabbitMQ (the
reference: a test that fails there asserts the wrong thing). Brokers are shared
between tests, so each test gets its own task queue (``task_default_queue``), its
own worker node names and its own client app (so its own rpc reply queue).

* ``broker`` (session, parametrized): ``Broker(name, url)``.
* ``celery_config(**overrides)``: a config dict with a fresh task queue; the queue
  (and the rpc reply queues of apps made from it) are deleted after the test.
* ``make_app(config)``: a client app (tasks registered, same module as the worker).
* ``workers(config, ...)``: starts ``celery -A tests.celery.tasks worker`` and waits
  for its ``ready.`` line; SIGTERM then SIGKILL (whole process group) at teardown;
  its log is printed when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest
from celery import Celery

from tests.waiting import wait_until

from .tasks import CONFIG_ENV
from .tasks import make_app as _make_app

ROOT = Path(__file__).resolve().parents[2]
BROKERS = ["cavalcade", "rabbitmq"]
WORKER_READY_TIMEOUT = 60.0


def unique(prefix: str) -> str:
    return f"celerytest.{prefix}.{uuid.uuid4().hex[:10]}"


def node_name(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@cavtest"


@dataclass(frozen=True)
class Broker:
    name: str
    url: str

    @property
    def is_rabbitmq(self) -> bool:
        return self.name == "rabbitmq"


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Broker:
    return Broker(request.param, request.getfixturevalue(f"{request.param}_url"))


def cavalcade_only(broker: Broker, reason: str) -> None:
    if broker.is_rabbitmq:
        pytest.skip(f"Cavalcade-only: {reason}")


# --------------------------------------------------------------------------- queues


def delete_queues(url: str, names: list[str]) -> None:
    if not names:
        return
    with contextlib.suppress(Exception):
        with kombu.Connection(url, connect_timeout=5) as conn:
            channel = conn.default_channel
            for name in names:
                try:
                    channel.queue_delete(name)
                except conn.channel_errors:
                    channel = conn.channel()


def queue_counts(url: str, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, by a passive declare."""
    with kombu.Connection(url, connect_timeout=5) as conn:
        ok = conn.default_channel.queue_declare(name, passive=True)
        return ok.message_count, ok.consumer_count


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    return wait_until(predicate, timeout, what, step)


class Cleanup:
    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []
        self.apps: list[Celery] = []

    def run(self) -> None:
        queues = list(self.queues)
        for app in self.apps:
            with contextlib.suppress(Exception):
                queues.append(app.backend.oid)  # the rpc reply queue
            with contextlib.suppress(Exception):
                app.close()
        delete_queues(self.url, queues)


@pytest.fixture
def cleanup(broker: Broker) -> Iterator[Cleanup]:
    c = Cleanup(broker.url)
    try:
        yield c
    finally:
        c.run()


@pytest.fixture
def celery_config(broker: Broker, cleanup: Cleanup) -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        queue = overrides.pop("task_default_queue", None) or unique("q")
        config: dict[str, Any] = {
            "broker_url": broker.url,
            "result_backend": "rpc://",
            "task_default_queue": queue,
            "broker_connection_retry_on_startup": True,
        }
        config.update(overrides)
        cleanup.queues.append(queue)
        return config

    return make


@pytest.fixture
def make_app(cleanup: Cleanup) -> Callable[[dict[str, Any]], Celery]:
    def make(config: dict[str, Any]) -> Celery:
        app = _make_app(config)
        cleanup.apps.append(app)
        return app

    return make


@pytest.fixture
def marker_dir(tmp_path: Path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d


def started_markers(marker_dir: Path, tag: str) -> list[str]:
    return sorted(p.name for p in marker_dir.iterdir() if p.name.startswith(f"{tag}."))


# --------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """A ``celery worker`` subprocess (its own process group)."""

    name: str
    config: dict[str, Any]
    log_path: Path
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = dict(os.environ)
        env[CONFIG_ENV] = json.dumps(self.config)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.celery.tasks", "worker",
            "-n", self.name, "-l", "INFO", *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_log(self, text: str, timeout: float = WORKER_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.alive():
                raise AssertionError(
                    f"worker {self.name} exited ({self.returncode}) before logging {text!r}:\n"
                    f"{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.name} did not log {text!r} in {timeout}s:\n{self.log()}"
                )
            time.sleep(0.1)

    def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT) -> Worker:
        self.wait_log(f"{self.name} ready.", timeout)
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM to the main process); SIGKILL the group if it hangs."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_group()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        self._kill_group()
        if self.process is not None:
            self.process.wait()

    def _kill_group(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


class WorkerFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Worker] = []

    def __call__(
        self,
        config: dict[str, Any],
        *args: str,
        name: str | None = None,
        concurrency: int = 2,
        ready: bool = True,
    ) -> Worker:
        name = name or node_name()
        log = self.tmp / f"worker-{name.split('@')[0]}-{len(self.started)}.log"
        worker = Worker(name, config, log, ["-c", str(concurrency), *args])
        self.started.append(worker)
        worker.start()
        if ready:
            worker.wait_ready()
        return worker

    def stop_all(self, failed: bool) -> None:
        for worker in self.started:
            if worker.process is None:
                continue
            with contextlib.suppress(Exception):
                worker.terminate(timeout=15)
        if failed:
            for worker in self.started:
                print(f"\n--- celery worker {worker.name} (exit {worker.returncode}); its log:")
                print(worker.log())


@pytest.fixture
def workers(request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    tmp = Path(tempfile.mkdtemp(prefix="celery-workers-"))
    factory = WorkerFactory(tmp)
    try:
        yield factory
    finally:
        factory.stop_all(bool(getattr(request.node, "rep_call_failed", False)))


@pytest.fixture(scope="module")
def module_workers(request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    """Like ``workers`` for a worker shared by a module (per broker)."""
    tmp = Path(tempfile.mkdtemp(prefix="celery-workers-"))
    factory = WorkerFactory(tmp)
    failed_before = request.session.testsfailed
    try:
        yield factory
    finally:
        factory.stop_all(request.session.testsfailed > failed_before)
