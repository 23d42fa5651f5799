"""Alembic environment (async, after alembic's ``templates/async/env.py``).

A caller that already holds a connection passes it in ``config.attributes["connection"]``
(tests, ``cavalcade db``); otherwise the engine is built from ``CAVALCADE_DATABASE_URL``
(or ``sqlalchemy.url``) through :func:`cavalcade.storage.dsn.make_engine`, which accepts
several hosts and libpq query parameters.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from cavalcade.storage.dsn import make_engine
from cavalcade.storage.models import Base

config = context.config

if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("CAVALCADE_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "error: no database URL: set CAVALCADE_DATABASE_URL "
            "(e.g. postgresql://user@host/db), or run `cavalcade db upgrade --database-url ...`"
        )
    return str(url)


def _configure(connection: Connection | None = None, **kw: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
        **kw,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: emit SQL for the URL's dialect without connecting."""
    _configure(url="postgresql://", literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = make_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # a sync Connection (e.g. from AsyncConnection.run_sync) handed in by the caller
        do_run_migrations(connection)
        return
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
