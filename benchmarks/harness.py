"""Shared pieces of the benchmark scripts: ports, databases and ``cavalcade serve`` nodes.

The scripts in this folder are run as ``python benchmarks/<script>.py``, so Python puts this
folder on ``sys.path`` and they import this module as ``harness``. Importing it also puts
the repository root on ``sys.path``, so the ``cavalcade`` package of this checkout is used.

A typical run::

    with work_dir("cavalcade-bench-") as tmp, cavalcade_node(args.database_url, tmp) as url:
        ...  # url is amqp://guest:guest@127.0.0.1:<port>/ of a node that listens

The database helpers import ``asyncpg`` and ``cavalcade`` only when called, so this module
stays cheap to import (``celery_tasks.py`` is also a Celery worker's task module).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- options


def add_database_option(
    ap: argparse.ArgumentParser,
    embedded: str = "the embedded PostgreSQL in a temporary data dir",
) -> None:
    """Add ``--database-url`` (default: ``$CAVALCADE_TEST_DATABASE_URL``) to ``ap``.

    ``embedded`` says, in the help, what is used when no server is given.
    """
    ap.add_argument(
        "--database-url",
        default=os.environ.get("CAVALCADE_TEST_DATABASE_URL"),
        help=f"a PostgreSQL server where a fresh database may be created (default: {embedded})",
    )


def database_label(server_url: str | None) -> str:
    """How a run's JSON names where Cavalcade's database lives."""
    return "external PostgreSQL" if server_url else "embedded PostgreSQL"


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; exit if ``process`` dies first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"cavalcade serve on {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"cavalcade did not listen on {port}")


def amqp_url(port: int, path: str = "/") -> str:
    """The guest URL of a local node; ``path="//"`` is how kombu spells the vhost ``/``."""
    return f"amqp://guest:guest@127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------- folders


@contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder (removed afterwards) that an embedded server's user may traverse."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)  # as root, the embedded server runs as another user
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- databases


def cavalcade_cmd() -> list[str]:
    """The ``cavalcade`` command: next to this Python, on PATH, or ``python -m``."""
    exe = shutil.which("cavalcade", path=str(Path(sys.executable).parent)) or shutil.which(
        "cavalcade"
    )
    return [exe] if exe else [sys.executable, "-m", "cavalcade.cli"]


def _execute(server_url: str, sql: str) -> None:
    """Run one statement on ``server_url`` (outside a transaction)."""
    import asyncio

    import asyncpg

    from cavalcade.storage.dsn import normalize_dsn

    async def run() -> None:
        conn = await asyncpg.connect(normalize_dsn(server_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def fresh_database(server_url: str) -> str:
    """CREATE DATABASE on the given server; returns the new database's URL."""
    from cavalcade.storage.dsn import with_database

    name = "cavalcade_bench_" + uuid.uuid4().hex[:8]
    _execute(server_url, f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, database_url: str) -> None:
    """DROP the database ``database_url`` names, on ``server_url``, even if still in use."""
    name = database_url.split("?")[0].rsplit("/", 1)[-1]
    _execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def temporary_database(server_url: str) -> Iterator[str]:
    """Yield the URL of a fresh, migrated database on ``server_url``; drop it afterwards."""
    db = fresh_database(server_url)
    try:
        subprocess.run(
            [*cavalcade_cmd(), "db", "upgrade", "--database-url", db],
            check=True,
            capture_output=True,
        )
        yield db
    finally:
        drop_database(server_url, db)


@contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    """Run an embedded PostgreSQL in ``data_dir``; yield its server URL, stop it afterwards."""
    from cavalcade.storage.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


# --------------------------------------------------------------------------- nodes


def node_env(**settings: object) -> dict[str, str]:
    """This process's environment without ``CAVALCADE_*``, plus ``CAVALCADE_<KEY>`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVALCADE_")}
    env.update({f"CAVALCADE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM a node that still runs, SIGKILL it after ``timeout`` seconds, reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


@contextmanager
def running_node(
    port: int,
    log_path: Path,
    storage: Sequence[str],
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``cavalcade serve`` on 127.0.0.1:``port``; yield its process once it listens.

    ``storage`` is ``["--database-url", url]`` or ``["--data-dir", dir]``, ``extra`` more
    serve options, ``env`` the node's environment (default: :func:`node_env`); the output
    goes to ``log_path``. Afterwards the node is stopped with :func:`stop_node`.
    """
    serve = [*cavalcade_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*serve, *storage, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else node_env(),
        )
    try:
        wait_port(port, process)
        yield process
    finally:
        stop_node(process)


@contextmanager
def cavalcade_node(server_url: str | None, workdir: Path, path: str = "/") -> Iterator[str]:
    """Yield the AMQP URL of one running node; stop it (and drop its database) afterwards.

    The node runs on a fresh database of the PostgreSQL server ``server_url`` or, without
    one, on the embedded PostgreSQL in ``workdir/data``; it logs to ``workdir/serve.log``.
    ``path`` ends the URL (see :func:`amqp_url`).
    """
    port = free_port()
    with ExitStack() as stack:
        if server_url:
            storage = ["--database-url", stack.enter_context(temporary_database(server_url))]
        else:
            storage = ["--data-dir", str(workdir / "data")]
        stack.enter_context(running_node(port, workdir / "serve.log", storage))
        yield amqp_url(port, path)


# --------------------------------------------------------------------------- side by side


def alternate_rounds(
    rounds: int,
    cavalcade: Callable[[], dict],
    rabbitmq: Callable[[], dict],
    unit: str,
) -> dict[str, list[dict]]:
    """Run ``cavalcade()`` then ``rabbitmq()`` ``rounds`` times, printing each round's rates.

    Each call returns a dict with at least ``rate`` (``unit`` per second); returns every
    call's dict by broker, in order.
    """
    results: dict[str, list[dict]] = {"cavalcade": [], "rabbitmq": []}
    for r in range(rounds):
        results["cavalcade"].append(cavalcade())
        results["rabbitmq"].append(rabbitmq())
        print(
            f"round {r + 1}: cavalcade {results['cavalcade'][-1]['rate']:.0f} {unit}, "
            f"rabbitmq {results['rabbitmq'][-1]['rate']:.0f} {unit}",
            flush=True,
        )
    return results


def medians(results: dict[str, list[dict]], key: str) -> dict[str, float]:
    """The median of ``key`` over the rounds, by broker."""
    return {k: statistics.median(x[key] for x in v) for k, v in results.items()}
