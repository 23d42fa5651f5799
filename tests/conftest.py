"""Fixtures shared by every test: a real PostgreSQL, migrated databases, real broker nodes.

* ``pg_dsn`` (session): ``CAVALCADE_TEST_DATABASE_URL`` if set, else an embedded PostgreSQL
  in a temporary folder, stopped at the end of the session. A DSN of a database on which
  the tests may ``CREATE DATABASE``.
* ``template_database`` (session): name of a database migrated to head once per session.
* ``database_url`` (function): a fresh database copied from the template, dropped after.
* ``empty_database_url`` (function): a fresh database with no schema at all, dropped after.
* ``cavalcade_url`` (session): ``amqp://guest:guest@127.0.0.1:PORT/`` of a real
  ``cavalcade serve`` subprocess on its own database (or ``CAVALCADE_TEST_AMQP_URL``).
* ``start_broker`` (function): ``start_broker(database_url, **opts) -> BrokerProcess``
  starts another node (``opts`` become flags: ``workers=2`` -> ``--workers 2``).
* ``rabbitmq_url`` (session): the local RabbitMQ for comparisons, or the test is skipped.
* ``fail_on_loop_errors`` (autouse): a test fails when an event loop of this process
  reported an exception nobody handled ("Task exception was never retrieved", ...).

Nodes are launched by ``tests/nodes.py`` (shared with the benchmarks); waiting for a
condition is ``tests/waiting.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
import shutil
import socket
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cavalcade.storage import schema
from cavalcade.storage.dsn import normalize_dsn, with_database
from cavalcade.storage.embedded import EmbeddedPostgres
from tests.nodes import Node, Nodes, cavalcade_command, free_port, start_node, stop_nodes_on

__all__ = ["BrokerProcess", "broker_command", "free_port", "spawn_broker"]

BROKER_START_TIMEOUT = 60.0


def run_sync(factory: Callable[[], Any]) -> Any:
    """Run ``factory()`` (awaiting it if it returns a coroutine) in a worker thread, so it
    never meets the test's event loop (alembic's env.py calls ``asyncio.run``)."""

    def call() -> Any:
        result = factory()
        return asyncio.run(result) if asyncio.iscoroutine(result) else result

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


async def _execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(normalize_dsn(dsn))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def admin_execute(dsn: str, *statements: str) -> None:
    """Run SQL statements (such as CREATE DATABASE) outside any transaction."""
    run_sync(lambda: _execute(dsn, *statements))


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _drop(pg_dsn: str, name: str) -> None:
    admin_execute(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL the tests own: CAVALCADE_TEST_DATABASE_URL, or an embedded one."""
    url = os.environ.get("CAVALCADE_TEST_DATABASE_URL")
    if url:
        yield normalize_dsn(url)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="cavalcade-test-pg-"))
    data_dir.chmod(0o755)  # our own fresh folder: let the server's user traverse it
    embedded = EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(pg_dsn: str) -> Iterator[str]:
    """The name of a database migrated to head once per session (use it as a TEMPLATE)."""
    name = _unique("cavalcade_tmpl")
    admin_execute(pg_dsn, f'CREATE DATABASE "{name}"')
    try:
        run_sync(lambda: schema.upgrade(with_database(pg_dsn, name), "head"))
        yield name
    finally:
        _drop(pg_dsn, name)


@contextlib.contextmanager
def _fresh_database(pg_dsn: str, template: str | None) -> Iterator[str]:
    name = _unique("cavalcade_test")
    clause = f' TEMPLATE "{template}"' if template else ""
    admin_execute(pg_dsn, f'CREATE DATABASE "{name}"{clause}')
    url = with_database(pg_dsn, name)
    try:
        yield url
    finally:
        stop_nodes_on(url)  # nodes of a fixture torn down after this one
        _drop(pg_dsn, name)


@pytest.fixture
def database_url(pg_dsn: str, template_database: str) -> Iterator[str]:
    """A database of its own for this test, at the head revision (with guest, vhost /)."""
    with _fresh_database(pg_dsn, template_database) as url:
        yield url


