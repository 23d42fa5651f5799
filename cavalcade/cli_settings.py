"""What every command line (``serve``, ``db``, ``ctl``) shares: its error, ``Settings``
from the flags, and the database it works on."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cavalcade.settings import Settings

log = logging.getLogger("cavalcade.cli")


class CommandError(Exception):
    """An error that ends the command with one stderr line and exit status 1."""


_SETTING_FLAGS = (
    "host",
    "port",
    "database_url",
    "data_dir",
    "node_name",
    "workers",
    "notify",
    "poll_interval",
    "database_wait",
    "memory_high_watermark",
    "log_level",
    "log_format",
    "tls_port",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_verify_peer",
    "tls_fail_if_no_peer_cert",
    "plain_listener",
    "management",
    "management_port",
    "management_host",
    "management_tls",
    "stats_interval",
)


def build_settings(args: argparse.Namespace) -> Settings:
    """``Settings`` from the environment, overridden by the flags given on the command line."""
    overrides: dict[str, Any] = {}
    for name in _SETTING_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CommandError(f"invalid settings: {problems}") from exc
    url_file = getattr(args, "database_url_file", None) or os.environ.get(
        "CAVALCADE_DATABASE_URL_FILE"
    )
    if url_file:
        if getattr(args, "database_url", None):
            raise CommandError("give --database-url or --database-url-file, not both")
        try:
            url = Path(url_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read --database-url-file {url_file}: {exc}") from exc
        if not url:
            raise CommandError(f"--database-url-file {url_file} is empty")
        settings.database_url = url
    if settings.workers < 1:
        raise CommandError("--workers must be at least 1")
    if not 0 <= settings.port <= 65535:
        raise CommandError(f"--port {settings.port} is not a TCP port")
    if not 0 <= settings.management_port <= 65535:
        raise CommandError(f"--management-port {settings.management_port} is not a TCP port")
    return settings


@contextlib.contextmanager
def database(settings: Settings, *, stop_when_done: bool) -> Iterator[str]:
    """Yield an asyncpg DSN: ``--database-url`` normalised, or the embedded cluster's.

    With ``stop_when_done`` the embedded cluster is stopped on the way out if this call
    started it (a cluster a running ``serve`` started is left alone)."""
    from cavalcade.storage.dsn import InvalidDatabaseURL, normalize_dsn

    if settings.database_url:
        try:
            dsn = normalize_dsn(settings.database_url)
        except InvalidDatabaseURL as exc:
            raise CommandError(str(exc)) from exc
        yield dsn
        return
    from cavalcade.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError

    embedded = EmbeddedPostgres(settings.data_dir)
    was_running = embedded.is_running()
    try:
        dsn = embedded.start()
    except EmbeddedPostgresError as exc:
        raise CommandError(str(exc)) from exc
    try:
        yield dsn
    finally:
        if stop_when_done and not was_running:
            try:
                embedded.stop()
            except EmbeddedPostgresError as exc:
                log.error("%s", exc)


async def wait_for_database(dsn: str, wait: float, display: str) -> None:
    """Connect until it works, retrying with backoff (logging each failure) for ``wait`` s."""
    from cavalcade.storage.reachable import DatabaseUnreachable, wait_until_reachable

    try:
        await wait_until_reachable(dsn, wait, display)
    except DatabaseUnreachable as exc:
        raise CommandError(str(exc)) from exc
