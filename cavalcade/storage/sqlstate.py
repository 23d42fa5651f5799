"""Reading database errors: the one place that says what a database error means.

* :func:`is_unavailable`: the database is away or busy; try again.
* :func:`is_resource_alarm`: the database is out of a resource (disk full, out of memory):
  a condition that clears by itself, as RabbitMQ's disk and memory alarms do.
* :func:`is_data_error`: the database refused the data of one statement (classes 22 and
  23); retrying the same rows never helps.
* :func:`to_amqp`: the AMQP error a client gets for any database error, with RabbitMQ's
  reply code for the same situation. Its text never carries the database's message: that
  goes to the node's log only.
"""

from __future__ import annotations

import asyncio

import asyncpg

from cavalcade.errors import AMQPError, InternalError, NotFound, PreconditionFailed

# Class 08 (connection exception), 57P01-03 (shutdown / cannot connect now), 53300 (too
# many connections), 40001/40P01 (serialization failure / deadlock: retry the work).
_RETRY_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")

# 53100 disk full, 53200 out of memory, 58030 I/O error (e.g. ENOSPC on a WAL write).
_ALARM_SQLSTATES = ("53100", "53200", "58030")


def sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


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
    state = sqlstate(exc)
    return state is not None and (state.startswith(_RETRY_SQLSTATES) or is_resource_alarm(exc))


def is_resource_alarm(exc: BaseException) -> bool:
    """Disk full, out of memory, I/O error: block publishers until it clears."""
    state = sqlstate(exc)
    return state is not None and state.startswith(_ALARM_SQLSTATES)


def is_data_error(exc: BaseException) -> bool:
    """The database refused these rows (data exception 22, integrity violation 23)."""
    state = sqlstate(exc)
    return state is not None and state[:2] in ("22", "23")


def to_amqp(exc: BaseException) -> AMQPError:
    """RabbitMQ's answer to what the database said; the database's text stays out.

    A foreign key violation means an entity was deleted under the request (a bind racing
    the delete of its exchange or queue): RabbitMQ answers 404 there. Other refused data
    is 406 PRECONDITION_FAILED; anything else is 541 INTERNAL_ERROR."""
    if isinstance(exc, AMQPError):
        return exc
    state = sqlstate(exc)
    if state == "23503":
        return NotFound("the entity was deleted meanwhile")
    if state is not None and state[:2] in ("22", "23"):
        return PreconditionFailed("the broker could not store this request")
    if state is not None and is_resource_alarm(exc):
        return InternalError("the broker's database is out of resources; try again later")
    if state is not None or isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return InternalError("database error")
    return InternalError("internal error")


def is_database_error(exc: BaseException) -> bool:
    """Raised by the database driver (so its text must not reach a client)."""
    return isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError) or (
        sqlstate(exc) is not None
    )
