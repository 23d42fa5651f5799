"""The write batch: :class:`WriteBatch` runs its statements (storage/queries.py) inside
one transaction.

The broker drives a batch (broker/write_path.py): it opens the transaction (see
:func:`transaction`), runs these statements in its order and decides, with the pure
rules of domain/limits.py and domain/deadletter.py, what full queues refuse and which
copies dead messages become. Nothing here calls back up; what a batch does is all or
nothing because it is one transaction.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import large, queries, textsafe
from .notify import QueuesWoken, encode, send
from .records import DeadRow, NewMessage


@dataclass(slots=True)
class BatchOutcome:
    """Which publishes a full queue refused (indexes), which queues gained messages, and
    the rows written as this node's deliveries (in batch order)."""

    refused: set[int] = field(default_factory=set)
    touched: set[int] = field(default_factory=set)
    delivered: list[tuple[int, int]] = field(default_factory=list)  # (queue id, id)


def _dead(rows: Sequence[asyncpg.Record]) -> list[DeadRow]:
    """RETURNING order is unspecified: id order is queue order."""
    return sorted((DeadRow(*r) for r in rows), key=lambda d: d.id)


class WriteBatch:
    """One open write transaction: each method is one statement (or a few) on it."""

    def __init__(self, conn: asyncpg.Connection, node_id: uuid.UUID | None, notify: bool) -> None:
        self.conn = conn
        self.node_id = node_id
        self.notify = notify

    async def async_commit(self) -> None:
        """Do not wait for the disk at commit (only transient publishes and acks: losing
        them in a database crash is what RabbitMQ does too)."""
        await self.conn.execute("SET LOCAL synchronous_commit = off")

    async def ready_lengths(self, queue_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Ready (messages, bytes) of each queue, the queue rows locked until commit
        (then counted, in a statement of its own: see ``queries.READY_LENGTHS``)."""
        await self.conn.execute(queries.LOCK_QUEUES, sorted(queue_ids))
        rows = await self.conn.fetch(queries.READY_LENGTHS, sorted(queue_ids))
        return {r[0]: (r[1], r[2]) for r in rows}

    async def insert(
        self, messages: Sequence[NewMessage], delivered: Sequence[int] = ()
    ) -> list[tuple[int, int]]:
        """Insert ``messages``, those at the indexes ``delivered`` as delivered by this
        node; the (queue id, id) of those, in their order."""
        return await insert(self.conn, messages, delivered, self.node_id)

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete acked rows this node owns."""
        await self.conn.execute(queries.ACK, list(ids), self.node_id)

    async def requeue(self, ids: Sequence[int]) -> None:
        """Owned rows back to ready, redelivered."""
        await self.conn.execute(queries.REQUEUE, list(ids), self.node_id)

    async def requeue_counted(self, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """Like :meth:`requeue`; (id, queue id, delivery count) of each row requeued."""
        rows = await self.conn.fetch(queries.REQUEUE_COUNTED, list(ids), self.node_id)
        return [(r[0], r[1], r[2]) for r in rows]

    async def take(self, ids: Sequence[int]) -> list[DeadRow]:
        """Delete rows (whoever owns them), returning them in queue order."""
        return _dead(await self.conn.fetch(queries.TAKE, list(ids)))

    async def take_owned(self, ids: Sequence[int]) -> list[DeadRow]:
        """Delete rows this node owns, returning them in queue order."""
        return _dead(await self.conn.fetch(queries.TAKE_OWNED, list(ids), self.node_id))

    async def drop_head(self, queue_id: int, max_length: int, max_bytes: int) -> list[DeadRow]:
        """Delete the oldest ready messages of a queue past its limits (queue row locked)."""
        await self.conn.execute(queries.LOCK_QUEUE, queue_id)
        return _dead(await self.conn.fetch(queries.DROP_HEAD, queue_id, max_length, max_bytes))

    async def take_expired(self, limit: int) -> list[DeadRow]:
        """Delete up to ``limit`` expired ready messages, returning them in queue order."""
        return _dead(await self.conn.fetch(queries.EXPIRE, limit))

    async def notify_queues(self, queues: set[int], node_id: uuid.UUID | None = None) -> None:
        """Tell every node which queues gained ready messages (if this store notifies)."""
        if self.notify:
            await send(self.conn, QueuesWoken(node_id, frozenset(queues)))


WriteTransaction = contextlib.AbstractAsyncContextManager[WriteBatch]


@contextlib.asynccontextmanager
async def transaction(
    pool: asyncpg.Pool, node_id: uuid.UUID | None, notify: bool
) -> AsyncIterator[WriteBatch]:
    """A write transaction on ``pool``: committed when the block ends, rolled back on
    an exception."""
    async with pool.acquire() as conn, conn.transaction():
        yield WriteBatch(conn, node_id, notify)


# A body this large is inserted on its own, by COPY (storage/large.py), rather than as
# an element of the batch's arrays.
LARGE_BODY = 1024 * 1024


async def insert(
    conn: asyncpg.Connection,
    messages: Sequence[NewMessage],
    delivered: Sequence[int] = (),
    node_id: uuid.UUID | None = None,
) -> list[tuple[int, int]]:
    """Multi-row insert, keeping the given order in the ids (FIFO); the rows at the
    indexes ``delivered`` as delivered by ``node_id``. Returns the (queue id, id) of
    those, in their order (a row for a queue deleted meanwhile is not inserted)."""
    if not messages:
        return []
    if not fits_one_statement(messages):
        return await _insert_with_large(conn, messages, delivered, node_id)
    if not delivered:
        await conn.execute(queries.INSERT, *columns(messages))
        return []
    rows = await conn.fetch(
        queries.INSERT_DELIVERED, *columns(messages), node_id, [i + 1 for i in delivered]
    )
    return [(r["queue_id"], r["id"]) for r in rows]


def columns(messages: Sequence[NewMessage]) -> list[Any]:
    """The parameters of ``queries.INSERT``'s rows: 13 arrays, then 13 defaults. A
    column with one value in every row goes as an empty array and that value (asyncpg
    checks and encodes each array element, ~0.2 us each)."""
    esc, copy = textsafe.escape, textsafe.escape_or_none  # arrays skip the text codec
    cols: list[list[Any]] = [
        list(col)
        for col in zip(
            *[
                (
                    m.queue_id, m.priority, m.persistent, esc(m.exchange), esc(m.routing_key),
                    m.properties, copy(m.content_type), copy(m.message_id),
                    copy(m.correlation_id), copy(m.expiration), m.body, m.ttl_ms, m.delay_ms,
                )
                for m in messages
            ],
            strict=True,
        )
    ] or [[] for _ in range(13)]  # fmt: skip
    defaults: list[Any] = [[None]] * 13  # one-element arrays (see queries._BATCH_ROWS)
    for i, col in enumerate(cols):
        if i != _BODY and col and col.count(col[0]) == len(col):
            defaults[i], cols[i] = [col[0]], []
    return [*cols, *defaults]


_BODY = 10  # the body column always goes whole: it gives the row count


def fits_one_statement(messages: Sequence[NewMessage]) -> bool:
    """Can one ``INSERT`` (or :func:`write_plain`) take these publishes, no body being
    large enough to be inserted alone?"""
    return all(len(m.body) < LARGE_BODY for m in messages)


async def write_plain(
    pool: asyncpg.Pool,
    messages: Sequence[NewMessage],
    acks: Sequence[int],
    versions: dict[int, int],
    node_id: uuid.UUID | None,
    notify: bool,
    delivered: Sequence[int] = (),
) -> list[tuple[int, int]] | None:
    """Insert ``messages`` (those at the indexes ``delivered`` as delivered by this
    node), delete the ``acks`` and wake the queues of the others in one statement
    (``queries.WRITE_PLAIN``), if every vhost is still at its routed topology version.
    Returns the (queue id, id) of the delivered rows in their order; None: nothing was
    written."""
    given = set(delivered)
    waiting = frozenset(m.queue_id for i, m in enumerate(messages) if i not in given)
    woken = encode(QueuesWoken(node_id, waiting))
    channel, payload = woken[0] if notify and woken else (None, None)
    row = await pool.fetchrow(
        queries.WRITE_PLAIN if notify else queries.WRITE_PLAIN_SILENT,
        *columns(messages),
        list(acks),
        node_id,
        list(versions),
        list(versions.values()),
        channel,
        payload,
        [i + 1 for i in delivered],  # WITH ORDINALITY counts from 1
    )
    if row is None or not row["ok"]:
        return None
    return list(zip(row["owned_queues"] or (), row["owned_ids"] or (), strict=True))


async def _insert_with_large(
    conn: asyncpg.Connection,
    messages: Sequence[NewMessage],
    delivered: Sequence[int],
    node_id: uuid.UUID | None,
) -> list[tuple[int, int]]:
    """The batch in its order: runs of small messages through :func:`insert`, each large
    one by itself, so ids (FIFO) follow the given order across both."""
    given = set(delivered)
    out: list[tuple[int, int]] = []
    start = 0
    for i, m in enumerate(messages):
        if len(m.body) >= LARGE_BODY:
            out += await insert(conn, messages[start:i], _within(given, start, i), node_id)
            owner = node_id if i in given else None
            mid = await large.insert_large(conn, m, owner)
            if owner is not None and mid is not None:
                out.append((m.queue_id, mid))
            start = i + 1
    out += await insert(conn, messages[start:], _within(given, start, len(messages)), node_id)
    return out


def _within(indexes: set[int], start: int, stop: int) -> list[int]:
    """The ``indexes`` in [start, stop), counted from ``start``."""
    return sorted(i - start for i in indexes if start <= i < stop)
