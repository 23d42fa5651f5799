"""The write batch's statements, run inside one transaction through :class:`WriteBatch`.

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

from . import textsafe
from .queries import FRESH_ZERO_TTL
from .records import DeadRow, NewMessage

NOTIFY_CHANNEL = "cavalcade_wake"

READY = (
    "owner_node IS NULL AND (expires_at IS NULL OR expires_at > now())"
    " AND (available_at IS NULL OR available_at <= now())"
)

INSERT = """
INSERT INTO messages (queue_id, priority, persistent, exchange, routing_key, properties,
                      content_type, message_id, correlation_id, expiration, body,
                      expires_at, available_at)
SELECT q, p, d, e, r, h, ct, mi, ci, x, b,
       CASE WHEN ttl IS NULL THEN NULL ELSE now() + ttl * interval '1 millisecond' END,
       CASE WHEN dly IS NULL OR dly <= 0 THEN NULL
            ELSE now() + dly * interval '1 millisecond' END
  FROM unnest($1::bigint[], $2::smallint[], $3::boolean[], $4::text[], $5::text[],
              $6::bytea[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[],
              $12::bigint[], $13::bigint[])
       WITH ORDINALITY AS u(q, p, d, e, r, h, ct, mi, ci, x, b, ttl, dly, n)
 WHERE EXISTS (SELECT 1 FROM queues WHERE queues.id = u.q)
 ORDER BY n
"""

# ``(owner_node = $2) IS TRUE``, not ``owner_node = $2``: the same rows, but the planner
# cannot pick ix_messages_owner, whose entries (every unacked and dead row of the node)
# it misjudges with stale statistics (a bitmap over 40k entries per ack batch); the
# ids find their rows through the primary key.
REQUEUE = """
UPDATE messages SET owner_node = NULL, owner_channel = NULL, redelivered = true
 WHERE id = ANY($1::bigint[]) AND (owner_node = $2) IS TRUE
"""

ACK = "DELETE FROM messages WHERE id = ANY($1::bigint[]) AND (owner_node = $2) IS TRUE"

_DEAD_COLUMNS = "id, queue_id, exchange, routing_key, properties, body, priority, persistent"

_TAKE_OWNED = (
    f"DELETE FROM messages WHERE id = ANY($1::bigint[]) AND (owner_node = $2) IS TRUE"
    f" RETURNING {_DEAD_COLUMNS}"
)

_REQUEUE_COUNTED = REQUEUE.strip() + " RETURNING id, queue_id, delivery_count"

_TAKE = f"DELETE FROM messages WHERE id = ANY($1::bigint[]) RETURNING {_DEAD_COLUMNS}"

_EXPIRE = f"""
DELETE FROM messages m
 WHERE m.id = ANY(ARRAY(
  SELECT id FROM messages
   WHERE expires_at <= now() AND owner_node IS NULL
     AND NOT ({FRESH_ZERO_TTL}
              AND EXISTS (SELECT 1 FROM consumers c WHERE c.queue_id = messages.queue_id))
   ORDER BY expires_at
   LIMIT $1
   FOR UPDATE SKIP LOCKED))
RETURNING m.{_DEAD_COLUMNS.replace(", ", ", m.")}
"""  # ix_messages_expires order (an ORDER BY id walked the whole table when few have a
# TTL); each batch is dead-lettered in id order, the order they were queued. Rows by
# primary key from an InitPlan, never joined (see queries.CLAIM: the slow mode)

# Keep the newest messages (in delivery order, the last ones) within the limits.
_DROP_HEAD = f"""
DELETE FROM messages m
 WHERE m.id = ANY(ARRAY(
  SELECT id FROM (
    SELECT id,
           row_number() OVER w AS n,
           sum(octet_length(body)) OVER w AS bytes
      FROM messages
     WHERE queue_id = $1 AND {READY}
    WINDOW w AS (ORDER BY priority ASC, id DESC)) t
   WHERE t.n > $2 OR t.bytes > $3))
RETURNING m.{_DEAD_COLUMNS.replace(", ", ", m.")}
"""

_LENGTHS = f"""
SELECT q.id,
       (SELECT count(*) FROM messages WHERE queue_id = q.id AND {READY}),
       (SELECT coalesce(sum(octet_length(body)), 0) FROM messages
         WHERE queue_id = q.id AND {READY})
  FROM queues q WHERE q.id = ANY($1::bigint[]) ORDER BY q.id FOR UPDATE
"""


@dataclass(slots=True)
class BatchOutcome:
    """Which publishes a full queue refused (indexes), and which queues gained messages."""

    refused: set[int] = field(default_factory=set)
    touched: set[int] = field(default_factory=set)


@dataclass(slots=True)
class BatchRules:
    """No queue rules: the plain batch of :func:`write` (tools and tests). Queue limits
    and dead-lettering are the broker's write path (broker/write_path.py)."""


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
        """Ready (messages, bytes) of each queue, the queue rows locked until commit."""
        rows = await self.conn.fetch(_LENGTHS, sorted(queue_ids))
        return {r[0]: (r[1], r[2]) for r in rows}

    async def insert(self, messages: Sequence[NewMessage]) -> None:
        await insert(self.conn, messages)

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete acked rows this node owns."""
        await self.conn.execute(ACK, list(ids), self.node_id)

    async def requeue(self, ids: Sequence[int]) -> None:
        """Owned rows back to ready, redelivered."""
        await self.conn.execute(REQUEUE, list(ids), self.node_id)

    async def requeue_counted(self, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """Like :meth:`requeue`; (id, queue id, delivery count) of each row requeued."""
        rows = await self.conn.fetch(_REQUEUE_COUNTED, list(ids), self.node_id)
        return [(r[0], r[1], r[2]) for r in rows]

    async def take(self, ids: Sequence[int]) -> list[DeadRow]:
        """Delete rows (whoever owns them), returning them in queue order."""
        return _dead(await self.conn.fetch(_TAKE, list(ids)))

    async def take_owned(self, ids: Sequence[int]) -> list[DeadRow]:
        """Delete rows this node owns, returning them in queue order."""
        return _dead(await self.conn.fetch(_TAKE_OWNED, list(ids), self.node_id))

    async def drop_head(self, queue_id: int, max_length: int, max_bytes: int) -> list[DeadRow]:
        """Delete the oldest ready messages of a queue past its limits (queue row locked)."""
        await self.conn.execute("SELECT 1 FROM queues WHERE id = $1 FOR UPDATE", queue_id)
        return _dead(await self.conn.fetch(_DROP_HEAD, queue_id, max_length, max_bytes))

    async def take_expired(self, limit: int) -> list[DeadRow]:
        """Delete up to ``limit`` expired ready messages, returning them in queue order."""
        return _dead(await self.conn.fetch(_EXPIRE, limit))

    async def notify_queues(self, queues: set[int], node_id: uuid.UUID | None = None) -> None:
        """Tell every node which queues gained ready messages (if this store notifies)."""
        if self.notify:
            await notify_queues(self.conn, node_id, queues)


WriteTransaction = contextlib.AbstractAsyncContextManager[WriteBatch]


@contextlib.asynccontextmanager
async def transaction(
    pool: asyncpg.Pool, node_id: uuid.UUID | None, notify: bool
) -> AsyncIterator[WriteBatch]:
    """A write transaction on ``pool``: committed when the block ends, rolled back on
    an exception."""
    async with pool.acquire() as conn, conn.transaction():
        yield WriteBatch(conn, node_id, notify)


async def insert(conn: asyncpg.Connection, messages: Sequence[NewMessage]) -> None:
    """Multi-row insert, keeping the given order in the ids (FIFO)."""
    if not messages:
        return
    cols: list[list[Any]] = [[] for _ in range(13)]
    esc, copy = textsafe.escape, textsafe.escape_or_none  # arrays skip the text codec
    for m in messages:
        for i, v in enumerate(
            (
                m.queue_id, m.priority, m.persistent, esc(m.exchange), esc(m.routing_key),
                m.properties, copy(m.content_type), copy(m.message_id),
                copy(m.correlation_id), copy(m.expiration), m.body, m.ttl_ms, m.delay_ms,
            )
        ):  # fmt: skip
            cols[i].append(v)
    await conn.execute(INSERT, *cols)


async def write(
    conn: asyncpg.Connection,
    messages: Sequence[NewMessage],
    acks: Sequence[int],
    requeues: Sequence[int],
    rejects: Sequence[int],
    *,
    node_id: uuid.UUID | None,
    wake: set[int],
    rules: BatchRules | None = None,
    notify: bool = True,
) -> BatchOutcome:
    """A plain batch in the caller's transaction, without queue rules: publishes
    inserted, acks deleted, requeues made ready, rejects dropped."""
    del rules  # no rules to apply: see BatchRules
    tx = WriteBatch(conn, node_id, notify)
    if not requeues and not rejects and not any(m.persistent for m in messages):
        await tx.async_commit()
    await tx.insert(messages)
    if acks:
        await tx.ack(acks)
    if requeues:
        await tx.requeue(requeues)
    if rejects:
        await tx.take_owned(rejects)
    out = BatchOutcome(touched={m.queue_id for m in messages})
    await tx.notify_queues(out.touched | wake, node_id)
    return out


async def expire(
    conn: asyncpg.Connection, limit: int, rules: BatchRules | None = None, notify: bool = True
) -> set[int]:
    """Remove up to ``limit`` expired ready messages (dropped: no rules to dead-letter
    them; the broker's sweep does that, broker/write_path.py)."""
    del rules, notify
    await WriteBatch(conn, None, False).take_expired(limit)
    return set()


async def notify_queues(
    conn: asyncpg.Connection, node_id: uuid.UUID | None, queues: set[int]
) -> None:
    """One NOTIFY naming every queue that gained ready messages (``*``: too many to list)."""
    if not queues:
        return
    payload = f"{node_id or '-'}:" + ",".join(str(q) for q in sorted(queues))
    if len(payload) > 7000:  # NOTIFY payloads stop at 8000 bytes
        payload = f"{node_id or '-'}:*"
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, payload)
