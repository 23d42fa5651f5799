"""Every SQL statement on ``messages``, by name.

procrastinate keeps its queue SQL in one ``sql/queries.sql``; this is that file, in
Python so the statements can share their fragments. A message row is in one of
three places: *owned* (``owner_node`` set: delivered, unacked), *ready* (``READY``:
what a consumer may get now) or neither (expired and not yet swept, or delayed and
not yet due). Everything that counts, claims or purges "ready" messages uses the one
``READY``, so queue.declare-ok, basic.get-ok, queue.purge-ok and queue.delete-ok count
the same messages, and exactly the ones a consumer could get.

The write batch's statements (insert, ack, requeue, overflow, expiry) are here too;
:class:`cavalcade.storage.batch.WriteBatch` runs them inside one transaction.
"""

from __future__ import annotations

from .counting import CAP, ready_estimate

# -- what "ready" means ----------------------------------------------------------------

# In the queue, not held by a consumer: the predicate of the ready index (ix_messages_ready).
UNOWNED = "owner_node IS NULL"

# A consumer may get it now: unowned, unexpired (the sweep removes expired rows: until
# then they are gone for clients, as RabbitMQ drops them at the head), and due (a delayed
# message is still "in the exchange", as with RabbitMQ's delayed-message plugin).
_UNEXPIRED = "(expires_at IS NULL OR expires_at > now())"
_DUE = "(available_at IS NULL OR available_at <= now())"
READY = f"{UNOWNED} AND {_UNEXPIRED} AND {_DUE}"

# A zero TTL (``x-message-ttl`` 0, ``expiration`` "0") delivers to a consumer waiting at
# publish time and drops otherwise (RabbitMQ). Such a row has expires_at = published_at.
# While fresh, a dispatcher whose consumers were waiting since before it was published
# may claim it (basic.get never does), and the sweep leaves it while its queue has
# consumers; requeued (redelivered), it expires like any other.
ZERO_TTL_GRACE = "interval '2 seconds'"
FRESH_ZERO_TTL = (
    "(expires_at = published_at AND NOT redelivered AND available_at IS NULL"
    f" AND expires_at > now() - {ZERO_TTL_GRACE})"
)

# Ready but for its due time: a delayed message that has not yet reached its queue.
DELAYED = f"{UNOWNED} AND {_UNEXPIRED} AND available_at > now()"

# -- claim -----------------------------------------------------------------------------

# The head of a queue: ready, unexpired, due; priority first, then FIFO. SKIP LOCKED
# lets every node and dispatcher claim at once without ever sharing a row. A dispatcher
# also takes fresh zero-TTL rows published since its consumers have been waiting ($3:
# that moment on the database clock, epoch seconds; NULL for basic.get).
_HEAD = f"""
SELECT id FROM messages
 WHERE queue_id = $1 AND {UNOWNED}
   AND ({READY} OR ({FRESH_ZERO_TTL} AND expires_at >= to_timestamp($3::float8)))
 ORDER BY priority DESC, id
 LIMIT $2
 FOR UPDATE SKIP LOCKED
"""

_CLAIMED_COLUMNS = (
    "m.id, m.queue_id, m.redelivered, m.exchange, m.routing_key, m.properties, m.body, m.priority"
)

# Claim up to $2 ready messages of queue $1 (zero-TTL ones since $3) for node $4,
# channel $5 (an unacked delivery).
# ``id = ANY(ARRAY(head))``, not a join with the head: the ARRAY sub-select is an
# InitPlan, evaluated once (a joined subquery may be rescanned, and every rescan with
# SKIP LOCKED yields *other* rows), and the rows are then fetched by primary key
# whatever the statistics say. As a join (``WITH c AS MATERIALIZED (head) ... FROM c``)
# the planner, once a VACUUM of a drained table has recorded reltuples = 0, takes
# ``messages`` for one row and walks the whole primary key once per claim, testing
# each row against the claimed ids: 2.7 s per 250-row claim over a 20k-row table, the
# rawbench "slow mode" (issue 13; docs/performance.md).
CLAIM = f"""
UPDATE messages m
   SET owner_node = $4, owner_channel = $5, delivery_count = m.delivery_count + 1
 WHERE m.id = ANY(ARRAY({_HEAD}))
RETURNING {_CLAIMED_COLUMNS}, m.delivery_count
"""

