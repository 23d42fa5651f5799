"""Wait for a database to accept connections (``serve`` at start, before the schema check)."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

log = logging.getLogger("cavalcade.cli")


class DatabaseUnreachable(Exception):
    """The database refused us for good (bad password, unknown database) or stayed away."""


async def wait_until_reachable(dsn: str, wait: float, display: str) -> None:
    """Connect until it works, retrying with backoff (logging each failure) for ``wait`` s."""
    fatal = (
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidCatalogNameError,
    )
    deadline = time.monotonic() + max(wait, 0.0)
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            connection = await asyncpg.connect(dsn, timeout=max(1.0, min(10.0, remaining)))
        except fatal as exc:
            raise DatabaseUnreachable(f"cannot use the database at {display}: {exc}") from exc
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            reason = str(exc) or type(exc).__name__
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnreachable(
                    f"cannot reach the database at {display} after {attempt} attempts "
                    f"({wait:g}s, --database-wait): {reason}"
                ) from exc
            pause = min(delay, remaining)
            log.warning(
                "database at %s not reachable (attempt %d): %s; retrying in %.1fs",
                display,
                attempt,
                reason,
                pause,
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)
            continue
        await connection.close()
        return
