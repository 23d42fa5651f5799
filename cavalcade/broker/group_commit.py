"""Group commit: many publishes and settlements, from all connections, per transaction.

While one transaction commits, new work piles up; the next transaction takes
all of it. A publish's future resolves only after its commit, so a publisher
confirm always means "committed". Acks, requeues and rejects go through the same
queue, so they apply in the order the clients sent them. What one transaction does
is broker/write_path.py; routing and queue rules come from the broker's use-cases
(:class:`Router`, :class:`QueueRules`), given once with :meth:`WriteBatcher.connect`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol
from uuid import UUID

from cavalcade.domain.limits import BatchRules
from cavalcade.domain.properties import Properties
from cavalcade.storage.batch import fits_one_statement
from cavalcade.storage.records import ClaimedMessage, DeadRow, NewMessage
from cavalcade.storage.repository import Repository
from cavalcade.storage.retry import Backoff, retry
from cavalcade.storage.sqlstate import is_data_error, is_resource_alarm

from . import write_path
from .alarms import ResourceAlarm
from .dispatch import DeliveryTarget, QueueDispatcher
from .gathering import Gathering
from .isolation import isolate
from .memory import MemoryWatermark, publish_cost
from .outage import Outage
from .stats import NodeStats
from .topology import VhostTopology

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 2000
MAX_BATCH_BYTES = 16 * 1024 * 1024


class PublishRefused(Exception):
    """A queue at its ``x-max-length`` with ``x-overflow: reject-publish`` refused it, or
    the database refused its rows."""


class PublishBacklog(NamedTuple):
    """Bytes published and not yet committed; above ``limit`` publishers are blocked."""

    bytes: int
    limit: int


@dataclass(slots=True)
class PendingPublish:
    """A publish accepted from a client, routed when its batch is written."""

    vhost: VhostTopology
    exchange: str
    routing_key: str
    props: Properties
    body: bytes
    rows: list[NewMessage] | None = None  # routed early, against ``version``
    version: int = -1
    cc: tuple[str, ...] = ()  # more routing keys (the CC and BCC headers)
    waited: bool = True  # a client waits for its commit (a confirm, a mandatory return)


class Router(Protocol):
    """Routing at write time (the broker): refresh stale topology, then route."""

    async def prepare(self, pending: Sequence[PendingPublish]) -> None: ...

    def route_pending(self, p: PendingPublish) -> list[NewMessage]: ...


class QueueRules(Protocol):
    """The rules of the queues a batch touches (the broker's cached topology)."""

    def rules_for(self, messages: Sequence[NewMessage], requeued: set[int]) -> BatchRules: ...

    def dead_letter(self, rows: list[DeadRow], reason: str) -> list[NewMessage]: ...


class _NoRules:
    """Before :meth:`WriteBatcher.connect`: no limits, dead messages dropped."""

    def rules_for(self, messages: Sequence[NewMessage], requeued: set[int]) -> BatchRules:
        return BatchRules()

    def dead_letter(self, rows: list[DeadRow], reason: str) -> list[NewMessage]:
        return []


Work = Sequence[NewMessage] | PendingPublish
Op = tuple[Work, "asyncio.Future[int]", int]  # work, its future, its size in bytes
Spans = list[tuple[int, int, "asyncio.Future[int]"]]


@dataclass(slots=True)
class DirectShare:
    """Rows of one queue in a batch that its waiting consumers take straight away: the
    queue's dispatcher, each consumer's share (in order), how many rows the queue has
    in the batch, and (batch index, consumer) of each handed row, in batch order (the
    queue's first rows; the rest go into the queue)."""

    dispatcher: QueueDispatcher
    shares: list[tuple[DeliveryTarget, int]]
    rows_in_batch: int
    rows: list[tuple[int, DeliveryTarget]]

    @classmethod
    def of(
        cls, d: QueueDispatcher, shares: list[tuple[DeliveryTarget, int]], indexes: list[int]
    ) -> DirectShare:
        it = iter(indexes)
        return cls(d, shares, len(indexes), [(next(it), c) for c, n in shares for _ in range(n)])

    def give_back(self) -> None:
        """Nothing was written: the consumers' credit is theirs again."""
        self.dispatcher.deliver_direct(self.shares, [])


class WriteBatcher:
    """Group commit for publishes, acks, requeues and dead-lettering rejects."""

    def __init__(
        self,
        repo: Repository,
        node_id: UUID,
        on_committed: Callable[[set[int]], None],
        backlog_limit: int = 64 * 1024 * 1024,
        memory_limit: int = 0,
    ) -> None:
        self._repo = repo
        self._node_id = node_id
        self._on_committed = on_committed
        self._rules: QueueRules = _NoRules()
        self._router: Router | None = None
        self._dispatchers: Mapping[int, QueueDispatcher] = {}
        self._ops: list[Op] = []
        self._acks: list[int] = []
        self._requeues: list[int] = []
        self._requeue_queues: set[int] = set()
        self._rejects: list[int] = []
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.gathering = Gathering()
        self._hurry: asyncio.Future[None] | None = None  # ends the gather under way
        self.backlog_bytes = 0
        self._backlog_ops = 0  # the publishes backlog_bytes counts
        self.backlog_limit = backlog_limit
        self.blocked = False
        self.on_blocked: Callable[[bool], None] = lambda _blocked: None
        self.outage: Outage | None = None  # database outages are logged there, once
        self.alarm = ResourceAlarm(self._update_blocked)
        self.memory = MemoryWatermark(memory_limit, self._update_blocked)
        self.stats = NodeStats()

    def connect(
        self,
        router: Router,
        rules: QueueRules,
        dispatchers: Mapping[int, QueueDispatcher] | None = None,
    ) -> None:
        """Route pending publishes with ``router``; apply ``rules`` in every batch; hand
        rows to the waiting no-ack consumers of ``dispatchers`` (see dispatch.py)."""
        self._router, self._rules = router, rules
        self._dispatchers = dispatchers if dispatchers is not None else {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="write-batcher")
        self.memory.start()

    async def stop(self) -> None:
        self.memory.stop()
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _pending(self) -> bool:
        return bool(self._ops or self._acks or self._requeues or self._rejects)

    def _kick(self) -> None:
        self.gathering.arrivals += 1
        self._idle.clear()
        self._work.set()

    def publish(self, messages: Sequence[NewMessage]) -> asyncio.Future[int]:
        """Queue rows for the next commit; the future resolves (to the number of rows)
        once they are committed, or fails with PublishRefused / a database error."""
        return self._submit(
            messages,
            sum(publish_cost(len(m.body), len(m.properties)) for m in messages),
        )

    def submit(self, pending: PendingPublish) -> asyncio.Future[int]:
        """Queue a publish to be routed and written by the next commit."""
        return self._submit(pending, publish_cost(len(pending.body), len(pending.props.raw)))

    def _submit(self, work: Work, size: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._ops.append((work, fut, size))
        if not isinstance(work, PendingPublish) or work.waited:
            self.hurry()
        self.backlog_bytes += size
        self._backlog_ops += 1
        if not self.blocked and self._over_limit():
            self._update_blocked()
        self._kick()
        return fut

    def _alarmed(self) -> bool:
        return self.alarm.active or self.memory.active

    def _over_limit(self) -> bool:
        """Backlog over its limit; one message larger than the limit alone is not (it
        would block its own publisher until it is committed, for nothing)."""
        return self.backlog_bytes > self.backlog_limit and self._backlog_ops > 1

    def _update_blocked(self) -> None:
        """Block publishers while the backlog is over its limit (unblock at half of it)
        or while the database is out of a resource."""
        if self.blocked:
            drained = self.backlog_bytes <= self.backlog_limit // 2 or self._backlog_ops <= 1
            if drained and not self._alarmed():
                self.blocked = False
                self.on_blocked(False)
        elif self._over_limit() or self._alarmed():
            self.blocked = True
            self.on_blocked(True)

    def ack(self, ids: Sequence[int]) -> None:
        """Queue deletions of acked rows for the next commit."""
        if ids:
            self._acks.extend(ids)
            self._kick()

    def requeue(self, messages: Sequence[tuple[int, int]]) -> None:
        """Queue (queue id, message id) pairs to return to ready, redelivered."""
        if messages:
            self.hurry()  # the queue hands out nothing it holds until they are back
            self._requeues.extend(m for _, m in messages)
            queue_ids = {q for q, _ in messages}
            self._requeue_queues.update(queue_ids)
            for qid in queue_ids:
                d = self._dispatchers.get(qid)
                if d is not None:
                    d.requeue_coming()  # nothing held is handed out ahead of them
            self._kick()

    def reject(self, ids: Sequence[int]) -> None:
        """Queue rejected rows to be dead-lettered (their queues have a DLX)."""
        if ids:
            self.hurry()
            self._rejects.extend(ids)
            self._kick()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._pending() or not self._idle.is_set():
            await self.publish(())

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            streaming = False  # work came while the last commit ran
            while self._pending():
                if streaming:
                    await self._gather()
                await self._write_one()
                streaming = self._pending()
            self._idle.set()

    async def _gather(self) -> None:
        """Wait a moment for more work when that pays (see gathering.py); work someone
        waits for ends the wait (:meth:`hurry`)."""
        g, now = self.gathering, time.monotonic()
        items = len(self._ops) + len(self._acks)
        if items >= g.items:
            return  # a commit's worth already: no need to look at who waits
        waited_on = bool(self._requeues or self._rejects) or any(
            not isinstance(w, PendingPublish) or w.waited for w, _, _ in self._ops
        )
        if not g.worth_waiting(now, True, items, waited_on):
            return
        seen = g.arrivals
        loop = asyncio.get_running_loop()
        self._hurry = woken = loop.create_future()
        timer = loop.call_later(g.wait, _wake, woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._hurry = None
        g.gathered(time.monotonic(), seen)

    def hurry(self) -> None:
        """A client waits for the next commit: it does not wait to gather more."""
        if self._hurry is not None:
            _wake(self._hurry)

    def _take_ops(self) -> tuple[list[Op], int]:
        """The oldest work that fits in one transaction."""
        taken: list[Op] = []
        count = size = 0
        for op in self._ops:
            rows = 1 if isinstance(op[0], PendingPublish) else len(op[0])
            if taken and (count + rows > MAX_BATCH_MESSAGES or size + op[2] > MAX_BATCH_BYTES):
                break
            taken.append(op)
            count += rows
            size += op[2]
        del self._ops[: len(taken)]
        return taken, size

    async def _route(self, ops: list[Op]) -> tuple[list[NewMessage], Spans]:
        """Rows of the batch, and each op's slice of them, as of the database's topology."""
        pending = [w for w, _, _ in ops if isinstance(w, PendingPublish)]
        if pending:
            assert self._router is not None
            await self._router.prepare(pending)
        return self._route_now(ops)

    def _route_now(self, ops: list[Op]) -> tuple[list[NewMessage], Spans]:
        """Rows of the batch, and each op's slice of them, as of the cached topology."""
        messages: list[NewMessage] = []
        spans: Spans = []
        for work, fut, _ in ops:
            if isinstance(work, PendingPublish):
                assert self._router is not None
                rows = self._router.route_pending(work)
            else:
                rows = list(work)
            spans.append((len(messages), len(messages) + len(rows), fut))
            messages.extend(rows)
        return messages, spans

    async def _commit(
        self,
        ops: list[Op],
        acks: list[int],
        requeues: list[int],
        rejects: list[int],
        wake: set[int],
    ) -> tuple[Spans, set[int], set[int]]:
        """Route and write one transaction: (each op's span of rows, refused, touched)."""
        started = time.perf_counter()
        if not (requeues or rejects or wake):
            plain = await self._commit_plain(ops, acks, started)
            if plain is not None:
                return plain
        messages, spans = await self._route(ops)
        rules = self._rules.rules_for(messages, wake)
        # Rows are handed off as in the plain batch (large bodies come this way) where
        # nothing can refuse or dead-letter them: indexes then stay those of `messages`.
        settling = requeues or rejects or wake or rules.limits
        direct = [] if settling else self._take_direct(messages)
        rows, owned = _written_rows(messages, direct)
        handed = _handed_only(direct)
        batch = write_path.Batch(rows, acks, requeues, rejects, wake, owned, handed)
        try:
            async with self._repo.write_transaction(self._node_id) as tx:
                outcome = await write_path.write(tx, batch, rules, self._rules.dead_letter)
        except BaseException:
            for share in direct:
                share.give_back()
            raise
        touched = (outcome.touched | wake) - handed
        self._arrived(touched)
        self._requeued(wake)
        self._hand_off(direct, messages, outcome.delivered)
        self._count(ops, spans, messages, outcome.refused, len(acks), started)
        return spans, outcome.refused, touched

    async def _commit_plain(
        self, ops: list[Op], acks: list[int], started: float
    ) -> tuple[Spans, set[int], set[int]] | None:
        """Publishes into queues without length limits, and acks: routed with the cached
        topology and written by one statement that checks it is still current. None if
        the batch is not that plain or the topology moved (nothing written: the caller
        routes again and writes the usual transaction)."""
        vhosts = {w.vhost.id: w.vhost for w, _, _ in ops if isinstance(w, PendingPublish)}
        if any(vh.stale for vh in vhosts.values()):
            return None
        versions = {vid: vh.version for vid, vh in vhosts.items()}  # what routes them
        messages, spans = self._route_now(ops)
        if not fits_one_statement(messages) or self._rules.rules_for(messages, set()).limits:
            return None
        direct = self._take_direct(messages)
        rows, owned = _written_rows(messages, direct)
        durable = any(m.persistent for m in rows)
        # With nothing to write, a batch of publishes still runs the version check: one
        # routed by a cache that missed a new queue or binding must be routed again.
        try:
            written = (
                await self._repo.write_plain(rows, acks, versions, self._node_id, durable, owned)
                if rows or acks or versions
                else []
            )
        except BaseException:
            for share in direct:
                share.give_back()
            raise
        if written is None:
            for share in direct:
                share.give_back()
            return None
        touched = {m.queue_id for m in rows} - _handed_only(direct)
        self._arrived(touched)
        self._hand_off(direct, messages, written)
        self._count(ops, spans, messages, set(), len(acks), started)
        return spans, set(), touched

    def _arrived(self, queue_ids: set[int]) -> None:
        """Rows were written into these queues: no direct hand-off there until their
        consumers have claimed (another part of an isolated batch must not jump them)."""
        for qid in queue_ids:
            d = self._dispatchers.get(qid)
            if d is not None:
                d.arrived()

    def _requeued(self, queue_ids: set[int]) -> None:
        """Rows went back to these queues (requeues): the rows their dispatchers hold,
        newer, go back too, so that claims take them all in order."""
        for qid in queue_ids:
            d = self._dispatchers.get(qid)
            if d is not None:
                d.requeued()

    def _take_direct(self, messages: list[NewMessage]) -> list[DirectShare]:
        """The first rows of each drained local queue, for its consumers to take straight
        away (their credit reserved), and the next ones it holds for them."""
        by_queue: dict[int, list[int]] = {}
        for i, m in enumerate(messages):
            if m.queue_id in self._dispatchers:
                by_queue.setdefault(m.queue_id, []).append(i)
        direct: list[DirectShare] = []
        for qid, indexes in by_queue.items():
            if any(messages[i].delay_ms is not None for i in indexes):
                continue
            d = self._dispatchers[qid]
            # A row with a TTL or a priority is never held (it must expire, or jump).
            sizes = [
                len(m.body) if m.ttl_ms is None and not m.priority else None
                for m in (messages[i] for i in indexes)
            ]
            shares = d.take_direct(sizes)
            if shares:
                direct.append(DirectShare.of(d, shares, indexes))
        return direct

    def _hand_off(
        self, direct: list[DirectShare], messages: list[NewMessage], written: list[tuple[int, int]]
    ) -> None:
        """:meth:`_deliver_direct` once the batch is committed (a retry must not write it
        again, so a failure here is logged, not raised)."""
        if not direct:
            return
        try:
            self._deliver_direct(direct, messages, written)
        except Exception:
            log.exception("direct hand-off after a commit failed")

    def _deliver_direct(
        self, direct: list[DirectShare], messages: list[NewMessage], written: list[tuple[int, int]]
    ) -> None:
        """Deliver the handed rows now that their batch is written. A row whose consumer
        went meanwhile goes into its queue: published if it was not written, requeued if
        it was (as a delivery of this node's)."""
        ids: dict[int, list[int]] = {}
        for qid, mid in written:
            ids.setdefault(qid, []).append(mid)
        for share in direct:
            queue_ids = ids.get(share.dispatcher.queue_id, [])
            if len(queue_ids) != sum(not c.no_ack for _, c in share.rows):
                share.give_back()  # its queue was deleted meanwhile
                continue
            handed: list[ClaimedMessage] = []
            source: dict[int, int] = {}
            taken = iter(queue_ids)
            for i, c in share.rows:
                handed.append(_handed(messages[i], 0 if c.no_ack else next(taken)))
                source[id(handed[-1])] = i
            left = share.dispatcher.deliver_direct(share.shares, handed)
            republish = [messages[source[id(r)]] for r in left if not r.id]
            if republish:
                self.publish(republish)
            self.requeue([(r.queue_id, r.id) for r in left if r.id])

    async def _write_one(self) -> None:
        ops, size = self._take_ops()
        acks, self._acks = self._acks, []
        requeues, self._requeues = self._requeues, []
        wake, self._requeue_queues = self._requeue_queues, set()
        rejects, self._rejects = self._rejects, []
        results: list[tuple[Spans, set[int]]] = []
        try:
            touched = await self._write_retrying(ops, (acks, requeues, rejects, wake), results)
        finally:
            # Committed, refused (isolate) or given up: the held rows a requeue kept back
            # go back now either way (after a commit this is a no-op: _commit did it).
            self._requeued(wake)
        self.backlog_bytes -= size
        self._backlog_ops -= len(ops)
        self._update_blocked()
        _resolve(ops, results)
        if touched:
            self._on_committed(touched)

    async def _write_retrying(
        self,
        ops: list[Op],
        settlements: tuple[list[int], list[int], list[int], set[int]],
        results: list[tuple[Spans, set[int]]],
    ) -> set[int]:
        """Commit, retrying while the database is away; a batch the database refuses for
        its data is written in parts (see isolation.py). Returns the touched queues."""

        async def attempt() -> set[int]:
            spans, refused, touched = await self._commit(ops, *settlements)
            results.append((spans, refused))
            self.alarm.clear()
            return touched

        def failed(exc: Exception) -> None:  # the database may come back: retried for ever
            self.stats.timings.batch_failures += 1
            if is_resource_alarm(exc):
                self.alarm.raised(exc)
            elif self.outage is None or not self.outage.report(exc):
                log.warning("write batch failed (%s: %s); retrying", type(exc).__name__, exc)

        try:
            return await retry(
                attempt, lambda exc: not is_data_error(exc), Backoff(0.05, 2.0), failed
            )
        except Exception as exc:
            if not is_data_error(exc):
                raise
            # Refused rows: never retry them, and never fail anyone else's work.
            self.stats.timings.batch_failures += 1
            return await isolate(self._commit, exc, ops, settlements, results, self.alarm)

    def _count(
        self,
        ops: list[Op],
        spans: Spans,
        messages: list[NewMessage],
        refused: set[int],
        acks: int,
        started: float,
    ) -> None:
        """Statistics of a committed batch (client publishes, unroutable, rows per queue)."""
        publishes = unroutable = 0
        for (work, _, _), (start, end, _) in zip(ops, spans, strict=True):
            if isinstance(work, PendingPublish):
                publishes += 1
                unroutable += start == end
        self.stats.committed(
            time.perf_counter() - started,
            publishes,
            unroutable,
            (m.queue_id for i, m in enumerate(messages) if i not in refused)
            if refused
            else (m.queue_id for m in messages),
            acks,
        )


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _handed_only(direct: list[DirectShare]) -> set[int]:
    """Queues whose every row in the batch was handed off (none waits in the queue)."""
    return {s.dispatcher.queue_id for s in direct if len(s.rows) == s.rows_in_batch}


def _written_rows(
    messages: list[NewMessage], direct: list[DirectShare]
) -> tuple[list[NewMessage], list[int]]:
    """The rows to write (a no-ack consumer's handed row is not written) and, among
    them, the indexes of those an ack-mode consumer takes (written as delivered)."""
    if not direct:
        return messages, []
    skipped = {i for share in direct for i, c in share.rows if c.no_ack}
    at = {i: n for n, i in enumerate(j for j in range(len(messages)) if j not in skipped)}
    owned = sorted(at[i] for share in direct for i, c in share.rows if not c.no_ack)
    return [m for i, m in enumerate(messages) if i not in skipped], owned


def _handed(m: NewMessage, message_id: int) -> ClaimedMessage:
    """A handed row as a claim would have returned it (id 0: not written, no-ack)."""
    return ClaimedMessage(
        message_id, m.queue_id, False, m.exchange, m.routing_key, m.properties, m.body,
        m.priority,
    )  # fmt: skip


def _resolve(ops: list[Op], results: list[tuple[Spans, set[int]]]) -> None:
    """Each publish's future: its row count once committed, PublishRefused if a full
    queue or the database refused it."""
    for spans, refused in results:
        for start, end, fut in spans:
            if fut.done():
                continue
            if refused and any(i in refused for i in range(start, end)):
                fut.set_exception(PublishRefused())
                fut.exception()  # retrieved: publishers without confirms never look
            else:
                fut.set_result(end - start)
    for _work, fut, _ in ops:
        if not fut.done():
            fut.set_exception(PublishRefused())  # the database refused its rows
            fut.exception()
