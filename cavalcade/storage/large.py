"""A large message's row by ``COPY ... FROM STDIN (FORMAT binary)``, its body streamed.

A bytea parameter costs the node two copies of the body (asyncpg encodes the
parameters into one buffer, then that buffer into the Bind message) and the time to
make them: 3x a 100 MB body in memory, and half the node's time publishing it. A
binary COPY of one row lets the body go out as slices of itself: each becomes one
CopyData message, and asyncpg waits for the socket to drain before the next. The
values COPY cannot compute (the id, the expiry and due times, the queue's lock) come
first from ``queries.LARGE_ROW``, in the same transaction. A database without that
COPY gets the row by ``queries.INSERT_ONE`` (see :func:`insert_large`).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator

import asyncpg

from . import queries, textsafe
from .records import NewMessage

# One CopyData message per slice of the body: the node holds the body and one slice.
SLICE = 1024 * 1024

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # no flags, no extension
_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_INT8 = struct.Struct(">iq")
_INT4 = struct.Struct(">ii")
_INT2 = struct.Struct(">ih")

COLUMNS = (
    "id", "queue_id", "priority", "persistent", "exchange", "routing_key", "properties",
    "content_type", "message_id", "correlation_id", "expiration", "expires_at",
    "available_at",
)  # fmt: skip
OWNED_COLUMNS = ("owner_node", "owner_channel", "delivery_count")


def _field(value: bytes | None) -> bytes:
    return _NULL if value is None else struct.pack(">i", len(value)) + value


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _head(
    m: NewMessage, message_id: int, expires_at: bytes | None, available_at: bytes | None,
    owner: uuid.UUID | None,
) -> bytes:  # fmt: skip
    """The row's fields before its body, in the order of ``COLUMNS`` (+ owned), and the
    body's length (the body is the row's last field)."""
    copy = textsafe.escape_or_none
    fields = [
        _INT8.pack(8, message_id),
        _INT8.pack(8, m.queue_id),
        _INT2.pack(2, m.priority),
        _field(b"\x01" if m.persistent else b"\x00"),
        _field(textsafe.escape(m.exchange).encode()),
        _field(textsafe.escape(m.routing_key).encode()),
        _field(m.properties),
        _field(_text(copy(m.content_type))),
        _field(_text(copy(m.message_id))),
        _field(_text(copy(m.correlation_id))),
        _field(_text(copy(m.expiration))),
        _field(expires_at),
        _field(available_at),
    ]
    if owner is not None:
        fields += [_field(owner.bytes), _INT8.pack(8, 0), _INT4.pack(4, 1)]
    count = len(fields) + 1
    return b"".join((_SIGNATURE, struct.pack(">h", count), *fields, struct.pack(">i", len(m.body))))


async def _stream(head: bytes, body: bytes) -> AsyncIterator[bytes | memoryview]:
    """The COPY's data: the row up to its body, the body in slices (views), the end."""
    yield head
    view = memoryview(body)
    for start in range(0, len(view), SLICE):
        yield view[start : start + SLICE]
    yield _TRAILER


# What a server without this COPY (binary COPY, ``timestamptz_send``: CockroachDB and
# other PostgreSQL-compatible databases) answers: the row then goes by INSERT.
_REFUSALS = (
    asyncpg.FeatureNotSupportedError,
    asyncpg.UndefinedFunctionError,
    asyncpg.InsufficientPrivilegeError,
)


async def insert_large(
    conn: asyncpg.Connection, m: NewMessage, owner: uuid.UUID | None = None
) -> int | None:
    """Insert one message (as delivered by node ``owner``, if given) in the open
    transaction of ``conn``; its id, or None if its queue is gone. The COPY runs in a
    savepoint (two short round trips beside a body of 1 MiB or more), so that a server
    that cannot do it gets the row by ``INSERT`` instead."""
    try:
        async with conn.transaction():
            return await _copy(conn, m, owner)
    except _REFUSALS:
        return await _insert(conn, m, owner)


async def _insert(conn: asyncpg.Connection, m: NewMessage, owner: uuid.UUID | None) -> int | None:
    """The row by ``queries.INSERT_ONE``: the body as one bytea parameter."""
    copy = textsafe.escape_or_none
    message_id = await conn.fetchval(
        queries.INSERT_ONE,
        m.queue_id, m.priority, m.persistent, m.exchange, m.routing_key, m.properties,
        copy(m.content_type), copy(m.message_id), copy(m.correlation_id),
        copy(m.expiration), m.body, m.ttl_ms, m.delay_ms, owner,
    )  # fmt: skip
    return None if message_id is None else int(message_id)


async def _copy(conn: asyncpg.Connection, m: NewMessage, owner: uuid.UUID | None) -> int | None:
    row = await conn.fetchrow(queries.LARGE_ROW, m.queue_id, m.ttl_ms, m.delay_ms)
    if row is None:
        return None
    message_id = int(row["id"])
    head = _head(m, message_id, row["expires_at"], row["available_at"], owner)
    columns = [*COLUMNS, *(OWNED_COLUMNS if owner is not None else ()), "body"]
    await conn.copy_to_table(
        "messages", source=_stream(head, m.body), columns=columns, format="binary"
    )
    return message_id