# Claim ahead of the consumers' credit, for node $3 to hold (dispatch.py): up to $2 of
# the first ready rows of queue $1, stopping before the first with a TTL (it must expire
# in the queue) and before the bodies pass $4 bytes. The head locks them all; those left
# out stay ready (their lock ends with the statement). The window runs over the locked
# head, never over ``messages`` (see CLAIM).
CLAIM_AHEAD = f"""
UPDATE messages m
   SET owner_node = $3, owner_channel = 0, delivery_count = m.delivery_count + 1
 WHERE m.id = ANY(ARRAY(
   SELECT id FROM (
     SELECT id,
            sum(n) OVER w AS bytes,
            bool_or(ttl) OVER w AS ttl_before
       FROM (SELECT id, priority, octet_length(body) AS n, expires_at IS NOT NULL AS ttl
               FROM messages
              WHERE queue_id = $1 AND {READY}
              ORDER BY priority DESC, id
              LIMIT $2
                FOR UPDATE SKIP LOCKED) head
     WINDOW w AS (ORDER BY priority DESC, id)) ahead
    WHERE bytes <= $4 AND NOT ttl_before))
RETURNING {_CLAIMED_COLUMNS}, m.delivery_count
"""

# Take up to $2 ready messages of queue $1 (zero-TTL ones since $3) for a no-ack
# delivery: they are deleted at once.
CLAIM_DELETE = f"""
DELETE FROM messages m
 WHERE m.id = ANY(ARRAY({_HEAD}))
RETURNING {_CLAIMED_COLUMNS}, m.delivery_count + 1
"""

# -- settle ----------------------------------------------------------------------------

# Ack: delete the deliveries $1 that node $2 holds.
# ``(owner_node = $2) IS TRUE``, not ``owner_node = $2``: the same rows, but the planner
# cannot pick ix_messages_owner, whose entries (every unacked and dead row of the node)
# it misjudges with stale statistics (a bitmap over 40k entries per ack batch); the
# ids find their rows through the primary key.
ACK = "DELETE FROM messages WHERE id = ANY($1::bigint[]) AND (owner_node = $2) IS TRUE"

# -- requeue ---------------------------------------------------------------------------

# Return the deliveries $1 of node $2 to ready, flagged redelivered; they keep their id
# (their place in the queue). ``IS TRUE``: see ``ACK``.
REQUEUE = """
UPDATE messages SET owner_node = NULL, owner_channel = NULL, redelivered = true
 WHERE id = ANY($1::bigint[]) AND (owner_node = $2) IS TRUE
"""

# Return the rows $1 that node $2 held for its consumers, never delivered, to ready, that
# delivery uncounted (a written row's count was 1, a claimed one's $3): only as they
# were written or claimed (a row requeued and claimed again meanwhile is a delivery; a
# requeue flags it redelivered, which a release leaves as it is). ``IS TRUE``: see ``ACK``.
# Not a join with ``unnest``: with stale statistics its custom plan scans ``messages``
# (256 ms for 1,024 ids over 200k rows); the ids find their rows by primary key, as ACK's.
RELEASE = """
UPDATE messages m
   SET owner_node = NULL, owner_channel = NULL, delivery_count = m.delivery_count - 1
 WHERE m.id = ANY($1::bigint[]) AND (m.owner_node = $2) IS TRUE AND m.owner_channel = 0
   AND m.delivery_count = ($3::int[])[array_position($1::bigint[], m.id)]
"""

# Return everything node $1 holds to ready (the node shuts down).
REQUEUE_NODE = (
    "UPDATE messages SET owner_node = NULL, owner_channel = NULL, redelivered = true"
    " WHERE owner_node = $1"
)

