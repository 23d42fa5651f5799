"""The documented deployment: the broker's objects in a schema of their own (owned by the
broker's role), and an application role that may only call ``cavalcade_publish``."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pika
import pytest

from cavalcade import client
from tests.conftest import admin_execute

from .conftest import drained, wait_messages

pytestmark = pytest.mark.timeout(120)


async def test_broker_schema_and_application_role(
    empty_database_url: str, pg_dsn: str, start_broker: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    broker_role, app_role = f"cav_broker_{tag}", f"cav_app_{tag}"
    db = urlsplit(empty_database_url).path.lstrip("/")
    base = empty_database_url.split("@", 1)[1]
    broker_url = f"postgresql://{broker_role}:pw@{base}"
    app_dsn = f"postgresql://{app_role}:pw@{base}"
    admin_execute(
        pg_dsn,
        f"CREATE ROLE {broker_role} LOGIN PASSWORD 'pw'",
        f"CREATE ROLE {app_role} LOGIN PASSWORD 'pw'",
        f'ALTER ROLE {broker_role} IN DATABASE "{db}" SET search_path = cavalcade',
    )
    try:
        admin_execute(
            empty_database_url,
            f"CREATE SCHEMA cavalcade AUTHORIZATION {broker_role}",
            f"CREATE SCHEMA app AUTHORIZATION {app_role}",
        )
        up = subprocess.run(
            [sys.executable, "-m", "cavalcade.cli", "db", "upgrade", "--database-url", broker_url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        tables = await _fetch(
            empty_database_url,
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'messages'",
        )
        assert [r[0] for r in tables] == ["cavalcade"]
        node = start_broker(broker_url)
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.queue_declare("orders")
        owner = await asyncpg.connect(broker_url)
        try:
            await owner.execute(f"GRANT USAGE ON SCHEMA cavalcade TO {app_role}")
            await owner.execute(
                "GRANT EXECUTE ON FUNCTION"
                f" cavalcade.cavalcade_publish(text, text, bytea, jsonb, text) TO {app_role}"
            )
        finally:
            await owner.close()
        app = await asyncpg.connect(app_dsn)
        try:
            await app.execute("CREATE TABLE app.orders (id int PRIMARY KEY)")
            fn = "cavalcade.cavalcade_publish"
            with pytest.raises(asyncpg.UniqueViolationError):
                async with app.transaction():
                    await app.execute("INSERT INTO app.orders VALUES (1)")
                    await client.publish(app, "", "orders", b"1", function=fn)
                    await app.execute("INSERT INTO app.orders VALUES (1)")
            async with app.transaction():
                await app.execute("INSERT INTO app.orders VALUES (2)")
                await client.publish(app, "", "orders", b"2", function=fn)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("SELECT count(*) FROM cavalcade.messages")
        finally:
            await app.close()
        assert [b for *_, b in wait_messages(ch, "orders", 1)] == [b"2"]
        assert drained(ch, "orders") == []
        conn.close()
        node.stop()
    finally:
        admin_execute(pg_dsn, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin_execute(
            pg_dsn, f"DROP ROLE IF EXISTS {app_role}", f"DROP ROLE IF EXISTS {broker_role}"
        )


async def _fetch(dsn: str, query: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()
