"""Repository: the broker's SQL on two asyncpg pools, named for what a commit on them
guarantees.

``durable_pool`` runs with ``synchronous_commit = on``: a statement returns once its
commit is on disk. ``async_commit_pool`` runs with ``synchronous_commit = off`` (and
the index-walk planner settings below): a commit returns before the flush, and a
database crash may lose the last few hundred milliseconds of them. Only operations
whose loss costs nothing but a redelivery or a refresh go there: claims (a lost claim
makes the message ready again: at-least-once holds), ready counts and polls (reads),
``last_used_at`` marks, connection rows and topology-version reads. Everything a
client was told is done (declare-ok, purge-ok, a confirm) goes on the durable pool.

The statements on ``messages`` are named in :mod:`cavalcade.storage.queries`;
metadata statements (small, on other tables) stay with the method that runs them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from cavalcade.domain.routing import ExchangeInfo

from . import batch, desync, notify, queries, textsafe
from .notify import ConsumerAdded, NodesReaped, QueuesWoken
from .records import ClaimedMessage, NewMessage, QueueRow
from .rows import binding_info as _binding_info
from .rows import exchange_info as _exchange_info
from .rows import json_args as _args
from .rows import queue_row as _queue_row
from .topology_log import TopologyLog, Write

__all__ = [
    "ClaimedMessage",
    "NewMessage",
    "QueueRow",
    "Repository",
]


# The claim and the counts must walk the ready index from the queue's head, whatever
# the statistics say. A queue table churns too fast for them: without a fresh ANALYZE
# (autovacuum off, or just behind) the planner takes a 200k-message queue for one row,
# then picks a bitmap scan plus a sort of the whole queue (150 ms per claim instead of
# under 1 ms: the "slow mode"). Every statement on the async-commit pool is index-driven.
INDEX_WALK = {"enable_seqscan": "off", "enable_bitmapscan": "off"}
# Every statement is prepared once per connection and its plan does not depend on the
# values: a batch's arrays change length from 1 to hundreds of rows, and with the
# default ``auto`` mode PostgreSQL re-planned a third of the one-statement batches
# (about 0.4 ms each) after finding the custom plans cheaper than the generic one.
GENERIC_PLANS = {"plan_cache_mode": "force_generic_plan"}


def _claimed(rows: Sequence[asyncpg.Record]) -> list[ClaimedMessage]:
    out = [ClaimedMessage(*r) for r in rows]
    out.sort(key=lambda m: (-m.priority, m.id))  # the order the claim chose
    return out


class Repository:
    """All SQL of the broker. One instance per node, over its two pools."""

    def __init__(
        self,
        durable_pool: asyncpg.Pool,
        async_commit_pool: asyncpg.Pool | None = None,
        notify: bool = True,
    ) -> None:
        # synchronous_commit on: whatever a client is told is done, and all metadata.
        self.durable_pool = durable_pool
        # False for databases without LISTEN/NOTIFY (--notify poll): never call pg_notify.
        self.notify = notify
        # synchronous_commit off: what may be lost in a database crash at no more cost
        # than a redelivery or a refresh. Claims need no flush before the delivery goes
        # out: a claim lost in a crash only makes the message ready again.
        self.async_commit_pool = async_commit_pool or durable_pool
        self.topology = TopologyLog(durable_pool, notify)

    @classmethod
    async def connect(cls, dsn: str, size: int = 8, notify: bool = True) -> Repository:
        # The commit mode is a startup setting (asyncpg's own reset would RESET ALL a SET),
        # and connections go back to the pool as they are: nothing here leaves session
        # state behind (transactions are closed; LISTEN has a connection of its own).
        durable_pool = await asyncpg.create_pool(
            dsn,
            min_size=2,
            max_size=size,
            statement_cache_size=256,
            server_settings={"synchronous_commit": "on", **GENERIC_PLANS},
            reset=_keep,
            connection_class=desync.Connection,
            init=textsafe.install,
        )
        async_commit_pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=max(2, size // 2),
            statement_cache_size=256,
            server_settings={"synchronous_commit": "off", **GENERIC_PLANS, **INDEX_WALK},
            reset=_keep,
            connection_class=desync.Connection,
            init=textsafe.install,
        )
        assert durable_pool is not None and async_commit_pool is not None
        return cls(durable_pool, async_commit_pool, notify)

    async def close(self) -> None:
        await self.durable_pool.close()
        if self.async_commit_pool is not self.durable_pool:
            await self.async_commit_pool.close()

    # -- nodes -------------------------------------------------------------

    async def register_node(self, node_id: uuid.UUID, name: str) -> None:
        await self.durable_pool.execute(
            "INSERT INTO nodes (id, name) VALUES ($1, $2)", node_id, name
        )

    async def heartbeat_node(self, node_id: uuid.UUID) -> bool:
        """Refresh this node's heartbeat; False if it was declared dead (row gone)."""
        status = await self.durable_pool.execute(
            "UPDATE nodes SET heartbeat_at = now() WHERE id = $1", node_id
        )
        return bool(status != "UPDATE 0")

    async def reap_dead_nodes(self, threshold_s: float, me: uuid.UUID) -> list[uuid.UUID]:
        """Reap the nodes (never ``me``) whose heartbeat is older than the threshold."""
        return await self._reap(
            me,
            "SELECT id FROM nodes WHERE heartbeat_at < now() - make_interval(secs => $1)"
            " AND id <> $2 FOR UPDATE SKIP LOCKED",
            threshold_s,
            me,
        )

    async def reap_nodes(self, ids: Sequence[uuid.UUID], me: uuid.UUID) -> list[uuid.UUID]:
        """Reap these nodes (known dead: their advisory lock is free), never ``me``."""
        return await self._reap(
            me,
            "SELECT id FROM nodes WHERE id = ANY($1::uuid[]) AND id <> $2 FOR UPDATE SKIP LOCKED",
            list(ids),
            me,
        )

    async def _reap(self, me: uuid.UUID, select: str, *args: Any) -> list[uuid.UUID]:
        """Requeue what the selected nodes held (flagged redelivered) and delete them: their
        consumers, connections and exclusive queues cascade; auto-delete queues left
        without consumers go too. Another reaper's nodes are skipped (SKIP LOCKED).
        ``me`` (never selected) refreshes its own heartbeat first, in the same
        transaction: however long the caller stalled, it cannot be found dead here."""
        async with self.durable_pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE nodes SET heartbeat_at = now() WHERE id = $1", me)
            dead = await conn.fetch(select, *args)
            ids = [r["id"] for r in dead]
            if ids:
                await conn.execute(queries.REQUEUE_NODES, ids)
                await conn.execute(queries.MARK_CONSUMED_ON_NODES, ids)
                # Auto-delete queues whose last consumers were on the dead nodes go too.
                await conn.execute(
                    "DELETE FROM queues q WHERE q.auto_delete"
                    " AND EXISTS (SELECT 1 FROM consumers c WHERE c.queue_id = q.id"
                    "             AND c.node_id = ANY($1::uuid[]))"
                    " AND NOT EXISTS (SELECT 1 FROM consumers c WHERE c.queue_id = q.id"
                    "                 AND NOT c.node_id = ANY($1::uuid[]))",
                    ids,
                )
                await conn.execute("DELETE FROM nodes WHERE id = ANY($1::uuid[])", ids)
                await conn.execute("UPDATE vhosts SET topology_version = topology_version + 1")
                # Every node re-reads its topology and re-checks its queues.
                if self.notify:
                    await notify.send(conn, NodesReaped())
            return ids

    async def vacuum_messages(self) -> None:
        """VACUUM the churning tables: message rows die as fast as they are born, and each
        declare or consume rewrites its queue's row; autovacuum wakes once a minute at best
        and dead entries slow every claim and lookup until then."""
        await self.durable_pool.execute(queries.VACUUM)

    async def delete_orphans(self) -> int:
        """Delete messages whose queue is gone (``messages`` has no foreign key: a node of
        the previous release, or a deleter in repeatable read, may leave some); 0 while
        another node sweeps. On the index-walking async-commit pool: a delete of rows
        nobody can reach, lost in a crash, is only done again."""
        async with self.async_commit_pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(queries.ORPHAN_SWEEP_LOCK):
                return 0
            gone = [r[0] for r in await conn.fetch(queries.ORPHAN_QUEUES)]
            if not gone:
                return 0
            status = await conn.execute(queries.DELETE_QUEUES_MESSAGES, gone)
            return int(status.split()[-1])

    async def owned_messages(self, node_id: uuid.UUID) -> list[int]:
        """Ids of the messages this node holds as unacked deliveries."""
        rows = await self.durable_pool.fetch(queries.OWNED_IDS, node_id)
        return [r[0] for r in rows]

    async def unregister_node(self, node_id: uuid.UUID) -> None:
        async with self.durable_pool.acquire() as conn, conn.transaction():
            await conn.execute(queries.REQUEUE_NODE, node_id)
            await conn.execute(queries.MARK_CONSUMED_ON_NODES, [node_id])
            await conn.execute("DELETE FROM nodes WHERE id = $1", node_id)

    # -- users and vhosts ----------------------------------------------------

    async def find_user(self, name: str) -> asyncpg.Record | None:
        return await self.durable_pool.fetchrow(
            "SELECT id, name, password_hash, tags FROM users WHERE name = $1", name
        )

    async def add_connection(
        self,
        node_id: uuid.UUID,
        connection_id: int,
        peer: str | None,
        user: str,
        vhost_id: int,
        client_properties: dict[str, Any],
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record an open client connection (async commit: the row only informs listings,
        and a node's rows go with it when it is reaped)."""
        d = details or {}
        await self.async_commit_pool.execute(
            "INSERT INTO connections (node_id, id, peer, user_name, vhost_id, client_properties,"
            " name, peer_port, host, port, tls, auth_mechanism, frame_max, channel_max,"
            " heartbeat) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10,"
            " coalesce($11, false), $12, $13, $14, $15)",
            node_id,
            connection_id,
            peer,
            user,
            vhost_id,
            textsafe.dump_json(client_properties),
            d.get("name"),
            d.get("peer_port"),
            d.get("host"),
            d.get("port"),
            d.get("tls"),
            d.get("auth_mechanism"),
            d.get("frame_max"),
            d.get("channel_max"),
            d.get("heartbeat"),
        )

    async def remove_connection(self, node_id: uuid.UUID, connection_id: int) -> None:
        """Drop a closed connection's row (async commit, as :meth:`add_connection`)."""
        await self.async_commit_pool.execute(
            "DELETE FROM connections WHERE node_id = $1 AND id = $2", node_id, connection_id
        )

    async def vhosts(self) -> list[tuple[int, str]]:
        rows = await self.durable_pool.fetch("SELECT id, name FROM vhosts")
        return [(r[0], r[1]) for r in rows]

    async def find_vhost(self, name: str) -> int | None:
        row = await self.durable_pool.fetchval("SELECT id FROM vhosts WHERE name = $1", name)
        return None if row is None else int(row)

    async def find_permission(self, user_id: int, vhost_id: int) -> asyncpg.Record | None:
        return await self.durable_pool.fetchrow(
            "SELECT configure, write, read FROM permissions WHERE user_id = $1 AND vhost_id = $2",
            user_id,
            vhost_id,
        )

    # -- topology ----------------------------------------------------------

    async def load_topology(
        self, vhost_id: int
    ) -> tuple[int, dict[int, ExchangeInfo], dict[str, QueueRow]]:
        """The topology version, then every exchange (with its bindings) and queue of a
        vhost. The version is read first: a change racing the load only causes a reload."""
        async with self.durable_pool.acquire() as conn:
            version = await conn.fetchval(
                "SELECT topology_version FROM vhosts WHERE id = $1", vhost_id
            )
            ex_rows = await conn.fetch(
                "SELECT id, name, type, durable, auto_delete, internal, arguments"
                " FROM exchanges WHERE vhost_id = $1",
                vhost_id,
            )
            b_rows = await conn.fetch(
                "SELECT b.source_id, b.routing_key, b.arguments, b.queue_id, b.exchange_id"
                " FROM bindings b JOIN exchanges e ON e.id = b.source_id WHERE e.vhost_id = $1",
                vhost_id,
            )
            q_rows = await conn.fetch(
                "SELECT id, name, durable, auto_delete, exclusive_node, exclusive_connection,"
                " arguments FROM queues WHERE vhost_id = $1",
                vhost_id,
            )
        exchanges = {r["id"]: _exchange_info(r) for r in ex_rows}
        for r in b_rows:
            ex = exchanges.get(r["source_id"])
            if ex is not None:
                ex.bindings.append(_binding_info(r))
        queues = {r["name"]: _queue_row(r) for r in q_rows}
        return int(version or 0), exchanges, queues

    async def topology_versions(self, vhost_ids: list[int]) -> dict[int, int]:
        """The current topology version of each vhost (a read: async commit is free)."""
        rows = await self.async_commit_pool.fetch(
            "SELECT id, topology_version FROM vhosts WHERE id = ANY($1::int[])", vhost_ids
        )
        return {r[0]: r[1] for r in rows}

    async def bump_topology(self, vhost_id: int) -> None:
        """Every node routes with this change from its next batch on."""
        await self.durable_pool.execute(
            "UPDATE vhosts SET topology_version = topology_version + 1 WHERE id = $1", vhost_id
        )

    async def find_queue(self, vhost_id: int, name: str) -> QueueRow | None:
        r = await self.durable_pool.fetchrow(
            "SELECT id, name, durable, auto_delete, exclusive_node, exclusive_connection,"
            " arguments FROM queues WHERE vhost_id = $1 AND name = $2",
            vhost_id,
            name,
        )
        return None if r is None else _queue_row(r)

    async def find_exchange(self, vhost_id: int, name: str) -> ExchangeInfo | None:
        r = await self.durable_pool.fetchrow(
            "SELECT id, name, type, durable, auto_delete, internal, arguments"
            " FROM exchanges WHERE vhost_id = $1 AND name = $2",
            vhost_id,
            name,
        )
        if r is None:
            return None
        return ExchangeInfo(
            id=r["id"],
            name=r["name"],
            type=r["type"],
            durable=r["durable"],
            auto_delete=r["auto_delete"],
            internal=r["internal"],
            arguments=_args(r["arguments"]),
        )

    async def insert_exchange(
        self,
        vhost_id: int,
        name: str,
        type_: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        await self.durable_pool.execute(
            "INSERT INTO exchanges (vhost_id, name, type, durable, auto_delete, internal,"
            " arguments) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
            " ON CONFLICT (vhost_id, name) DO NOTHING",
            vhost_id,
            name,
            type_,
            durable,
            auto_delete,
            internal,
            textsafe.dump_json(arguments),
        )

    async def delete_exchange(self, exchange_id: int, if_unused: bool) -> bool:
        """Delete an exchange; False if ``if_unused`` and it is a binding source."""
        async with self.durable_pool.acquire() as conn, conn.transaction():
            if if_unused:
                used = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM bindings WHERE source_id = $1)", exchange_id
                )
                if used:
                    return False
            await conn.execute("DELETE FROM exchanges WHERE id = $1", exchange_id)
            return True

    async def exchange_has_bindings(self, exchange_id: int) -> bool:
        return bool(
            await self.durable_pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM bindings WHERE source_id = $1)", exchange_id
            )
        )

    @staticmethod
    def queue_insert(
        vhost_id: int,
        name: str,
        durable: bool,
        auto_delete: bool,
        exclusive_node: uuid.UUID | None,
        exclusive_connection: int | None,
        arguments: dict[str, Any],
    ) -> Write:
        """The insert of a new queue, to commit with its topology bump (returns its id;
        nothing if the name is taken)."""
        return Write(
            "INSERT INTO queues (vhost_id, name, durable, auto_delete, exclusive_node,"
            " exclusive_connection, arguments) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
            " ON CONFLICT (vhost_id, name) DO NOTHING RETURNING id",
            (
                vhost_id,
                name,
                durable,
                auto_delete,
                exclusive_node,
                exclusive_connection,
                textsafe.dump_json(arguments),
            ),
            new_queue=True,
        )

    async def write_alone(self, write: Write) -> None:
        """Commit a ``queue_insert``/``binding_insert`` without a topology bump."""
        await self.durable_pool.execute(write.sql, *write.args)

    async def touch_queue(self, queue_id: int) -> None:
        """Mark a queue used (``x-expires``); no need to wait for the disk."""
        await self.async_commit_pool.execute(
            "UPDATE queues SET last_used_at = now() WHERE id = $1", queue_id
        )

    async def consumed_elsewhere(self, queue_id: int, node_id: uuid.UUID) -> bool:
        """Has queue ``queue_id`` consumers on another node than ``node_id``?"""
        return bool(
            await self.async_commit_pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM consumers WHERE queue_id = $1 AND node_id <> $2)",
                queue_id,
                node_id,
            )
        )

    async def use_queue_named(self, vhost_id: int, name: str) -> tuple[QueueRow, int, int] | None:
        """Find a queue, mark it used (only if it has ``x-expires``: nothing else reads
        the mark) and count it, in one round trip: (queue, ready, consumers)."""
        r = await self.async_commit_pool.fetchrow(queries.USE_QUEUE_NAMED, vhost_id, name)
        if r is None:
            return None
        return _queue_row(r), int(r["ready"]), int(r["consumers"])

    async def use_queue(self, queue_id: int) -> tuple[int, int]:
        """Mark a queue used and count it, in one round trip: (ready, consumers). Async
        commit: a lost ``last_used_at`` mark only lets ``x-expires`` fire a little early."""
        row = await self.async_commit_pool.fetchrow(queries.USE_QUEUE, queue_id)
        if row is None:
            return 0, 0
        return int(row[0]), int(row[1])

    async def queue_counts(self, queue_id: int) -> tuple[int, int]:
        """(ready messages, consumers) of a queue, cluster-wide."""
        row = await self.durable_pool.fetchrow(queries.QUEUE_COUNTS, queue_id)
        assert row is not None
        return int(row[0]), int(row[1])

    async def delete_queue(self, queue_id: int) -> int:
        """Delete a queue with its messages; returns how many ready messages it held
        (``queries.READY``: what declare-ok and purge-ok count)."""
        count = await self.durable_pool.fetchval(queries.DELETE_QUEUE, queue_id)
        return int(count or 0)

    async def delete_exclusive_queues(
        self, node_id: uuid.UUID, connection_id: int
    ) -> list[tuple[int, int, str]]:
        """Drop a connection's exclusive queues; returns (vhost id, queue id, name)."""
        async with self.durable_pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT vhost_id, id, name FROM queues WHERE exclusive_node = $1"
                " AND exclusive_connection = $2",
                node_id,
                connection_id,
            )
            ids = [r["id"] for r in rows]
            if ids:  # their messages go with them (see ``delete_queue``)
                await conn.execute("DELETE FROM queues WHERE id = ANY($1::bigint[])", ids)
            return [(r["vhost_id"], r["id"], r["name"]) for r in rows]

    async def purge_queue(self, queue_id: int) -> int:
        """Delete a queue's ready messages (``queries.READY``); returns how many."""
        status = await self.durable_pool.execute(queries.PURGE, queue_id)
        return int(status.split()[-1])

    @staticmethod
    def binding_insert(
        source_id: int,
        queue_id: int | None,
        exchange_id: int | None,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> Write:
        """The insert of a binding, to commit with its topology bump."""
        return Write(
            "INSERT INTO bindings (source_id, queue_id, exchange_id, routing_key, arguments)"
            " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING"
            " RETURNING source_id AS id",
            (source_id, queue_id, exchange_id, routing_key, textsafe.dump_json(arguments)),
        )

    async def delete_binding(
        self,
        source_id: int,
        queue_id: int | None,
        exchange_id: int | None,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> None:
        await self.durable_pool.execute(
            "DELETE FROM bindings WHERE source_id = $1 AND queue_id IS NOT DISTINCT FROM $2"
            " AND exchange_id IS NOT DISTINCT FROM $3 AND routing_key = $4"
            " AND arguments = $5::jsonb",
            source_id,
            queue_id,
            exchange_id,
            routing_key,
            textsafe.dump_json(arguments),
        )

    async def notify_wake(self, node_id: uuid.UUID, queue_id: int) -> None:
        """Tell other nodes a queue may have work for their consumers."""
        if self.notify:
            await notify.send(self.durable_pool, QueuesWoken(node_id, frozenset({queue_id})))

    # -- consumers ---------------------------------------------------------

    async def add_consumer(
        self,
        queue_id: int,
        node_id: uuid.UUID,
        channel: int,
        tag: str,
        exclusive: bool,
        no_ack: bool,
        priority: int,
    ) -> str | None:
        """Register a consumer; returns 'exclusive' if the queue refuses it."""
        async with self.durable_pool.acquire() as conn, conn.transaction():
            # NO KEY UPDATE: serialises consumers of the queue without waiting for the
            # publishes in flight to it (their inserts hold KEY SHARE).
            await conn.execute(queries.LOCK_QUEUE, queue_id)
            existing = await conn.fetch(
                "SELECT exclusive FROM consumers WHERE queue_id = $1", queue_id
            )
            if any(r["exclusive"] for r in existing) or (exclusive and existing):
                return "exclusive"
            await conn.execute(
                "INSERT INTO consumers (queue_id, node_id, channel, tag, exclusive, no_ack,"
                " priority) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                queue_id,
                node_id,
                channel,
                tag,
                exclusive,
                no_ack,
                priority,
            )
            await conn.execute(
                "UPDATE queues SET had_consumer = true, last_used_at = now() WHERE id = $1",
                queue_id,
            )
            if self.notify:
                await notify.send(conn, ConsumerAdded(node_id, queue_id))
            return None

    async def remove_consumer(
        self, queue_id: int, node_id: uuid.UUID, channel: int, tag: str
    ) -> int:
        """Remove a consumer; returns how many consumers the queue still has."""
        async with self.durable_pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM consumers WHERE queue_id = $1 AND node_id = $2 AND channel = $3"
                " AND tag = $4",
                queue_id,
                node_id,
                channel,
                tag,
            )
            left = await conn.fetchval(
                "SELECT count(*) FROM consumers WHERE queue_id = $1", queue_id
            )
            await conn.execute("UPDATE queues SET last_used_at = now() WHERE id = $1", queue_id)
            return int(left or 0)

    # -- the hot path --------------------------------------------------------

    async def expire_queues(self, effective: dict[int, int] | None = None) -> list[tuple[int, int]]:
        """Delete queues unused for longer than their ``x-expires`` (or the effective value
        given per queue id, policies applied): (vhost id, queue id)."""
        effective = effective or {}
        rows = await self.durable_pool.fetch(
            "WITH p AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS p(id, ms))"
            " DELETE FROM queues q WHERE (q.arguments ? 'x-expires' OR q.id IN (SELECT id FROM p))"
            " AND NOT EXISTS (SELECT 1 FROM consumers c WHERE c.queue_id = q.id)"
            " AND q.last_used_at + coalesce((SELECT ms FROM p WHERE p.id = q.id),"
            " (q.arguments->>'x-expires')::bigint) * interval '1 millisecond'"
            " < now() RETURNING vhost_id, id",
            list(effective),
            list(effective.values()),
        )
        return [(r[0], r[1]) for r in rows]

    async def active_consumer(self, queue_id: int) -> tuple[uuid.UUID, int, str] | None:
        """The single active consumer of a queue: the oldest one (cluster-wide)."""
        row = await self.durable_pool.fetchrow(
            "SELECT node_id, channel, tag FROM consumers WHERE queue_id = $1 ORDER BY id LIMIT 1",
            queue_id,
        )
        return None if row is None else (row[0], row[1], row[2])

    async def next_expiry(self) -> float | None:
        """Seconds until the next ready message of any queue expires (None: none has a TTL).
        On the async-commit pool, whose sessions walk indexes: it must walk
        ix_messages_expires (stale statistics made it scan the whole table, 3-4 times a
        second, 12 ms each in a rawbench run)."""
        value = await self.async_commit_pool.fetchval(queries.NEXT_EXPIRY)
        return None if value is None else max(float(value), 0.0)

    async def next_due(self, queue_id: int) -> float | None:
        """Seconds until the next delayed message of a queue becomes deliverable
        (index-walking async-commit pool, as ``next_expiry``)."""
        value = await self.async_commit_pool.fetchval(queries.NEXT_DUE, queue_id)
        return None if value is None else max(float(value), 0.0)

    async def ready_queues(self, queue_ids: Sequence[int]) -> list[tuple[int, bool, float | None]]:
        """For many queues in one statement: (queue, has a ready message, seconds until
        its next delayed message is due or None). One index probe per queue."""
        rows = await self.async_commit_pool.fetch(queries.READY_QUEUES, list(queue_ids))
        return [(r[0], r[1], None if r[2] is None else max(float(r[2]), 0.0)) for r in rows]

    async def claim(
        self,
        queue_id: int,
        node_id: uuid.UUID,
        channel: int,
        limit: int,
        no_ack: bool,
        since: float | None = None,
    ) -> list[ClaimedMessage]:
        """Claim up to ``limit`` ready messages (SKIP LOCKED); no_ack claims delete them.
        With ``since`` (database clock, epoch seconds) also zero-TTL ones published since.
        On the async-commit pool: a claim (or no-ack delete) lost in a database crash
        only makes its messages ready again; they are delivered again, never lost."""
        if no_ack:
            rows = await self.async_commit_pool.fetch(queries.CLAIM_DELETE, queue_id, limit, since)
        else:
            rows = await self.async_commit_pool.fetch(
                queries.CLAIM, queue_id, limit, since, node_id, channel
            )
        return _claimed(rows)

    async def claim_ahead(
        self, queue_id: int, node_id: uuid.UUID, limit: int, max_bytes: int
    ) -> list[ClaimedMessage]:
        """Claim up to ``limit`` ready messages for this node to hold (SKIP LOCKED), in
        queue order, stopping before one with a TTL and within ``max_bytes`` of bodies.
        On the async-commit pool, as :meth:`claim`."""
        rows = await self.async_commit_pool.fetch(
            queries.CLAIM_AHEAD, queue_id, limit, node_id, max_bytes
        )
        return _claimed(rows)

    async def database_time(self) -> float:
        """The database clock now, in epoch seconds."""
        return float(await self.async_commit_pool.fetchval(queries.DATABASE_TIME))

    async def ready_count(self, queue_id: int) -> int:
        """Ready messages: exact below 2,000, estimated above (see ``counting``)."""
        value = await self.async_commit_pool.fetchval(queries.READY_COUNT, queue_id)
        return int(value or 0)

    async def requeue(self, ids: Sequence[int], node_id: uuid.UUID) -> None:
        """Return claimed rows to ready, flagged redelivered; they keep their id, so their place."""
        if ids:
            await self.durable_pool.execute(queries.REQUEUE, list(ids), node_id)

    async def release(
        self, ids: Sequence[int], delivery_counts: Sequence[int], node_id: uuid.UUID
    ) -> None:
        """Return rows this node held undelivered (each with the delivery count it was
        written or claimed with) to ready, that delivery uncounted."""
        if ids:
            await self.durable_pool.execute(
                queries.RELEASE, list(ids), node_id, list(delivery_counts)
            )

    async def delete_messages(self, ids: Sequence[int], node_id: uuid.UUID) -> None:
        if ids:
            await self.durable_pool.execute(queries.ACK, list(ids), node_id)

    # Added for the broker-driven write path (H1, broker/write_path.py).
    def write_transaction(self, node_id: uuid.UUID | None = None) -> batch.WriteTransaction:
        """A write transaction: the broker runs a batch's statements on its handle."""
        return batch.transaction(self.durable_pool, node_id, self.notify)

    async def write_plain(
        self,
        messages: Sequence[NewMessage],
        acks: Sequence[int],
        versions: dict[int, int],
        node_id: uuid.UUID,
        durable: bool,
        delivered: Sequence[int] = (),
    ) -> list[tuple[int, int]] | None:
        """A batch of publishes and acks alone, as one statement (its own commit, on the
        disk first if ``durable``); the rows at the indexes ``delivered`` go in as this
        node's deliveries. Their (queue id, id), in order; None if a vhost's topology
        moved (nothing written)."""
        pool = self.durable_pool if durable else self.async_commit_pool
        return await batch.write_plain(
            pool, messages, acks, versions, node_id, self.notify, delivered
        )


async def _keep(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (one round trip saved per use)."""