# Return everything the nodes $1 held to ready (they were reaped).
REQUEUE_NODES = (
    "UPDATE messages SET owner_node = NULL, owner_channel = NULL,"
    " redelivered = true WHERE owner_node = ANY($1::uuid[])"
)

# -- reconcile -------------------------------------------------------------------------

# Ids of the deliveries node $1 holds (compared with what its channels still track).
OWNED_IDS = "SELECT id FROM messages WHERE owner_node = $1"

# -- the write batch (run by storage.batch.WriteBatch) --------------------------------

# The columns of a new message and how they are computed from the values ``u`` gives
# (the TTL and the delay in milliseconds become times).
_INSERT_FROM_U = """
INSERT INTO messages (queue_id, priority, persistent, exchange, routing_key, properties,
                      content_type, message_id, correlation_id, expiration, body,
                      expires_at, available_at{owned_columns})
SELECT q, p, d, e, r, h, ct, mi, ci, x, b,
       CASE WHEN ttl IS NULL THEN NULL ELSE now() + ttl * interval '1 millisecond' END,
       CASE WHEN dly IS NULL OR dly <= 0 THEN NULL
            ELSE now() + dly * interval '1 millisecond' END{owned_values}
"""
# What WRITE_PLAIN, INSERT_DELIVERED and INSERT_ONE add: the rows for which {owned}
# holds are inserted as delivered, owned by node {node} (a claim's columns), for
# consumers that take them at once.
_OWNED_COLUMNS = ", owner_node, owner_channel, delivery_count"
_OWNED_VALUES = """,
       CASE WHEN {owned} THEN {node}::uuid END,
       CASE WHEN {owned} THEN 0 END,
       CASE WHEN {owned} THEN 1 ELSE 0 END"""


def _insert_owned(node: str, owned: str) -> str:
    return _INSERT_FROM_U.format(
        owned_columns=_OWNED_COLUMNS, owned_values=_OWNED_VALUES.format(node=node, owned=owned)
    )


_INSERT_PLAIN_FROM_U = _insert_owned("$28", "n = ANY($33::bigint[])")  # ordinals $33
_INSERT_DELIVERED_FROM_U = _insert_owned("$27", "n = ANY($28::bigint[])")  # ordinals $28
_INSERT_ONE_FROM_U = _insert_owned("$14", "$14::uuid IS NOT NULL")  # the one row, if $14
_INSERT_FROM_U = _INSERT_FROM_U.format(owned_columns="", owned_values="")

_NEW_COLUMNS = ("q", "p", "d", "e", "r", "h", "ct", "mi", "ci", "x", "b", "ttl", "dly")
_NEW_TYPES = ("bigint", "smallint", "boolean", "text", "text", "bytea", "text", "text",
              "text", "text", "bytea", "bigint", "bigint")  # fmt: skip

# The rows ``u`` of a batch from 13 parallel arrays ($1-$13) and 13 defaults
# ($14-$26): a column the same in every row comes as an empty array and its value as
# the default (unnest pads a short array with NULLs), so asyncpg encodes and the
# server parses only the columns that vary (in a benchmark batch, the bodies). Each
# default is a one-element array too: array elements skip the text codec, so a name
# is escaped (storage.textsafe) once, whichever way it travels.
_BATCH_ROWS = (
    "(SELECT "
    + ", ".join(
        f"coalesce(a.{c}, (${i + 14}::{t}[])[1]) AS {c}"
        for i, (c, t) in enumerate(zip(_NEW_COLUMNS, _NEW_TYPES, strict=True))
    )
    + ", a.n FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_NEW_TYPES))
    + ") WITH ORDINALITY AS a("
    + ", ".join(_NEW_COLUMNS)
    + ", n)) AS u"
)

