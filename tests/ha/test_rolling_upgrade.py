"""A rolling upgrade from the previous release (built from git history) to this code, on
one database, under traffic: old nodes serve while the schema is upgraded, new nodes
start, the old ones are stopped (they close their clients with 320), a new one is drained
and stopped too; every confirmed message is delivered, and clients see nothing but
reconnects.

The previous release is the parent of the commit that added migration 0007, unpacked
with ``git archive`` and run from its own folder (``PYTHONPATH``) with this venv. It has
no maintenance mode, so old nodes are taken out by SIGTERM, which does what a drain
does (320 to every client, hand back what they held) and then exits.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from cavalcade.broker import maintenance
from cavalcade.storage import schema
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.dsn import normalize_dsn
from cavalcade.storage.repository import Repository
from tests.conftest import BrokerProcess, run_sync

from . import Nodes, connect, sql, unique, wait_until

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The source tree of the release before migration 0007."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        added = _git(
            "log", "--format=%H", "--diff-filter=A", "-n1", "--",
            "migrations/versions/0007_sql_surface.py",
        )  # fmt: skip
        if not added:
            pytest.skip("migration 0007 is not committed yet")
        rev = _git("rev-parse", f"{added}^")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no git history here: {exc.stderr}")
    folder = tmp_path_factory.mktemp("previous-release")
    archive = folder / "src.tar"
    _git("archive", "-o", str(archive), rev)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "src", filter="data")
    yield folder / "src"


def _old_cli(src: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cavalcade.cli", *args],
        cwd=src,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _spawn_old(nodes: Nodes, src: Path, url: str, name: str) -> BrokerProcess:
    """A node of the previous release (its own folder first on the path: ``-m`` would put
    the current folder, this checkout, before PYTHONPATH)."""
    node = nodes.start(
        url,
        node_name=name,
        command=[sys.executable, "-m", "cavalcade.cli"],
        cwd=src,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )
    assert not (src / "migrations" / "versions" / "0007_sql_surface.py").exists()
    return node


class Traffic:
    """A publisher (confirms) and a consumer (manual acks) that reconnect to any port
    in ``ports`` whenever their connection goes away."""

    def __init__(self, queue: str, ports: list[int]) -> None:
        self.queue = queue
        self.ports = ports
        self.stop = threading.Event()
        self.stop_consumer = threading.Event()
        self.confirmed: set[int] = set()
        self.received: set[int] = set()
        self.reconnects = 0
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._guard, args=(self._publish,), daemon=True),
            threading.Thread(target=self._guard, args=(self._consume,), daemon=True),
        ]

    def start(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def _url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{random.choice(self.ports)}/"

    def _guard(self, body: Any) -> None:
        while not (self.stop_consumer.is_set() if body == self._consume else self.stop.is_set()):
            try:
                body()
            except (pika.exceptions.AMQPError, OSError):
                self.reconnects += 1  # the node closed us (320) or went away: fail over
                time.sleep(0.1)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
                return

    def _publish(self) -> None:
        conn = connect(self._url())
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            n = max(self.confirmed, default=-1) + 1
            while not self.stop.is_set():
                ch.basic_publish(
                    "", self.queue, str(n).encode(), pika.BasicProperties(delivery_mode=2)
                )
                self.confirmed.add(n)  # basic_publish returned: the broker confirmed it
                n += 1
                time.sleep(0.005)
        finally:
            if conn.is_open:
                conn.close()

    def _consume(self) -> None:
        conn = connect(self._url())
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=20)

            def on_message(c: Any, method: Any, _props: Any, body: bytes) -> None:
                self.received.add(int(body))
                c.basic_ack(method.delivery_tag)

            ch.basic_consume(self.queue, on_message)
            while not self.stop_consumer.is_set():
                conn.process_data_events(time_limit=0.2)
        finally:
            if conn.is_open:
                conn.close()

    def join(self) -> None:
        self.stop.set()
        self.threads[0].join(30)

    def finish(self) -> None:
        self.stop_consumer.set()
        self.threads[1].join(30)


def test_rolling_upgrade_from_the_previous_release(
    previous_release: Path, empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    done = _old_cli(previous_release, "db", "upgrade", "--database-url", url)
    assert done.returncode == 0, done.stderr
    assert sql(url, "SELECT version_num FROM alembic_version")[0][0] == "0004"
    nodes = Nodes(tmp_path)
    failed = True
    traffic: Traffic | None = None
    try:
        old = [_spawn_old(nodes, previous_release, url, f"old-{i}") for i in range(2)]
        queue = unique("upgrade")
        with connect(old[0].url) as conn:
            conn.channel().queue_declare(queue, durable=True)
        ports = [n.port for n in old]
        traffic = Traffic(queue, ports).start()
        wait_until(lambda: len(traffic.received) > 50, 60, "traffic through the old nodes")

        # 1. Expand the schema while the old nodes serve.
        upgraded = subprocess.run(
            [sys.executable, "-m", "cavalcade.cli", "db", "upgrade", "--database-url", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert upgraded.returncode == 0, upgraded.stderr
        assert sql(url, "SELECT version_num FROM alembic_version")[0][0] == schema.heads()[0]
        seen = len(traffic.received)
        wait_until(lambda: len(traffic.received) > seen + 50, 60, "old nodes on the new schema")

        # 2. New nodes join.
        new = [nodes.spawn(url, node_name=f"new-{i}") for i in range(2)]
        ports.extend(n.port for n in new)

        # 3. The old nodes leave: no new client picks them, SIGTERM closes theirs with 320.
        for n in old:
            ports.remove(n.port)
        for n in old:
            assert n.stop(timeout=30) == 0, n.stderr()
        seen = len(traffic.received)
        wait_until(lambda: len(traffic.received) > seen + 50, 60, "traffic on the new nodes")

        # 4. Maintenance mode on a new node (as the next upgrade will do), then stop it.
        async def drain() -> None:
            repo = await Repository.connect(normalize_dsn(url), size=2)
            try:
                await maintenance.drain(AdminStore(repo.durable_pool), "new-0")
            finally:
                await repo.close()

        ports.remove(new[0].port)
        run_sync(drain)
        wait_until(
            lambda: (
                sql(url, "SELECT connections FROM cavalcade_nodes WHERE name = 'new-0'")[0][0] == 0
            ),
            30,
            "the drained node's clients to leave",
        )
        assert new[0].stop(timeout=30) == 0
        seen = len(traffic.received)
        wait_until(lambda: len(traffic.received) > seen + 50, 60, "traffic on the last node")

        traffic.join()
        wait_until(lambda: traffic.confirmed <= traffic.received, 60, "every confirmed message")
        traffic.finish()
        assert not traffic.errors, traffic.errors
        assert traffic.reconnects >= 2  # the clients did fail over
        lost = traffic.confirmed - traffic.received
        assert not lost, f"{len(lost)} confirmed messages lost"
        print(
            f"rolling upgrade: {len(traffic.confirmed)} confirmed, {len(traffic.received)} "
            f"received, {traffic.reconnects} reconnects"
        )
        failed = False
    finally:
        if traffic is not None:
            traffic.stop.set()
            traffic.stop_consumer.set()
        nodes.stop_all(report=failed)
