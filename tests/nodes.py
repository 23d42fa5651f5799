"""The one launcher of ``cavalcade serve`` nodes, shared by the tests and the benchmarks.

Standard library only (no pytest, no cavalcade import), so ``benchmarks/harness.py``
imports it too (it puts the repository root on ``sys.path``). A failure raises
:class:`NodeError` with the node's log in the message.

* :func:`start_node` spawns ``cavalcade serve --host 127.0.0.1 --port P`` plus flags made
  from keywords (``workers=2`` -> ``--workers 2``, ``no_management=True`` ->
  ``--no-management``) and, unless ``wait=False``, returns once the port answers a
  protocol round trip: the AMQP header is sent and ``connection.start`` must come back
  (over TLS when the node has no plain listener).
* :class:`Node` stops with SIGTERM, a bounded wait, then SIGKILL (:meth:`Node.stop`), is
  killed like a crash (:meth:`Node.kill`), restarted where it was (:meth:`Node.restart`);
  its stdout and stderr go to one log file, printed by :meth:`Node.report`.
* :class:`Nodes` starts nodes into one folder and stops what is left (:meth:`Nodes.stop_all`).
* :func:`stop_nodes_on` stops the nodes of a database that is about to be dropped.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# frame type 1 (method), channel 0, then after the size: class 10, method 10
_START_PREFIX = b"\x01\x00\x00"
_START_METHOD = b"\x00\x0a\x00\x0a"


_BY_DATABASE: dict[str, list[Node]] = {}


class NodeError(AssertionError):
    """A node exited early, did not answer in time, or would not stop."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cavalcade_command(*args: str) -> list[str]:
    """The ``cavalcade`` command of this interpreter (``python -m cavalcade.cli``)."""
    return [sys.executable, "-m", "cavalcade.cli", *args]


def serve_flags(**opts: Any) -> list[str]:
    """Keywords as ``serve`` flags: ``True`` -> bare flag; ``None``/``False`` -> left out."""
    flags: list[str] = []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not None and value is not False:
            flags += [flag, str(value)]
    return flags


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``CAVALCADE_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVALCADE_")}
    env.update(extra or {})
    return env


def amqp_answers(
    port: int, host: str = "127.0.0.1", tls: bool = False, timeout: float = 5.0
) -> bool:
    """True when ``host:port`` answers the AMQP 0-9-1 header with ``connection.start``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(raw, server_hostname=host)
            sock.sendall(PROTOCOL_HEADER)
            head = _read(sock, 11)
            return head[:3] == _START_PREFIX and head[7:11] == _START_METHOD
    except (OSError, ssl.SSLError):
        return False


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@dataclass
class Node:
    """A ``cavalcade serve`` subprocess and how to start it again."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    command: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: Path | None = None
    tls: bool = False
    hung: bool = False  # a stop had to SIGKILL it

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/``."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def stderr_path(self) -> Path:
        return self.log_path

    def log(self) -> str:
        """Everything the node wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    stderr = log

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Node:
        """Return once the port answers an AMQP round trip; stop the node and raise
        :class:`NodeError` if it exits first or does not answer in ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise NodeError(
                    f"cavalcade serve exited with {self.process.returncode} before it "
                    f"answered on {self.port}:\n{self.log()}"
                )
            if amqp_answers(self.port, tls=self.tls, timeout=min(5.0, timeout)):
                return self
            time.sleep(0.05)
        self.stop()
        raise NodeError(
            f"cavalcade serve did not answer on {self.port} in {timeout}s:\n{self.log()}"
        )

    def signal(self, sig: int, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit (bounded); return the exit status."""
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                self.process.kill()
        return self.process.wait()

    def kill(self) -> int:
        """SIGKILL (a crash: no shutdown at all) and reap; return the exit status."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(STOP_TIMEOUT)

    def restart(self, wait: bool = True, timeout: float = START_TIMEOUT) -> Node:
        """Start the same command again on the same port (after a stop or a kill)."""
        if self.alive():
            raise NodeError(f"node on {self.port} still runs")
        self.process = _spawn(self.command, self.log_path, self.env, self.cwd)
        self.hung = False
        return self.wait_ready(timeout) if wait else self

    def report(self, failed: bool = False, tail: int | None = None) -> None:
        """Print the log when the node exited uncleanly or the caller ``failed``."""
        code = self.process.poll()
        if failed or self.hung or code not in (0, -signal.SIGTERM, -signal.SIGKILL):
            text = self.log()
            how = " (SIGKILL after SIGTERM timed out)" if self.hung else ""
            print(f"\n--- cavalcade serve on port {self.port} exited {code}{how}; its log:")
            print(text[-tail:] if tail else text)


def _spawn(
    command: Sequence[str], log_path: Path, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else node_env(),
            cwd=cwd,
        )


def start_node(
    log_dir: Path,
    database_url: str | None = None,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    cwd: Path | None = None,
    wait: bool = True,
    timeout: float = START_TIMEOUT,
    log_path: Path | None = None,
    args: Sequence[str] = (),
    **opts: Any,
) -> Node:
    """Spawn ``cavalcade serve`` on 127.0.0.1:``port`` (a free one by default).

    ``opts`` become flags (:func:`serve_flags`), ``args`` are more flags as given; ``env``
    is the node's whole environment (default :func:`node_env`); ``command`` replaces
    ``python -m cavalcade.cli`` (an older release, say); the log goes to ``log_path``,
    by default ``log_dir/node-PORT-XXXXXX.log``."""
    port = port or free_port()
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    if database_url is not None:
        serve += ["--database-url", database_url]
    serve += [*args, *serve_flags(**opts)]
    full = [*command, *serve] if command is not None else cavalcade_command(*serve)
    log_path = log_path or log_dir / f"node-{port}-{uuid.uuid4().hex[:6]}.log"
    tls = bool(opts.get("no_plain_listener")) and str(opts.get("tls_port")) == str(port)
    env_copy = dict(env) if env is not None else node_env()
    node = Node(_spawn(full, log_path, env_copy, cwd), port, log_path, full, env_copy, cwd, tls)
    if database_url is not None:
        _BY_DATABASE.setdefault(database_url, []).append(node)
    return node.wait_ready(timeout) if wait else node


def stop_nodes_on(database_url: str, timeout: float = STOP_TIMEOUT) -> None:
    """Stop every node started on ``database_url`` (before the database is dropped: a
    fixture's teardown order may otherwise drop it under running nodes)."""
    for node in _BY_DATABASE.pop(database_url, []):
        node.stop(timeout)


class Nodes:
    """Starts nodes with their logs in one folder; :meth:`stop_all` stops what is left."""

    def __init__(self, log_dir: Path) -> None:
        self.tmp = log_dir
        self.started: list[Node] = []

    def start(
        self,
        database_url: str | None = None,
        *,
        wait: bool = True,
        timeout: float = START_TIMEOUT,
        **kwargs: Any,
    ) -> Node:
        """:func:`start_node` into this folder (same arguments); tracked even when it
        fails to come up, so :meth:`stop_all` prints its log."""
        node = start_node(self.tmp, database_url, wait=False, **kwargs)
        self.started.append(node)
        return node.wait_ready(timeout) if wait else node

    def stop_all(
        self, failed: bool = False, timeout: float = STOP_TIMEOUT, tail: int | None = None
    ) -> None:
        """Stop every node (SIGTERM, then SIGKILL); print the logs of unclean exits, or of
        all when ``failed``."""
        for node in self.started:
            node.stop(timeout)
            node.report(failed, tail)
