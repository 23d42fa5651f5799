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

from tests import nodes  # noqa: E402 - the node launcher shared with the tests (stdlib only)

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
    return nodes.free_port()


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Return once 127.0.0.1:``port`` answers an AMQP round trip; exit if ``process`` dies
    first or nothing answers in ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not nodes.amqp_answers(port):
        if process is not None and process.poll() is not None:
            raise SystemExit(f"cavalcade serve on {port} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"cavalcade did not answer on {port}")
        time.sleep(0.1)


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
    return nodes.node_env({f"CAVALCADE_{k.upper()}": str(v) for k, v in settings.items()})


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM a node that still runs, SIGKILL it after ``timeout`` seconds, reap it."""
    nodes.Node(process, 0, Path(os.devnull)).stop(timeout)


@contextmanager
def running_node(
    port: int,
    log_path: Path,
    storage: Sequence[str],
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``cavalcade serve`` on 127.0.0.1:``port``; yield its process once it answers AMQP.

    ``storage`` is ``["--database-url", url]`` or ``["--data-dir", dir]``, ``extra`` more
    serve options, ``env`` the node's environment (default: :func:`node_env`); the output
    goes to ``log_path``. Afterwards the node is stopped (SIGTERM, then SIGKILL).
    """
    node = nodes.start_node(
        log_path.parent,
        port=port,
        command=cavalcade_cmd(),
        env=env if env is not None else node_env(),
        log_path=log_path,
        args=[*storage, *extra],
        wait=False,
    )
    try:
        try:
            node.wait_ready()
        except nodes.NodeError as exc:
            raise SystemExit(str(exc)) from None
        yield node.process
    finally:
        node.stop()


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