# The batch's queues that still exist, locked ``FOR KEY SHARE`` until the commit (what a
# foreign key check locked, once per row; ``messages`` has none, migration 0014): a
# queue deleted meanwhile is not among them, and a delete waits for this commit (the
# ``queues_deleted`` trigger then deletes what it inserted). The queue ids are the
# batch's column $1 and its default $14 (one of the two is empty or NULL). ``IN``, not
# ``= ANY(ARRAY(...))``: a hash semi-join (the lock taken once), where an array is
# compared element by element for every row.
_LIVE_QUEUES = "(SELECT id FROM queues WHERE id = ANY($1::bigint[] || $14::bigint[]) FOR KEY SHARE)"

# Insert the publishes (storage.batch.columns), in the given order (FIFO ids), into
# the queues that still exist.
INSERT = f"""{_INSERT_FROM_U.rstrip()}
  FROM {_BATCH_ROWS}
 WHERE u.q IN {_LIVE_QUEUES}
 ORDER BY n
"""

# ``INSERT``, the rows at the ordinals $28 inserted as delivered by node $27; returns
# the queue and id of those, in id (so batch) order.
INSERT_DELIVERED = f"""
WITH ins AS ({_INSERT_DELIVERED_FROM_U.strip()}
  FROM {_BATCH_ROWS}
 WHERE u.q IN {_LIVE_QUEUES}
 ORDER BY n
 RETURNING id, queue_id, owner_node IS NOT NULL AS owned)
SELECT queue_id, id FROM ins WHERE owned ORDER BY id
"""

# One large message by INSERT, where the database cannot take ``LARGE_ROW``'s COPY
# (storage/large.py): every value a plain parameter, the body one bytea; inserted as
# delivered by node $14 if it is not NULL. Returns the id; no row if the queue is gone.
INSERT_ONE = f"""{_INSERT_ONE_FROM_U.rstrip()}
  FROM (VALUES ({", ".join(f"${i + 1}::{t}" for i, t in enumerate(_NEW_TYPES))}))
       AS u({", ".join(_NEW_COLUMNS)})
 WHERE EXISTS (SELECT 1 FROM queues WHERE queues.id = u.q FOR KEY SHARE)
 RETURNING id
"""

# One large message (storage.batch.LARGE_BODY or more) goes by ``COPY``, its body
# streamed in slices (storage.large): the values a COPY cannot compute come first from
# this statement, which locks queue $1 ``FOR KEY SHARE`` as ``INSERT`` does (no row: the
# queue is gone, nothing is inserted). Its id (FIFO: taken between the batch's other
# inserts), and its expiry and due times from TTL $2 and delay $3 in milliseconds, in
# COPY's binary form. Same columns, rules and FIFO id as ``INSERT``.
LARGE_ROW = """
SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id,
       timestamptz_send(CASE WHEN $2::bigint IS NULL THEN NULL
                             ELSE now() + $2 * interval '1 millisecond' END) AS expires_at,
       timestamptz_send(CASE WHEN $3::bigint IS NULL OR $3 <= 0 THEN NULL
                             ELSE now() + $3 * interval '1 millisecond' END) AS available_at
  FROM queues WHERE id = $1 FOR KEY SHARE
"""

