"""The rolling-upgrade window: a node runs on its own head and on newer schemas whose
migrations declare it compatible (``schema_compat``), and refuses the rest with one line
naming ``cavalcade db upgrade``."""

from __future__ import annotations

import asyncpg
import pytest

from cavalcade.errors import SchemaNotReady
from cavalcade.storage import schema, window
from cavalcade.storage.dsn import normalize_dsn
from tests.conftest import run_sync
from tests.integration.test_cli import _run_watching_port, free_port

HEAD = schema.heads()[0]


async def _pretend_newer(url: str, *steps: tuple[str, str, str, str]) -> None:
    """Record newer migrations this code does not ship, as a newer release would."""
    conn = await asyncpg.connect(normalize_dsn(url))
    try:
        for step in steps:
            await conn.execute("INSERT INTO schema_compat VALUES ($1, $2, $3, $4)", *step)
        await conn.execute("UPDATE alembic_version SET version_num = $1", steps[-1][0])
    finally:
        await conn.close()


def test_every_revision_declares_its_window() -> None:
    steps = window.known_steps(schema.ScriptDirectory.from_config(schema.alembic_config()))
    assert steps["0007"].oldest_node == steps["0007"].down_revision
    assert steps["0007"].phase == "expand"
    assert steps["0001"].oldest_node == "0001"  # no markers: needs its own code
    ours = window.lineage(steps, HEAD)
    assert ours[0] == HEAD and ours[-1] == "0001"


async def test_newer_compatible_schema_is_accepted(database_url: str) -> None:
    await _pretend_newer(
        database_url, ("9001", HEAD, HEAD, "expand"), ("9002", "9001", HEAD, "migrate")
    )
    note = await schema.check_schema(database_url)
    assert note is not None and "rolling upgrade" in note


@pytest.mark.parametrize(
    "steps",
    [
        [("9001", HEAD, "9001", "contract")],
        [("9001", HEAD, HEAD, "expand"), ("9002", "9001", "9001", "contract")],
        [("9002", "9001", HEAD, "expand")],  # a gap in the recorded history
    ],
)
async def test_newer_incompatible_schema_is_refused(
    database_url: str, steps: list[tuple[str, str, str, str]]
) -> None:
    await _pretend_newer(database_url, *steps)
    with pytest.raises(SchemaNotReady, match="cavalcade db upgrade"):
        await schema.check_schema(database_url)


def test_older_schema_is_refused(empty_database_url: str) -> None:
    run_sync(lambda: schema.upgrade(empty_database_url, "0004"))
    with pytest.raises(SchemaNotReady, match="cavalcade db upgrade` first"):
        run_sync(lambda: schema.check_schema(empty_database_url))


def test_serve_accepts_the_window_and_refuses_outside_it(database_url: str) -> None:
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--database-url", database_url]
    run_sync(lambda: _pretend_newer(database_url, ("9001", HEAD, "9001", "contract")))
    code, stderr, accepted = _run_watching_port([*args, "--database-wait", "5"], port)
    assert code != 0 and not accepted
    assert len([line for line in stderr.splitlines() if "cavalcade db upgrade" in line]) == 1


def test_serve_runs_on_a_newer_compatible_schema(database_url: str, start_broker) -> None:  # type: ignore[no-untyped-def]
    run_sync(lambda: _pretend_newer(database_url, ("9001", HEAD, HEAD, "expand")))
    broker = start_broker(database_url)
    assert broker.process.poll() is None
    broker.stop()
    assert "rolling upgrade" in broker.stderr()