@pytest.fixture
def empty_database_url(pg_dsn: str) -> Iterator[str]:
    """A database of its own for this test, with no Cavalcade schema at all."""
    with _fresh_database(pg_dsn, None) as url:
        yield url


# --------------------------------------------------------------------------- broker nodes

# The launcher lives in tests/nodes.py (shared with the benchmarks); these names stay.
BrokerProcess = Node
broker_command = cavalcade_command


def spawn_broker(database_url: str | None, port: int, tmp: Path, **opts: Any) -> BrokerProcess:
    """Start ``cavalcade serve`` without waiting for it (see ``Node.wait_ready``)."""
    return start_node(tmp, database_url, port=port, wait=False, **opts)


@pytest.fixture(scope="session")
def cavalcade_url(
    request: pytest.FixtureRequest,
    pg_dsn: str,
    template_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:PORT/`` of a broker node shared by the session.

    ``CAVALCADE_TEST_AMQP_URL`` points the suite at a broker that already runs instead
    (``CAV_AS_RABBIT=1`` at the local RabbitMQ, to check what a test asserts)."""
    external = os.environ.get("CAVALCADE_TEST_AMQP_URL")
    if not external and os.environ.get("CAV_AS_RABBIT"):
        external = "amqp://guest:guest@127.0.0.1:5672/"
    if external:
        yield external
        return
    with _fresh_database(pg_dsn, template_database) as url:
        broker = spawn_broker(url, free_port(), tmp_path_factory.mktemp("broker"))
        try:
            broker.wait_ready()
            yield broker.url
        finally:
            broker.stop()
            broker.report(request.session.testsfailed > 0)


@pytest.fixture
def start_broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., BrokerProcess]]:
    """``start_broker(database_url, **opts)``: a node of this test's own, stopped after it."""
    nodes = Nodes(tmp_path)

    def start(database_url: str | None, **opts: Any) -> BrokerProcess:
        return nodes.start(database_url, port=int(opts.pop("port", 0)) or None, **opts)

    yield start
    nodes.stop_all(bool(getattr(request.node, "rep_call_failed", False)))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
    return report


# --------------------------------------------------------------------------- lost exceptions

_loop_errors: list[str] = []
_default_exception_handler = asyncio.BaseEventLoop.default_exception_handler


def _describe(context: dict[str, Any]) -> str:
    lines = [str(context.get("message") or "event loop error")]
    for key in ("task", "future", "handle"):
        if key in context:
            lines.append(f"{key}: {context[key]!r}"[:500])
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        lines.append("".join(traceback.format_exception(exc)).rstrip())
    return "\n".join(lines)


def _recording_exception_handler(loop: asyncio.BaseEventLoop, context: dict[str, Any]) -> None:
    """Every loop's default handler: log as asyncio does, and remember it for the test."""
    _loop_errors.append(_describe(context))
    _default_exception_handler(loop, context)


asyncio.BaseEventLoop.default_exception_handler = _recording_exception_handler  # type: ignore[method-assign]


def _take_loop_errors() -> list[str]:
    gc.collect()  # a task that failed unobserved says so when it is collected
    taken = list(_loop_errors)
    del _loop_errors[:]
    return taken


@pytest.fixture(autouse=True)
def fail_on_loop_errors() -> Iterator[None]:
    """Fail the test when an event loop of this process reported an exception nobody
    handled ("Task exception was never retrieved", a callback that raised, ...)."""
    stray = _take_loop_errors()
    if stray:
        pytest.fail(
            "event loop errors before this test (a previous test's or fixture's teardown):\n\n"
            + "\n\n".join(stray),
            pytrace=False,
        )
    yield
    errors = _take_loop_errors()
    if errors:
        pytest.fail(
            "unhandled event loop errors during the test:\n\n" + "\n\n".join(errors),
            pytrace=False,
        )


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The local RabbitMQ (for behaviour comparisons), or skip the test."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    return "amqp://guest:guest@127.0.0.1:5672/"
