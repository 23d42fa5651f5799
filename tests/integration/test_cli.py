"""The command-line contract: refusals before listening, the taken port, the embedded default."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cavalcade.storage.embedded import EmbeddedPostgres
from tests.nodes import amqp_answers, free_port, start_node
from tests.nodes import cavalcade_command as broker_command


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _run_watching_port(args: list[str], port: int, timeout: float = 60.0) -> tuple[int, str, bool]:
    """Run ``cavalcade ARGS`` to its end; report whether ``port`` ever accepted meanwhile."""
    process = subprocess.Popen(
        broker_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    accepted = False
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        accepted = accepted or _accepts(port)
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    _, stderr = process.communicate()
    return process.returncode, stderr.decode(errors="replace"), accepted


def test_serve_refuses_an_empty_database(empty_database_url: str) -> None:
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    code, stderr, accepted = _run_watching_port(
        [*args, "--database-url", empty_database_url, "--database-wait", "5"], port
    )
    assert code != 0, stderr
    assert not accepted
    lines = [line for line in stderr.splitlines() if "cavalcade db upgrade" in line]
    assert len(lines) == 1, stderr


def test_serve_names_a_taken_port(database_url: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = subprocess.run(
            broker_command(
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database-url",
                database_url,
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if str(port) in line]
    assert any("--port" in line for line in lines), result.stderr


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cavalcade-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        embedded = EmbeddedPostgres(path)
        if embedded.is_running():
            embedded.stop()
        shutil.rmtree(path, ignore_errors=True)


def _serve_once(data_dir: Path, tmp_path: Path) -> None:
    node = start_node(tmp_path, data_dir=str(data_dir))  # waits for connection.start
    try:
        assert amqp_answers(node.port)
        assert node.stop(60) == 0, node.log()
    finally:
        node.kill()
    assert not EmbeddedPostgres(data_dir).is_running(), "the embedded PostgreSQL still runs"


def test_embedded_serve_starts_stops_and_restarts(data_dir: Path, tmp_path: Path) -> None:
    _serve_once(data_dir, tmp_path)
    _serve_once(data_dir, tmp_path)  # the same data dir again: reused, data intact

    current = subprocess.run(
        broker_command("db", "current", "--data-dir", str(data_dir)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert current.returncode == 0, current.stderr
    assert "(head)" in current.stdout
    assert not EmbeddedPostgres(data_dir).is_running()
