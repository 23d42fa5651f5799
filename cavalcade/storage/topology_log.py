"""Topology versions with events: what each change touched, so a node re-reads only that.

Each bump of ``vhosts.topology_version`` writes, in the same statement, one
``topology_events`` row naming the queues, exchanges and binding edges the change
touched (and sends the topology NOTIFY). A node holding version v asks for the
events after v and re-reads the *current* rows of those entities: re-reading is
idempotent and needs no ordering between a change's own commit and its bump, so a
change racing the read is simply seen again at its own (later) version. A version
without an event row (a bump by an older node, the reaper) means "reload the vhost".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from cavalcade.domain.routing import BindingInfo, ExchangeInfo

from . import notify
from .notify import TopologyChanged
from .records import QueueRow
from .rows import binding_info, exchange_info, queue_row

KEEP_EVENTS = 2000  # versions of history kept per vhost; a node further behind reloads

Edge = tuple[int, int, int]  # (source exchange, queue id or 0, exchange id or 0)


@dataclass(slots=True)
class TopologyChange:
    """The entities one change touched."""

    queues: set[int] = field(default_factory=set)
    exchanges: set[int] = field(default_factory=set)
    edges: set[Edge] = field(default_factory=set)

    def update(self, other: TopologyChange) -> None:
        self.queues |= other.queues
        self.exchanges |= other.exchanges
        self.edges |= other.edges


@dataclass(frozen=True, slots=True)
class Write:
    """A topology write committed in the bump's own statement (one commit, not two):
    one data-modifying statement (parameters ``$1``...) returning one bigint column
    ``id`` (the bump answers its first row's). With ``new_queue`` that id is a queue
    the write created, and the event names it."""

    sql: str
    args: tuple[object, ...]
    new_queue: bool = False


@dataclass(slots=True)
class TopologyRows:
    """Current rows of changed entities; an id asked for but absent here is gone."""

    queues: dict[int, QueueRow]
    exchanges: dict[int, ExchangeInfo]  # with their bindings, for exchanges asked in full
    edges: dict[Edge, list[BindingInfo]]


_BUMP = """
WITH {write}v AS (UPDATE vhosts SET topology_version = topology_version + 1
            WHERE id = $1{if_written}
           RETURNING topology_version),
     ev AS (INSERT INTO topology_events (vhost_id, version, queue_ids, exchange_ids, edges)
            SELECT $1, topology_version, $2::bigint[]{queues}, $3::bigint[], $4::bigint[] FROM v
            WHERE $5::boolean),
     old AS (DELETE FROM topology_events
              WHERE vhost_id = $1 AND version <= (SELECT topology_version FROM v) - $6)
SELECT topology_version, CASE WHEN $7::text IS NULL THEN NULL
                              ELSE pg_notify($8, $7::text) END,
       {written} AS written
  FROM v
"""
_PLAIN_BUMP = _BUMP.format(write="", if_written="", queues="", written="NULL::bigint")

_SINCE = """
SELECT (SELECT topology_version FROM vhosts WHERE id = $1) AS version,
       coalesce((SELECT array_agg(e.version ORDER BY e.version) FROM topology_events e
                  WHERE e.vhost_id = $1 AND e.version > $2), '{}') AS versions,
       coalesce((SELECT array_agg(DISTINCT q) FROM topology_events e, unnest(e.queue_ids) q
                  WHERE e.vhost_id = $1 AND e.version > $2), '{}') AS queues,
       coalesce((SELECT array_agg(DISTINCT x) FROM topology_events e, unnest(e.exchange_ids) x
                  WHERE e.vhost_id = $1 AND e.version > $2), '{}') AS exchanges,
       coalesce((SELECT array_agg(g ORDER BY e.version, n) FROM topology_events e,
                        unnest(e.edges) WITH ORDINALITY AS u(g, n)
                  WHERE e.vhost_id = $1 AND e.version > $2), '{}') AS edges
"""


# Rows by primary key (the vhost is checked on the rows): with ``vhost_id = $1`` beside
# the ids, a planner without statistics scanned every queue of the vhost for each change.
_QUEUES_BY_ID = (
    "SELECT id, vhost_id, name, durable, auto_delete, exclusive_node, exclusive_connection,"
    " arguments FROM queues WHERE id = ANY($1::bigint[])"
)
_EXCHANGES_BY_ID = (
    "SELECT id, vhost_id, name, type, durable, auto_delete, internal, arguments"
    " FROM exchanges WHERE id = ANY($1::bigint[])"
)
# Every binding of the exchanges $1; the bindings of the edges ($1, $2, $3), by
# uq_bindings_edge (one ``OR`` of both scanned the table, and so did an empty $1).
_BINDINGS_FROM = (
    "SELECT source_id, routing_key, arguments, queue_id, exchange_id"
    " FROM bindings WHERE source_id = ANY($1::bigint[])"
)
_BINDINGS_OF_EDGES = """
SELECT b.source_id, b.routing_key, b.arguments, b.queue_id, b.exchange_id
  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS e(source, queue, exchange),
       LATERAL (SELECT * FROM bindings
                 WHERE source_id = e.source AND coalesce(queue_id, 0) = e.queue
                   AND coalesce(exchange_id, 0) = e.exchange
                OFFSET 0) b
"""  # OFFSET 0: one index lookup per edge (joined, a planner without statistics hashed
# the whole table)

_BUMP_PARAMS = 8


def _after_bump_params(sql: str) -> str:
    """``sql`` with its parameters renumbered to follow the bump's eight."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + _BUMP_PARAMS}", sql)


class TopologyLog:
    """Topology bumps with events, and the incremental reads they allow."""

    def __init__(self, pool: asyncpg.Pool, notify: bool = True) -> None:
        self.pool = pool
        self.notify = notify

    async def bump(
        self,
        vhost_id: int,
        change: TopologyChange | None,
        event: TopologyChanged,
        write: Write | None = None,
    ) -> tuple[int, int | None]:
        """Bump the vhost's version, record what changed (None: unknown, nodes reload)
        and NOTIFY ``event`` on the topology channel, in one statement; with ``write``
        that statement also makes the change itself, and bumps only if it wrote a row.
        Returns the new version (0: no bump) and the id the write returned (None: it
        wrote nothing, or there was no write)."""
        payload = notify.encode(event)[0][1]
        edges = [i for edge in sorted(change.edges) for i in edge] if change else []
        sql = _PLAIN_BUMP
        if write is not None:
            sql = _BUMP.format(
                write=f"written AS ({_after_bump_params(write.sql)}),\n     ",
                # A write that changed nothing (a redeclared binding, a queue declared
                # meanwhile) bumps nothing: no node reloads, no batch is re-routed.
                if_written=" AND EXISTS (SELECT 1 FROM written)",
                queues=" || ARRAY(SELECT id FROM written)" if write.new_queue else "",
                written="(SELECT id FROM written LIMIT 1)",
            )
        row = await self.pool.fetchrow(
            sql,
            vhost_id,
            sorted(change.queues) if change else [],
            sorted(change.exchanges) if change else [],
            edges,
            change is not None,
            KEEP_EVENTS,
            payload if self.notify else None,
            notify.TOPOLOGY_CHANNEL,
            *(write.args if write is not None else ()),
        )
        if row is None:
            return 0, None
        return int(row[0] or 0), row[2]

    async def changes_since(self, vhost_id: int, since: int) -> tuple[int, TopologyChange | None]:
        """The current version and what changed after ``since``; None if some version
        in between has no event (or is pruned): then only a full reload is right."""
        r = await self.pool.fetchrow(_SINCE, vhost_id, since)
        assert r is not None
        version = int(r["version"] or 0)
        if version <= since:
            return version, TopologyChange()
        versions = list(r["versions"])
        if versions != list(range(since + 1, version + 1)):
            return version, None
        flat = list(r["edges"])
        edges = {(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat) - 2, 3)}
        return version, TopologyChange(set(r["queues"]), set(r["exchanges"]), edges)

    async def read(
        self, vhost_id: int, change: TopologyChange, full_exchanges: Iterable[int]
    ) -> TopologyRows:
        """Current rows of the changed queues, exchanges (``full_exchanges`` with all
        their bindings as a source) and binding edges: each by its key, so a change
        costs the same however large the vhost (a read of nothing is not sent)."""
        full = sorted(set(full_exchanges))
        full_set = set(full)
        queue_ids, exchange_ids, edges = (
            sorted(change.queues),
            sorted(change.exchanges | set(full)),
            sorted(change.edges),
        )
        q_rows: Sequence[asyncpg.Record] = []
        x_rows: Sequence[asyncpg.Record] = []
        b_rows: Sequence[asyncpg.Record] = []
        async with self.pool.acquire() as conn:
            if queue_ids:
                q_rows = await conn.fetch(_QUEUES_BY_ID, queue_ids)
            if exchange_ids:
                x_rows = await conn.fetch(_EXCHANGES_BY_ID, exchange_ids)
            if full:
                b_rows = await conn.fetch(_BINDINGS_FROM, full)
            others = [e for e in edges if e[0] not in full_set]  # not read in full above
            if others:
                b_rows = [
                    *b_rows,
                    *await conn.fetch(
                        _BINDINGS_OF_EDGES,
                        [e[0] for e in others],
                        [e[1] for e in others],
                        [e[2] for e in others],
                    ),
                ]
        queues = {r["id"]: queue_row(r) for r in q_rows if r["vhost_id"] == vhost_id}
        exchanges = {r["id"]: exchange_info(r) for r in x_rows if r["vhost_id"] == vhost_id}
        by_edge: dict[Edge, list[BindingInfo]] = {e: [] for e in edges}
        for r in b_rows:
            b = binding_info(r)
            edge = (b.source_id, b.queue_id or 0, b.exchange_id or 0)
            if edge in by_edge:
                by_edge[edge].append(b)
            if b.source_id in full_set and b.source_id in exchanges:
                exchanges[b.source_id].bindings.append(b)
        return TopologyRows(queues, exchanges, by_edge)
