"""Reading database errors: which ones mean "the database is away, try again"."""

from __future__ import annotations

import asyncio

import asyncpg

# Class 08 (connection exception), 57P01-03 (shutdown / cannot connect now), 53300 (too
# many connections), 40001/40P01 (serialization failure / deadlock: retry the work).
_RETRY_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be used right now (retry later)."""
    if isinstance(
        exc,
        asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | ConnectionError
        | OSError
        | asyncio.TimeoutError,
    ):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_RETRY_SQLSTATES)
