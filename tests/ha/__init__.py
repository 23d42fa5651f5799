"""High availability: several ``cavalcade serve`` nodes on one database.

Helpers shared by ``test_cluster.py`` and ``test_chaos.py``.

The ``start_broker`` fixture of ``tests/conftest.py`` strips every ``CAVALCADE_*``
variable from the node's environment and has no flags for the node heartbeat and the
death threshold (``Settings.node_heartbeat`` / ``node_death_threshold`` exist only as
``CAVALCADE_NODE_HEARTBEAT`` / ``CAVALCADE_NODE_DEATH_THRESHOLD``). :class:`Nodes`
starts nodes the same way but with extra environment variables, so a test can use a
short death threshold and a fixed port (to restart a killed node where it was).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pika

from cavalcade.storage.dsn import normalize_dsn
from tests.conftest import BrokerProcess, broker_command, free_port, run_sync

# Short node timers for tests that kill nodes: declared dead 3 s after the last heartbeat.
FAST_HEARTBEAT = 0.5
FAST_THRESHOLD = 3.0
FAST_ENV = {
    "CAVALCADE_NODE_HEARTBEAT": str(FAST_HEARTBEAT),
    "CAVALCADE_NODE_DEATH_THRESHOLD": str(FAST_THRESHOLD),
}


class Nodes:
    """Starts ``cavalcade serve`` nodes (with extra env) and stops what is left at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[BrokerProcess] = []

    def spawn(
        self,
        database_url: str,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        **opts: Any,
    ) -> BrokerProcess:
        port = port or free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--database-url", database_url]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not None and value is not False:
                args += [flag, str(value)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CAVALCADE_")}
        full_env.update(env or {})
        stderr_path = self.tmp / f"node-{port}-{uuid.uuid4().hex[:6]}.log"
        with stderr_path.open("wb") as out:
            process = subprocess.Popen(
                broker_command(*args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=full_env,
            )
        node = BrokerProcess(process=process, port=port, stderr_path=stderr_path)
        self.started.append(node)
        if wait:
            node.wait_ready()
        return node

    def stop_all(self, report: bool) -> None:
        for node in self.started:
            code = node.stop(timeout=20)
            if report or code not in (0, -signal.SIGKILL, -signal.SIGTERM):
                print(f"\n--- node on port {node.port} exited {code}; its log:")
                print(node.stderr()[-6000:])


def kill(node: BrokerProcess) -> None:
    """SIGKILL a node (and wait for it), as a crash would."""
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)


def connect(url: str, **params: Any) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = 5
    parameters.blocked_connection_timeout = 60
    parameters.connection_attempts = 1
    for key, value in params.items():
        setattr(parameters, key, value)
    return pika.BlockingConnection(parameters)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sql(database_url: str, query: str, *args: Any) -> list[Any]:
    """Run one query against a node's database (outside the broker) and fetch the rows."""

    async def go() -> list[Any]:
        conn = await asyncpg.connect(normalize_dsn(database_url))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return run_sync(go)  # type: ignore[no-any-return]


def unique(prefix: str) -> str:
    return f"ha.{prefix}.{uuid.uuid4().hex[:8]}"


__all__ = [
    "FAST_ENV",
    "FAST_HEARTBEAT",
    "FAST_THRESHOLD",
    "Nodes",
    "connect",
    "kill",
    "sql",
    "unique",
    "wait_until",
]
