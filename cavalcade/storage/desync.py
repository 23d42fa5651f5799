"""Pool connections whose session the server ended while they sat idle.

When PostgreSQL ends a session (``pg_terminate_backend``, an administrator's shutdown,
``DROP DATABASE ... WITH (FORCE)``) it sends a FATAL ErrorResponse, then closes the
socket. asyncpg reads an ErrorResponse that arrives between operations as a protocol
error and leaves the connection in its error-consuming state until the socket's end
reaches it, milliseconds later. Our pools release connections without asyncpg's reset
query (``repository._keep``), the query that would have found and dropped such a
connection, so the pool hands it out and its next statement fails with
``InternalClientError: cannot switch to state 12; another operation (2) is in
progress`` (what the expiry sweep logged in the chaos test: it is the pool's most
frequent user). That error names no database condition, so no caller retried it.

:class:`Connection` ends such a connection at once (the pool opens a fresh one) and
raises what happened: :class:`asyncpg.ConnectionDoesNotExistError`, which every caller
already treats as a lost connection and retries (``sqlstate.is_unavailable``).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.exceptions import InternalClientError


def _desynced(exc: InternalClientError) -> bool:
    """asyncpg's state machine is out of step with the server (see the module)."""
    text = str(exc)
    return "another operation" in text or "protocol is in" in text


class Connection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that ends itself when its protocol is out of step."""

    def _lost(self, exc: InternalClientError) -> asyncpg.ConnectionDoesNotExistError:
        self.terminate()
        lost = asyncpg.ConnectionDoesNotExistError(
            f"the server ended this session between statements ({exc})"
        )
        lost.__cause__ = exc
        return lost

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(query, *args, **kwargs)
        except InternalClientError as exc:
            if not _desynced(exc):
                raise
            raise self._lost(exc) from exc

    async def _execute(self, *args: Any, **kwargs: Any) -> Any:
        """fetch, fetchrow, fetchval, executemany... all run through here."""
        try:
            return await super()._execute(*args, **kwargs)
        except InternalClientError as exc:
            if not _desynced(exc):
                raise
            raise self._lost(exc) from exc
