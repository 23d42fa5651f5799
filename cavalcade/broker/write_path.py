"""One write transaction, driven by the broker: publishes, acks, requeues and rejects,
with queue limits, delivery limits and dead-lettering, all or nothing.

Storage runs the statements (:class:`cavalcade.storage.batch.WriteBatch`); the pure
rules of domain/limits.py decide what full queues refuse and which requeues pass their
delivery limit; :class:`DeadLetter` (the broker's, it routes with the cached topology)
turns dead messages into copies, inserted by the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cavalcade.domain.deadletter import BATCH_REASONS, DELIVERY_LIMIT, EXPIRED, MAXLEN, REJECTED
from cavalcade.domain.limits import BatchRules, over_delivery_limit, refusals
from cavalcade.storage.batch import BatchOutcome, WriteBatch
from cavalcade.storage.records import DeadRow, NewMessage


class DeadLetter(Protocol):
    """Copies of dead messages for their queues' dead-letter exchanges (none: dropped)."""

    def __call__(self, rows: list[DeadRow], reason: str) -> list[NewMessage]: ...


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    messages: Sequence[NewMessage] = ()
    acks: Sequence[int] = ()
    requeues: Sequence[int] = ()
    rejects: Sequence[int] = ()
    wake: set[int] = field(default_factory=set)  # queues that gain ready rows (requeues)
    delivered: Sequence[int] = ()  # indexes of messages written as this node's deliveries
    handed: set[int] = field(default_factory=set)  # queues whose every row is delivered


def _as_dead(m: NewMessage) -> DeadRow:
    return DeadRow(
        0, m.queue_id, m.exchange, m.routing_key, m.properties, m.body, m.priority, m.persistent
    )


async def _publish(
    tx: WriteBatch,
    messages: Sequence[NewMessage],
    delivered: Sequence[int],
    rules: BatchRules,
    out: BatchOutcome,
) -> list[tuple[DeadRow, str]]:
    """Insert the publishes full queues do not refuse (those at the indexes
    ``delivered`` as this node's deliveries); the refused that go to a DLX."""
    capped = {m.queue_id for m in messages if m.queue_id in rules.limits}
    refusing = [q for q in capped if rules.limits[q].refuses]
    dead: list[tuple[DeadRow, str]] = []
    if refusing:
        lengths = await tx.ready_lengths(refusing)
        decided = refusals([(m.queue_id, len(m.body)) for m in messages], lengths, rules.limits)
        out.refused = decided.refused
        dead += [(_as_dead(messages[i]), MAXLEN) for i in decided.dead_lettered]
    kept_at = [i for i in range(len(messages)) if i not in out.refused]
    given = set(delivered)
    kept = [messages[i] for i in kept_at]
    out.delivered = await tx.insert(kept, [n for n, i in enumerate(kept_at) if i in given])
    out.touched.update(m.queue_id for m in kept)
    return dead


async def _requeue(tx: WriteBatch, ids: Sequence[int], rules: BatchRules) -> list[DeadRow]:
    """Requeue; the rows past their queue's delivery limit are taken out instead."""
    if not rules.delivery_limits:
        await tx.requeue(ids)
        return []
    over = over_delivery_limit(await tx.requeue_counted(ids), rules.delivery_limits)
    return await tx.take(over) if over else []


async def _drop_heads(tx: WriteBatch, queues: set[int], rules: BatchRules) -> list[DeadRow]:
    """Queues over their limit drop from the head (the requeued, oldest, go first)."""
    dropped: list[DeadRow] = []
    for qid in sorted(queues):
        lim = rules.limits[qid]
        if not lim.refuses:
            dropped += await tx.drop_head(qid, *lim.bounds())
    return dropped


async def write(
    tx: WriteBatch, batch: Batch, rules: BatchRules, dead_letter: DeadLetter
) -> BatchOutcome:
    """Apply one batch inside ``tx``."""
    out = BatchOutcome()
    if not batch.requeues and not batch.rejects and not any(m.persistent for m in batch.messages):
        # Only transient publishes and acks: losing them in a database crash is what
        # RabbitMQ does too (a lost ack only redelivers; the node reconciles what it
        # owns when the database comes back), so do not wait for the disk.
        await tx.async_commit()
    dead = await _publish(tx, batch.messages, batch.delivered, rules, out)
    if batch.acks:
        await tx.ack(batch.acks)
    if batch.requeues:
        dead += [(d, DELIVERY_LIMIT) for d in await _requeue(tx, batch.requeues, rules)]
    # After the requeues: a requeued message counts against x-max-length too.
    capped = {m.queue_id for m in batch.messages if m.queue_id in rules.limits}
    dead += [
        (d, MAXLEN)
        for d in await _drop_heads(tx, capped | (batch.wake & rules.limits.keys()), rules)
    ]
    if batch.rejects:
        dead += [(d, REJECTED) for d in await tx.take_owned(batch.rejects)]
    if dead:
        copies: list[NewMessage] = []
        for reason in BATCH_REASONS:
            group = [d for d, r in dead if r == reason]
            if group:
                copies += dead_letter(group, reason)
        await tx.insert(copies)
        out.touched.update(m.queue_id for m in copies)
    await tx.notify_queues((out.touched | batch.wake) - batch.handed, tx.node_id)
    return out


async def expire(tx: WriteBatch, limit: int, dead_letter: DeadLetter) -> set[int]:
    """Remove up to ``limit`` expired ready messages, dead-lettering those that ask for
    it; the queues that gained copies."""
    rows = await tx.take_expired(limit)
    if not rows:
        return set()
    copies = dead_letter(rows, EXPIRED)
    await tx.insert(copies)
    touched = {m.queue_id for m in copies}
    await tx.notify_queues(touched)
    return touched
