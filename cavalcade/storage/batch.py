"""The write batch: one transaction for many publishes, acks, requeues and rejects.

Queue limits (``x-max-length``/``-bytes`` with ``x-overflow``), delivery limits and
dead-lettering happen inside the same transaction, so what a batch does is all or
nothing. Routing of dead-lettered copies is the broker's: it passes a callback.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import textsafe
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
   ORDER BY expires_at
   LIMIT $1
   FOR UPDATE SKIP LOCKED))
RETURNING m.{_DEAD_COLUMNS.replace(", ", ", m.")}
"""  # ix_messages_expires order (an ORDER BY id walked the whole table when few have a
# TTL); each batch is dead-lettered in id order, the order they were queued. Rows by
# primary key from an InitPlan, never joined (see repository._CLAIM: the slow mode)

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

UNLIMITED = 2**62


@dataclass(slots=True)
class QueueLimit:
    """``x-max-length`` / ``x-max-length-bytes`` and what happens at the limit."""

    max_length: int | None
    max_bytes: int | None
    overflow: str = "drop-head"  # or reject-publish, reject-publish-dlx


DeadLetter = Callable[[list[DeadRow], str], list[NewMessage]]


@dataclass(slots=True)
class BatchRules:
    """What the broker knows about the queues a batch touches."""

    limits: dict[int, QueueLimit] = field(default_factory=dict)
    delivery_limits: dict[int, int] = field(default_factory=dict)
    dead_letter: DeadLetter | None = None


@dataclass(slots=True)
class BatchOutcome:
    """Which publishes a full queue refused (indexes), and which queues gained messages."""

    refused: set[int] = field(default_factory=set)
    touched: set[int] = field(default_factory=set)


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


def _dead(rows: Sequence[asyncpg.Record]) -> list[DeadRow]:
    """RETURNING order is unspecified: id order is queue order."""
    return sorted((DeadRow(*r) for r in rows), key=lambda d: d.id)


def _as_dead(m: NewMessage) -> DeadRow:
    return DeadRow(
        0, m.queue_id, m.exchange, m.routing_key, m.properties, m.body, m.priority, m.persistent
    )


async def write(
    conn: asyncpg.Connection,
    messages: Sequence[NewMessage],
    acks: Sequence[int],
    requeues: Sequence[int],
    rejects: Sequence[int],
    *,
    node_id: uuid.UUID | None,
    wake: set[int],
    rules: BatchRules,
    notify: bool = True,
) -> BatchOutcome:
    """Apply one batch inside the caller's transaction."""
    out = BatchOutcome()
    if not requeues and not rejects and not any(m.persistent for m in messages):
        # Only transient publishes and acks: losing them in a database crash is what
        # RabbitMQ does too (a lost ack only redelivers; the node reconciles what it
        # owns when the database comes back), so do not wait for the disk.
        await conn.execute("SET LOCAL synchronous_commit = off")
    dead: list[tuple[DeadRow, str]] = []
    capped = {m.queue_id for m in messages if m.queue_id in rules.limits}
    refusing = sorted(q for q in capped if rules.limits[q].overflow != "drop-head")
    if refusing:
        lengths = {r[0]: [r[1], r[2]] for r in await conn.fetch(_LENGTHS, refusing)}
        for i, m in enumerate(messages):
            if m.queue_id not in lengths:
                continue
            lim = rules.limits[m.queue_id]
            count, size = lengths[m.queue_id]
            if count + 1 > (lim.max_length if lim.max_length is not None else UNLIMITED) or (
                size + len(m.body) > (lim.max_bytes if lim.max_bytes is not None else UNLIMITED)
            ):
                out.refused.add(i)
                if lim.overflow == "reject-publish-dlx":
                    dead.append((_as_dead(m), "maxlen"))
            else:
                lengths[m.queue_id] = [count + 1, size + len(m.body)]
    await insert(conn, [m for i, m in enumerate(messages) if i not in out.refused])
    out.touched.update(m.queue_id for i, m in enumerate(messages) if i not in out.refused)
    if acks:
        await conn.execute(ACK, list(acks), node_id)
    if requeues:
        if rules.delivery_limits:
            rows = await conn.fetch(_REQUEUE_COUNTED, list(requeues), node_id)
            over = [
                r[0]
                for r in rows
                if r[1] in rules.delivery_limits and r[2] > rules.delivery_limits[r[1]]
            ]
            if over:
                dead += [(d, "delivery_limit") for d in _dead(await conn.fetch(_TAKE, over))]
        else:
            await conn.execute(REQUEUE, list(requeues), node_id)
    # After the requeues: a requeued message counts against x-max-length too (RabbitMQ
    # drops from the head, so the requeued, oldest, go first).
    for qid in sorted(capped | (wake & rules.limits.keys())):
        lim = rules.limits[qid]
        if lim.overflow != "drop-head":
            continue
        await conn.execute("SELECT 1 FROM queues WHERE id = $1 FOR UPDATE", qid)
        rows = await conn.fetch(
            _DROP_HEAD,
            qid,
            lim.max_length if lim.max_length is not None else UNLIMITED,
            lim.max_bytes if lim.max_bytes is not None else UNLIMITED,
        )
        dead += [(d, "maxlen") for d in _dead(rows)]
    if rejects:
        dead += [
            (d, "rejected") for d in _dead(await conn.fetch(_TAKE_OWNED, list(rejects), node_id))
        ]
    if dead and rules.dead_letter is not None:
        copies: list[NewMessage] = []
        for reason in ("maxlen", "delivery_limit", "rejected"):
            group = [d for d, r in dead if r == reason]
            if group:
                copies += rules.dead_letter(group, reason)
        await insert(conn, copies)
        out.touched.update(m.queue_id for m in copies)
    if notify:
        await notify_queues(conn, node_id, out.touched | wake)
    return out


async def expire(
    conn: asyncpg.Connection, limit: int, rules: BatchRules, notify: bool = True
) -> set[int]:
    """Remove up to ``limit`` expired ready messages, dead-lettering those that ask for it."""
    rows = _dead(await conn.fetch(_EXPIRE, limit))
    if not rows or rules.dead_letter is None:
        return set()
    copies = rules.dead_letter(rows, "expired")
    await insert(conn, copies)
    touched = {m.queue_id for m in copies}
    if notify:
        await notify_queues(conn, None, touched)
    return touched


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