# A plain batch in one statement (its commit is the statement's): insert the publishes
# ($1-$26 as in ``INSERT``; those at the ordinals $33 as delivered by node $28), delete
# the acked rows $27 node $28 owns, and wake the queues (NOTIFY on channel $31 with
# payload $32; NULL: none), all only if every vhost $29 is still at the topology version
# $30 the batch was routed with. Returns ``ok`` (false: nothing was written; route again
# with the new topology) and the queues and ids of the delivered rows, in id (so batch)
# order; a row for a queue deleted meanwhile is not inserted. One round trip
# instead of the version read, BEGIN, INSERT, DELETE, NOTIFY and COMMIT; and the
# version check shares the writes' snapshot.
_WRITE_PLAIN = f"""
WITH v AS (SELECT count(*) = cardinality($29::int[]) AS ok
             FROM unnest($29::int[], $30::bigint[]) AS t(id, version)
             JOIN vhosts ON vhosts.id = t.id AND vhosts.topology_version = t.version),
     ins AS ({_INSERT_PLAIN_FROM_U.strip()}
  FROM {_BATCH_ROWS}
 WHERE (SELECT ok FROM v) AND u.q IN {_LIVE_QUEUES}
 ORDER BY n
 RETURNING id, queue_id, owner_node IS NOT NULL AS owned),
     acked AS (DELETE FROM messages
                WHERE id = ANY($27::bigint[]) AND (owner_node = $28) IS TRUE
                  AND (SELECT ok FROM v)
               RETURNING 1)
SELECT ok,
       (SELECT array_agg(queue_id ORDER BY id) FROM ins WHERE owned) AS owned_queues,
       (SELECT array_agg(id ORDER BY id) FROM ins WHERE owned) AS owned_ids{{notify}}
  FROM v
"""
WRITE_PLAIN = _WRITE_PLAIN.replace(
    "{notify}", ", CASE WHEN ok AND $32::text IS NOT NULL THEN pg_notify($31, $32) END"
)
# The same without NOTIFY (``--notify poll``: the database may have no pg_notify at
# all, and a function is looked up even where the CASE never calls it). $31 and $32
# are then unused but typed, so both take the same parameters.
WRITE_PLAIN_SILENT = _WRITE_PLAIN.replace("{notify}", ", $31::text IS NULL AND $32::text IS NULL")

# What a dead-lettered copy is built from (storage.records.DeadRow).
_DEAD_COLUMNS = "id, queue_id, exchange, routing_key, properties, body, priority, persistent"

# Reject: delete the deliveries $1 node $2 holds, returning them (to dead-letter).
TAKE_OWNED = (
    f"DELETE FROM messages WHERE id = ANY($1::bigint[]) AND (owner_node = $2) IS TRUE"
    f" RETURNING {_DEAD_COLUMNS}"
)

# ``REQUEUE``, with each row's queue and delivery count (the delivery limit).
REQUEUE_COUNTED = REQUEUE.strip() + " RETURNING id, queue_id, delivery_count"

# Delete rows $1 whoever holds them, returning them (past their delivery limit).
TAKE = f"DELETE FROM messages WHERE id = ANY($1::bigint[]) RETURNING {_DEAD_COLUMNS}"

# The sweep: delete up to $1 expired unowned rows (fresh zero-TTL ones while their
# queue has consumers stay), returning them.
EXPIRE = f"""
DELETE FROM messages m
 WHERE m.id = ANY(ARRAY(
  SELECT id FROM messages
   WHERE expires_at <= now() AND (owner_node IS NULL) IS TRUE
     AND NOT ({FRESH_ZERO_TTL}
              AND EXISTS (SELECT 1 FROM consumers c WHERE c.queue_id = messages.queue_id))
   ORDER BY expires_at
   LIMIT $1
   FOR UPDATE SKIP LOCKED))
RETURNING m.{_DEAD_COLUMNS.replace(", ", ", m.")}
"""  # ix_messages_expires order (an ORDER BY id walked the whole table when few have a
# TTL); each batch is dead-lettered in id order, the order they were queued. Rows by
# primary key from an InitPlan, never joined (see CLAIM: the slow mode).
# ``(owner_node IS NULL) IS TRUE``, not ``owner_node IS NULL``: the plain form matches
# ix_messages_ready's predicate too, and without statistics the planner walked that
# index, the whole backlog (13 ms per sweep, 4 sweeps a second, over 100k ready rows).

# Keep the newest messages (in delivery order, the last ones) within the limits.
DROP_HEAD = f"""
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

# Lock the rows of queues $1 until commit, in id order (their length checks serialise).
# ``NO KEY UPDATE``: it does not wait on the ``KEY SHARE`` an insert of the same batch
# (or another node's) holds on the queue, which ``FOR UPDATE`` did (two batches
# publishing to one length-limited queue deadlocked).
LOCK_QUEUES = "SELECT 1 FROM queues WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE"

# Ready (messages, bytes) of each queue $1: a statement of its own after ``LOCK_QUEUES``,
# so that it counts what a batch that held the lock before committed (counted in the
# locking statement, the counts were those of before the wait: another node's batch
# could overshoot x-max-length with reject-publish).
READY_LENGTHS = f"""
SELECT q.id,
       (SELECT count(*) FROM messages WHERE queue_id = q.id AND {READY}),
       (SELECT coalesce(sum(octet_length(body)), 0) FROM messages
         WHERE queue_id = q.id AND {READY})
  FROM queues q WHERE q.id = ANY($1::bigint[])
