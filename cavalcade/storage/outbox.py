"""The outbox table that ``cavalcade_publish()`` fills: taking rows in order, and turning
them into messages in the same transaction that deletes them.

One node at a time drains (it holds the lock on the single ``outbox_drain`` row; the
others skip it), so the messages get their ids in outbox order. The message insert
is the broker's write path on :attr:`OutboxBatch.writes`, the same statements as a client
publish (queue limits, dead-lettering), and the outbox rows are deleted by that same
transaction: every committed ``cavalcade_publish`` becomes its messages exactly once.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from .batch import WriteBatch

_LOCK = "SELECT id FROM outbox_drain WHERE id = 1 FOR UPDATE SKIP LOCKED"

_TAKE = """
SELECT o.id, o.vhost_id, v.name, o.exchange, o.routing_key, o.properties, o.body
  FROM outbox o JOIN vhosts v ON v.id = o.vhost_id
 ORDER BY o.id
 LIMIT $1
"""

_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

_BURY = """
INSERT INTO outbox_dead (id, vhost_id, exchange, routing_key, properties, body, created_at,
                         error)
SELECT id, vhost_id, exchange, routing_key, properties, body, created_at, $2
  FROM outbox WHERE id = $1
ON CONFLICT (id) DO NOTHING
"""


@dataclass(slots=True)
class OutboxRow:
    """One ``cavalcade_publish()`` call, committed and not yet routed."""

    id: int
    vhost_id: int
    vhost: str
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes


class OutboxBatch:
    """Rows taken under the drain lock, inside one open transaction."""

    def __init__(
        self, conn: asyncpg.Connection, rows: list[OutboxRow], node_id: uuid.UUID, notify: bool
    ) -> None:
        self.conn = conn
        self.rows = rows
        self.node_id = node_id
        self.notify = notify
        self.writes = WriteBatch(conn, node_id, notify)  # the messages, same transaction

    async def bury(self, row: OutboxRow, error: str) -> None:
        """Keep a row that cannot become a message in ``outbox_dead``, with why."""
        await self.conn.execute(_BURY, row.id, error)

    async def delete_taken(self) -> None:
        """Delete every taken row, in this transaction (after their messages are written)."""
        await self.conn.execute(_DELETE, [r.id for r in self.rows])


class OutboxStore:
    """The outbox as the draining node sees it."""

    def __init__(self, pool: asyncpg.Pool, node_id: uuid.UUID, notify: bool) -> None:
        self.pool = pool
        self.node_id = node_id
        self.notify = notify

    @contextlib.asynccontextmanager
    async def take(self, limit: int) -> AsyncIterator[OutboxBatch | None]:
        """The oldest ``limit`` rows in a transaction that commits when the block ends
        (rolls back on an exception); None if another node is draining right now."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_LOCK) is None:
                yield None
                return
            rows = [
                OutboxRow(r[0], r[1], r[2], r[3], r[4], _json(r[5]), bytes(r[6]))
                for r in await conn.fetch(_TAKE, limit)
            ]
            yield OutboxBatch(conn, rows, self.node_id, self.notify)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return dict(value or {})
