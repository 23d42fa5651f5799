"""Ready-message counts for declare-ok and get-ok in bounded time: exact when small.

``count(*)`` over a 1M-message backlog reads 1M index entries (0.5 s) for every
passive ``queue.declare``. Instead two index scans read at most ``CAP`` entries each,
one from the head of the queue and one from its tail (the claim index, forwards and
backwards). Their union holds every ready message whenever the queue has fewer than
``2 * CAP``: then the count is exact. Beyond that, the messages between the two
windows are estimated from how densely the windows fill their id ranges (ids are
handed out in publish order, shared by all queues): exact for a queue published to
alone; when several large queues interleave in blocks it can be off by tens of per cent
(never below the 2 * CAP the windows hold), and rougher for priority queues.

The tail window is read only when the head window is full, so a queue of fewer than
``CAP`` ready messages costs one scan of its ready entries.

Why an estimate is right for declare-ok: clients act on the exact value only near
zero ("is it empty", "is anyone consuming": the consumer count stays exact), and a
large backlog's count is a progress figure that trails unconfirmed publishes on
RabbitMQ too. Maintained counters were the alternative: a row every publish batch,
claim and ack would update, which serialises those transactions on it.
"""

from __future__ import annotations

CAP = 1000  # index entries read from each end; counts below 2 * CAP are exact


def ready_estimate(queue_id: str, ready: str) -> str:
    """A scalar SQL expression: messages of the queue ``queue_id`` (an SQL term) that
    match ``ready`` (:data:`cavalcade.storage.queries.READY`, the one definition).

    The tail window is read only when the head window is full: a queue of fewer than
    ``CAP`` ready messages is counted by one scan (a CTE runs when first read, and
    the ``CASE`` reads ``t`` only in its last branch)."""
    scan = f"SELECT id FROM messages WHERE queue_id = {queue_id} AND {ready}"
    return f"""(WITH h AS MATERIALIZED ({scan} ORDER BY priority DESC, id LIMIT {CAP}),
      t AS MATERIALIZED ({scan} ORDER BY priority ASC, id DESC LIMIT {CAP}),
      hn AS (SELECT count(*) AS n FROM h)
 SELECT CASE WHEN hn.n < {CAP} THEN hn.n
             ELSE (SELECT CASE WHEN u.n < {2 * CAP} THEN u.n
                          ELSE greatest(u.n, round(u.n + greatest(tb.lo - hb.hi - 1, 0)::numeric
                                                   * u.n / ((hb.hi - hb.lo + 1)
                                                           + (tb.hi - tb.lo + 1))))::bigint
                          END
                     FROM (SELECT count(*) AS n FROM (SELECT id FROM h UNION SELECT id FROM t) x) u,
                          (SELECT min(id) AS lo, max(id) AS hi FROM h) hb,
                          (SELECT min(id) AS lo, max(id) AS hi FROM t) tb)
        END
   FROM hn)"""