"""

# Lock queue $1's row (its overflow is decided under the lock; ``NO KEY``: see above).
LOCK_QUEUE = "SELECT 1 FROM queues WHERE id = $1 FOR NO KEY UPDATE"

# -- counts ----------------------------------------------------------------------------

# Ready messages of queue $1: exact below 2 * CAP, estimated above (basic.get-ok).
READY_COUNT = f"SELECT {ready_estimate('$1', READY)}"

# (ready messages, consumers) of queue $1, both exact.
QUEUE_COUNTS = (
    f"SELECT (SELECT count(*) FROM messages WHERE queue_id = $1 AND {READY}),"
    " (SELECT count(*) FROM consumers WHERE queue_id = $1)"
)

# Find queue $2 of vhost $1, mark it used if anything reads the mark (``x-expires``, or
# an ``expires`` policy) and count it (declare-ok): the queue's columns, ready,
# consumers, touched.
USE_QUEUE_NAMED = f"""
WITH q AS (SELECT id, name, durable, auto_delete, exclusive_node, exclusive_connection,
                  arguments
             FROM queues WHERE vhost_id = $1 AND name = $2),
     used AS (UPDATE queues SET last_used_at = now()
               WHERE id = (SELECT id FROM q WHERE arguments ? 'x-expires' OR EXISTS
                           (SELECT 1 FROM policies p WHERE p.vhost_id = $1
                               AND p.definition ? 'expires'))
              RETURNING id)
SELECT q.*,
       {ready_estimate("q.id", READY)} AS ready,
       (SELECT count(*) FROM consumers WHERE queue_id = q.id) AS consumers,
       (SELECT count(*) FROM used) AS touched
  FROM q
"""

# Mark queue $1 used and count it (declare-ok of a queue already known): ready, consumers.
USE_QUEUE = (
    "UPDATE queues SET last_used_at = now() WHERE id = $1 RETURNING"
    f" {ready_estimate('$1', READY)},"
    " (SELECT count(*) FROM consumers WHERE queue_id = $1)"
)

# -- next_due --------------------------------------------------------------------------

# Seconds until the next delayed message of queue $1 is due (NULL: none is delayed).
NEXT_DUE = (
    "SELECT extract(epoch FROM min(available_at) - now()) FROM messages"
    f" WHERE queue_id = $1 AND {DELAYED}"
)

# For each queue of $1: (queue, has a ready message, seconds until its next delayed
# message is due or NULL). One index probe per queue (the ready poll).
READY_QUEUES = (
    "SELECT q,"
    " EXISTS (SELECT 1 FROM messages WHERE queue_id = q"
    f" AND ({READY} OR ({UNOWNED} AND {FRESH_ZERO_TTL}))),"
    " (SELECT extract(epoch FROM min(available_at) - now()) FROM messages"
    f"   WHERE queue_id = q AND {DELAYED})"
    " FROM unnest($1::bigint[]) AS u(q)"
)

# -- expiry ----------------------------------------------------------------------------

# Seconds until the next unowned message of any queue expires (NULL: none has a TTL).
# Owned rows are left out inside the aggregate, not in the WHERE: there ``owner_node
# IS NULL`` made ix_messages_ready a candidate, which the planner walked (the whole
# backlog, see EXPIRE) instead of ix_messages_expires.
NEXT_EXPIRY = (
    "SELECT extract(epoch FROM min(CASE WHEN owner_node IS NOT NULL THEN NULL WHEN"
    f" {FRESH_ZERO_TTL} THEN expires_at + {ZERO_TTL_GRACE} ELSE expires_at END) - now())"
    " FROM messages WHERE expires_at IS NOT NULL"
)

# -- purge -----------------------------------------------------------------------------

# queue.purge: delete the ready messages of queue $1 (deliveries stay with their
# consumers; delayed ones are not in the queue yet). The status tag holds the count.
PURGE = f"DELETE FROM messages WHERE queue_id = $1 AND {READY}"

# -- delete ----------------------------------------------------------------------------

# queue.delete-ok's count: the ready messages of queue $1 (what declare-ok counted).
COUNT_READY = f"SELECT count(*) FROM messages WHERE queue_id = $1 AND {READY}"

# Delete queue $1, returning how many ready messages it held, in one statement (one round
# trip, no transaction around it). The count reads the snapshot before the delete; the
# queue row is locked by the delete, as a write batch takes it (its inserts lock the queue
# KEY SHARE, then its acks lock messages). Its messages go with it (``queues_deleted``).
DELETE_QUEUE = f"""
WITH gone AS (DELETE FROM queues WHERE id = $1 RETURNING id)
SELECT count(*) FROM messages WHERE queue_id = $1 AND {READY}
"""

# The queues of ready (or delayed) messages that have no queue row (``messages`` has no
# foreign key, migration 0014), found without reading the table: a skip scan of
# ix_messages_ready, one probe per queue. An owned orphan is found once it is requeued.
ORPHAN_QUEUES = """
WITH RECURSIVE ids(q) AS (
  (SELECT queue_id FROM messages WHERE owner_node IS NULL ORDER BY queue_id LIMIT 1)
  UNION ALL
  SELECT (SELECT m.queue_id FROM messages m
           WHERE m.owner_node IS NULL AND m.queue_id > ids.q ORDER BY m.queue_id LIMIT 1)
    FROM ids WHERE ids.q IS NOT NULL)
SELECT q FROM ids WHERE q IS NOT NULL AND NOT EXISTS (SELECT 1 FROM queues WHERE id = q)
"""

# Every message of the queues $1 (whose queue rows are gone).
DELETE_QUEUES_MESSAGES = "DELETE FROM messages WHERE queue_id = ANY($1::bigint[])"

# One node sweeps at a time (two sweeps deleting the same orphans would wait on each other).
ORPHAN_SWEEP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('cavalcade_orphan_sweep'))"

# The queues consumed on the nodes $1, which go (their consumer rows with them): as when a
# consumer cancels, ``x-expires`` counts from now.
MARK_CONSUMED_ON_NODES = (
    "UPDATE queues SET last_used_at = now()"
    " WHERE id IN (SELECT queue_id FROM consumers WHERE node_id = ANY($1::uuid[]))"
)

# -- vacuum ----------------------------------------------------------------------------

# The churning tables: message rows die as fast as they are born, and each declare or
# consume rewrites its queue's row; autovacuum wakes once a minute at best.
VACUUM = "VACUUM messages, queues, consumers, connections"

# -- statistics (management API) -------------------------------------------------------

# The ready window of a queue the depths scale from: the claim index's first 2 * CAP
# ready rows (all of them, so exact, whenever the count is).
_READY_SAMPLE = (
    "SELECT count(*) AS n, coalesce(sum(octet_length(body)), 0) AS bytes,"
    " count(*) FILTER (WHERE persistent) AS persistent FROM (SELECT body, persistent"
    f" FROM messages WHERE queue_id = q.id AND {READY}"
    f" ORDER BY priority DESC, id LIMIT {2 * CAP}) w"
)

# Unacked rows (``owner_node`` set) per queue, through ix_messages_owner: they are few
# (what consumers hold, bounded by their prefetch), so exact at any backlog.
_OWNED = (
    "SELECT queue_id, count(*) AS n, sum(octet_length(body)) AS bytes,"
    " count(*) FILTER (WHERE persistent) AS persistent"
    " FROM messages WHERE owner_node IS NOT NULL GROUP BY queue_id"
)

# Every queue (of vhost $1, named $2; NULL: any) with its counts for the management API
# and /metrics. Ready messages as declare-ok counts them (``counting``: exact below
# 2 * CAP, estimated above, a bounded index walk per queue instead of a scan of every
# row of the queue: 1.4 s at a 1M backlog); ready bytes and persistent ready messages
# exact with the count, else scaled from the head window; unacked exact (``_OWNED``).
# Run with JIT off (storage/stats.py): the planner prices the per-queue walks as the
# full scans they bound, and compiling the plan took 1.4-3 s of a 50 ms statement.
QUEUE_DEPTHS = (
    f"WITH owned AS ({_OWNED})"
    " SELECT q.id, v.name AS vhost, q.name, q.durable, q.auto_delete, q.exclusive_node,"
    " q.exclusive_connection, q.arguments, q.last_used_at,"
    " r.ready, coalesce(o.n, 0) AS unacked,"
    " CASE WHEN r.n >= r.ready OR r.n = 0 THEN r.bytes"
    "  ELSE round(r.bytes::numeric * r.ready / r.n)::bigint END AS ready_bytes,"
    " coalesce(o.bytes, 0) AS unacked_bytes,"
    " coalesce(o.persistent, 0) + CASE WHEN r.n >= r.ready OR r.n = 0 THEN r.persistent"
    "  ELSE round(r.persistent::numeric * r.ready / r.n)::bigint END AS persistent,"
    " coalesce(c.n, 0) AS consumers"
    " FROM queues q JOIN vhosts v ON v.id = q.vhost_id"
    " LEFT JOIN owned o ON o.queue_id = q.id"
    f" CROSS JOIN LATERAL (SELECT {ready_estimate('q.id', READY)} AS ready, s.n, s.bytes,"
    f" s.persistent FROM ({_READY_SAMPLE}) s OFFSET 0) r"  # OFFSET 0: evaluated once
    " LEFT JOIN LATERAL (SELECT count(*) AS n FROM consumers WHERE queue_id = q.id) c ON true"
    " WHERE ($1::text IS NULL OR v.name = $1) AND ($2::text IS NULL OR q.name = $2)"
    " ORDER BY v.name, q.name"
)


def _totals(of_vhosts: bool) -> str:
    """Cluster-wide object and message counts; ``of_vhosts``: of the vhosts $1 only.
    Ready messages summed per queue as ``QUEUE_DEPTHS`` counts them; unacked exact."""
    where = "" if not of_vhosts else " WHERE vhost_id = ANY($1::int[])"
    qwhere = "" if not of_vhosts else " WHERE q.vhost_id = ANY($1::int[])"
    qand = "" if not of_vhosts else " AND q.vhost_id = ANY($1::int[])"
    return (
        f"SELECT (SELECT count(*) FROM exchanges{where}) AS exchanges,"
        f" (SELECT count(*) FROM queues{where}) AS queues,"
        f" (SELECT count(*) FROM consumers c JOIN queues q ON q.id = c.queue_id{qwhere})"
        " AS consumers,"
        f" (SELECT count(*) FROM connections{where}) AS connections,"
        f" (SELECT coalesce(sum({ready_estimate('q.id', READY)}), 0)::bigint"
        f" FROM queues q{qwhere}) AS ready,"
        " (SELECT count(*) FROM messages m JOIN queues q ON q.id = m.queue_id"
        f" WHERE m.owner_node IS NOT NULL{qand}) AS unacked"
    )


# Object counts, ready (``READY``) and unacked messages: of every vhost, or of the vhosts $1.
TOTALS = _totals(False)
TOTALS_OF_VHOSTS = _totals(True)

# Before the statistics statements, in their transaction (see ``QUEUE_DEPTHS``).
NO_JIT = "SET LOCAL jit = off"

# -- clock -----------------------------------------------------------------------------

# The database clock now, in epoch seconds (a dispatcher maps its waiting moment onto it).
DATABASE_TIME = "SELECT extract(epoch FROM clock_timestamp())"
