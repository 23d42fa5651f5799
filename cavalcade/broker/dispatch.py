"""Per-queue dispatchers: claim ready messages for local consumers and hand them over.

One dispatcher per queue with local consumers. It wakes on a local commit, a
NOTIFY from another node, freed prefetch credit, the node's ready poll (one query
for every queue, see ``poller``), or when a delayed message it knows of falls
due; then it claims, consumer by consumer in round-robin, at most each consumer's
free credit with ``FOR UPDATE SKIP LOCKED``. An idle queue runs no statement.

Freed credit alone (an ack, basic.qos, a writable socket) claims only while the
queue may hold ready rows: not after a claim came back short with no news of
arrivals since it began. Without that, every early ack of a Celery worker on a
drained queue ran an empty claim.

A drained queue consumed on this node only takes new messages from this node's
publishes directly (``take_direct``/``deliver_direct``), as RabbitMQ hands a message
to a waiting consumer without queueing it: the write batch inserts a row for an
ack-mode consumer as already claimed, leaves a no-ack consumer's row out altogether,
and delivers them once it commits. Nothing is claimed for them.

Rows past the consumers' credit are *held* (``_Hold``): written as this node's
deliveries too, kept in memory (at most ``HOLD_ROWS`` and ``HOLD_BYTES`` per queue,
``HOLD_NODE_BYTES`` per node, bodies up to ``HOLD_BODY``), and handed out, oldest
first, as acks free credit: a publisher ahead of its consumer (a window of confirms
larger than the prefetch) costs no claim per message. A held row is a ready message
to the client: declare-ok and the management API count it so on this node, and it
goes back to the queue as never delivered (``release_held``) when the last consumer
leaves, another node starts consuming, before a basic.get or a purge. Only queues of
ack-mode consumers without priorities, TTLs or limits hold rows (``holds``).

A zero TTL delivers to a consumer that is waiting when the message is published and
drops it otherwise (RabbitMQ). A dispatcher knows since when its consumers have had
credit without a break (``_waiting_since``, reset whenever it finds none); its claims
take the fresh zero-TTL messages published from that moment on (mapped onto the
database clock, see ``DatabaseClock``); the others are left to the expiry sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol
from uuid import UUID

from cavalcade.domain.deadletter import with_delivery_count
from cavalcade.storage.repository import ClaimedMessage, Repository
from cavalcade.storage.retry import Backoff, retry

from .outage import Outage
from .stats import NodeStats

log = logging.getLogger(__name__)

CLAIM_CAP = 256
ALONE_RECHECK = 1.0  # seconds: how stale "no consumers on other nodes" may be
CLOCK_REFRESH = 60.0  # seconds between readings of the database clock
CLOCK_TIGHT = 0.002  # a reading whose round trip is this short is kept at once
HOLD_ROWS = 2000  # rows a queue holds for its consumers here, at most
HOLD_BYTES = 4 * 1024 * 1024  # their bodies, at most
HOLD_NODE_BYTES = 64 * 1024 * 1024  # the bodies every queue of a node holds, at most
HOLD_BODY = 64 * 1024  # a larger body is never held
RELEASE_WAIT = 5.0  # seconds a get, purge or stop waits for held rows to be back
AHEAD_ROWS = 1024  # a backlog: rows a queue claims ahead of its consumers' credit
AHEAD_CAP = 512  # rows one claim ahead takes, at most


class DeliveryTarget(Protocol):
    """What a consumer looks like to the broker (implemented by the protocol layer)."""

    tag: str
    channel_key: int
    no_ack: bool
    priority: int

    def credit(self) -> int:
        """How many more deliveries it can take now (0: none)."""
        ...

    def deliver(self, messages: list[ClaimedMessage]) -> bool:
        """Hand over claimed messages; False if the consumer is gone (caller requeues)."""
        ...

    def reserve(self, n: int) -> None:
        """Hold ``n`` of its credit while a claim is in flight (other queues see less)."""
        ...

    def release(self, n: int) -> None:
        """Give back a reservation (just before delivering what the claim returned)."""
        ...


class HoldBudget:
    """The body bytes every dispatcher of a node holds (one per node)."""

    def __init__(self, limit: int = HOLD_NODE_BYTES) -> None:
        self.limit = limit
        self.bytes = 0


class _Hold:
    """The target of a batch's rows that a queue holds for its consumers (see the
    module's docstring): what the write path writes as delivered, then hands here."""

    tag = ""
    channel_key = -1
    no_ack = False
    priority = 0

    def __init__(self, d: QueueDispatcher) -> None:
        self._d = d
        self.rows = 0  # taken for a batch not yet committed
        self.bytes = 0

    def take(self, sizes: Sequence[int | None]) -> int:
        """How many of the first ``sizes`` it may hold (their bytes reserved; None: a
        row never held)."""
        d = self._d
        room = HOLD_ROWS - len(d.held) - self.rows
        n = 0
        for size in sizes:
            if n >= room or size is None or size > HOLD_BODY:
                break
            if d.held_bytes + self.bytes + size > HOLD_BYTES:
                break
            if d.budget.bytes + size > d.budget.limit:
                break
            n += 1
            self.bytes += size
            d.budget.bytes += size
        self.rows += n
        return n

    def credit(self) -> int:
        return 0

    def reserve(self, n: int) -> None:
        pass

    def release(self, n: int) -> None:
        """The batch is written (or failed): its reservation ends."""
        self._d.budget.bytes -= self.bytes
        self.rows = self.bytes = 0

    def deliver(self, messages: list[ClaimedMessage]) -> bool:
        self._d.hold(messages)
        return True


class DatabaseClock:
    """This node's monotonic clock mapped onto the database clock, never ahead of it
    (one per node, shared by its dispatchers).

    A reading's moment is taken as the time its answer came back, so a mapped time is
    a lower bound of the database's: a publish that started after a consumer began to
    wait always has a ``published_at`` at or after the mapped moment. Read again once a
    minute (drift), best of up to three round trips."""

    def __init__(self) -> None:
        self._offset: float | None = None
        self._read_at = 0.0

    async def at(self, repo: Repository, moment: float) -> float:
        """``moment`` (``time.monotonic()``) in database epoch seconds, at the latest."""
        if self._offset is None or time.monotonic() - self._read_at > CLOCK_REFRESH:
            best: float | None = None
            for _ in range(3):
                sent = time.monotonic()
                db = await repo.database_time()
                back = time.monotonic()
                best = db - back if best is None else max(best, db - back)
                if back - sent <= CLOCK_TIGHT:
                    break
            self._offset, self._read_at = best, time.monotonic()
        assert self._offset is not None
        return moment + self._offset


class QueueDispatcher:
    """Claims and delivers the messages of one queue to this node's consumers."""

    def __init__(
        self,
        repo: Repository,
        node_id: UUID,
        queue_id: int,
        poll_interval: float,
        single_active: bool = False,
        quorum: bool = False,
        outage: Outage | None = None,
        stats: NodeStats | None = None,
        clock: DatabaseClock | None = None,
        holds: bool = False,
        budget: HoldBudget | None = None,
        ahead: Callable[[], bool] | None = None,
    ) -> None:
        self.queue_id = queue_id
        self.stats = stats or NodeStats()
        self.single_active = single_active
        self.quorum = quorum
        self.consumers: list[DeliveryTarget] = []
        self._repo = repo
        self._node_id = node_id
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next = 0
        self._outage = outage
        # Set once the queue is known to get delayed messages: after an empty drain it
        # then looks up when the next one falls due.
        self.delayed = False
        self._due_at: float | None = None
        self._stopping = False
        self._settled = asyncio.Event()  # clear while a claim is in flight
        self._settled.set()
        # Since when (time.monotonic()) a consumer has had credit without a break: the
        # zero-TTL messages published from then on are theirs. None: nobody waits.
        self._waiting_since: float | None = None
        self._clock = clock or DatabaseClock()  # one per node: the offset is the node's
        # News that rows may have become ready (commits, NOTIFY, polls, due timers, new
        # consumers), counted; ``_drained_at`` is the count when a claim that came back
        # short began (None: the queue may hold ready rows).
        self._arrivals = 0
        self._drained_at: int | None = None
        # Whether the queue has consumers on this node only (then new rows may go to
        # them directly: they would take every one anyway), and when that was read.
        self._alone = False
        self._alone_read = -ALONE_RECHECK
        self._heard_elsewhere = 0  # NOTIFYs of consumers added on other nodes
        self._looking: asyncio.Task[None] | None = None  # a read of them under way
        self._look_after = 0.0  # after a failed read: not before then
        # Rows held for the consumers (see the module's docstring), oldest first.
        self.holds = holds
        self.budget = budget or HoldBudget()
        self.held: deque[ClaimedMessage] = deque()
        self.held_bytes = 0
        self._hold = _Hold(self)
        self._releasing: set[asyncio.Task[None]] = set()
        self._unreleased: set[int] = set()  # ids on their way back to the queue
        self._after_requeue: list[ClaimedMessage] = []  # to return once a requeue commits
        self._paused = 0  # basic.gets and purges under way: nothing is held meanwhile
        # Claims ahead of the consumers' credit (a backlog): whether the queue's rules
        # allow them now (None: never), and whether the last one came back short (then
        # none until a claim for credit comes back full: a backlog again).
        self._ahead = ahead
        self._ahead_short = False

    def add(self, consumer: DeliveryTarget) -> None:
        if consumer.no_ack:
            self._release_soon()  # held rows are for ack-mode consumers only
        self.consumers.append(consumer)
        self.consumers.sort(key=lambda c: -c.priority)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"dispatch-{self.queue_id}")
        self.wake()

    def remove(self, consumer: DeliveryTarget) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    # -- direct hand-off ------------------------------------------------------

    def take_direct(self, sizes: Sequence[int | None]) -> list[tuple[DeliveryTarget, int]]:
        """Shares of the first of ``len(sizes)`` new messages (of these body sizes) for
        this queue's consumers, taken from their credit, if they would claim them first
        thing (the queue is drained, no claim is in flight, no other node consumes it):
        round-robin while credit lasts, then what the queue may hold for them (a size of
        None: not that row, nor the ones after it). Empty: they all go through the queue."""
        if not self.drained or self.single_active or self._stopping or not self._settled.is_set():
            return []
        if not self._alone_now():
            self.wake()  # a claim, then a fresh look at the other nodes' consumers
            return []
        self.give_held()  # older rows first
        count = len(sizes)
        shares = [] if self.held else self._credit_shares(count)
        taken = sum(n for _, n in shares)
        if taken < count and self.holds and self._holding_allowed():
            held = self._hold.take(sizes[taken:])
            if held:
                shares.append((self._hold, held))
        if not any(c.credit() > 0 for c in self.consumers):
            self._waiting_since = None  # zero-TTL messages published now are dropped
        return shares

    def _credit_shares(self, count: int) -> list[tuple[DeliveryTarget, int]]:
        """Round-robin shares of ``count`` rows while the consumers' credit lasts."""
        eligible = self._eligible()
        if not eligible:
            return []
        shares = [0] * len(eligible)
        k = self._next % len(eligible)
        for _ in range(count):
            for _ in range(len(eligible)):
                if eligible[k].credit() > 0:  # read again: a channel's global prefetch
                    break  # is shared by its consumers
                k = (k + 1) % len(eligible)
            else:
                break  # nobody has credit: the rest go through the queue
            eligible[k].reserve(1)
            shares[k] += 1
            k = (k + 1) % len(eligible)
        self._next = k
        return [(c, n) for c, n in zip(eligible, shares, strict=True) if n]

    def deliver_direct(
        self, shares: list[tuple[DeliveryTarget, int]], rows: list[ClaimedMessage]
    ) -> list[ClaimedMessage]:
        """Deliver ``rows`` by the shares ``take_direct`` gave (``rows`` empty: give the
        credit back); returns what a consumer gone meanwhile could not take. Never
        raises: it runs after the rows' commit."""
        left: list[ClaimedMessage] = []
        at = 0
        for c, n in shares:
            batch, at = rows[at : at + n], at + n
            try:
                c.release(n)
                if not batch:
                    continue
                if c is self._hold:
                    c.deliver(batch)
                elif c.deliver(batch):
                    self.stats.delivered(self.queue_id, len(batch), c.no_ack, 0)
                else:
                    left += batch
            except Exception:  # a consumer's failure stays its own
                log.exception("direct delivery on queue %s failed", self.queue_id)
                left += batch
        return left

    def consumers_if_empty(self) -> int | None:
        """The queue's consumer count, if this node knows it holds no ready row (what a
        declare-ok counts): drained, no claim in flight, consumed on this node only (read
        within ``ALONE_RECHECK``). None: ask the database (a stale look at the other
        nodes also wakes a claim, which reads it again)."""
        if not self.consumers or not self.drained or self.single_active or self._stopping:
            return None
        if self.held or self._hold.rows:
            return None  # held rows are ready ones to a client
        if not self._settled.is_set() or not any(c.credit() > 0 for c in self.consumers):
            # A consumer with credit would take at once what another node commits (its
            # NOTIFY on the way), as on RabbitMQ, where a waiting consumer leaves none
            # ready; with none, a row committed there would count as ready.
            return None
        if not self._alone_now():
            self.wake()
            return None
        return len(self.consumers)

    def consumed_elsewhere(self) -> None:
        """Another node now consumes the queue too (its NOTIFY): no hand-off, and declares
        count in the database, until a look at the other nodes finds none."""
        self._alone = False
        self._heard_elsewhere += 1
        self._release_soon()  # their consumers get their turn at the held rows

    # -- held rows -------------------------------------------------------------

    def hold(self, rows: list[ClaimedMessage]) -> None:
        """Keep rows written or claimed as this node's deliveries for the consumers;
        hand out what their credit takes now."""
        if self._after_requeue:  # newer than a requeue still coming: back after it
            self._after_requeue += rows
            self._unreleased.update(r.id for r in rows)
            return
        for row in rows:
            size = len(row.body)
            self.held_bytes += size
            self.budget.bytes += size
        self.held.extend(rows)
        self.give_held()
        if self.held and (self._stopping or not self._alone or not self._holding_allowed()):
            self._release_soon()
        elif self.held:
            self._wake.set()  # the task looks at the other nodes' consumers every second

    def _holding_allowed(self) -> bool:
        return (
            bool(self.consumers) and not self._paused and not any(c.no_ack for c in self.consumers)
        )

    @contextlib.asynccontextmanager
    async def held_back(self) -> AsyncIterator[None]:
        """For a basic.get or a purge: the held rows go back to the queue (a claim in
        flight first hands out or holds its rows), and none is held until it ends."""
        self._paused += 1
        try:
            await self._settled.wait()  # a claim ahead ending now sends its rows back:
            self.give_held()
            await self.release_held()
            await self._releases_done()  # those, and any other rows on their way back
            yield
        finally:
            self._paused -= 1

    def kept(self) -> set[int]:
        """Ids of the rows this node holds (or is returning to the queue): owned by it,
        tracked by no channel, not orphans (see ``Upkeep.reconcile``)."""
        return {r.id for r in self.held} | self._unreleased

    def requeue_coming(self) -> None:
        """Rows older than the held ones are going back to the queue (a requeue, a
        recover, a closed channel): none is handed out from memory any more; once the
        requeue is committed (:meth:`requeued`) the held rows go back too, so that claims
        take them all in order."""
        rows = self._unhold(len(self.held))
        if rows:
            self._arrivals += 1
            self._after_requeue += rows
            self._unreleased.update(r.id for r in rows)

    def requeued(self) -> None:
        """The requeue is committed: the rows held until it go back to the queue."""
        rows, self._after_requeue = self._after_requeue, []
        if rows:
            self._spawn_release(rows)

    def _unhold(self, n: int) -> list[ClaimedMessage]:
        rows = [self.held.popleft() for _ in range(min(n, len(self.held)))]
        size = sum(len(r.body) for r in rows)
        self.held_bytes -= size
        self.budget.bytes -= size
        return rows

    def give_held(self) -> None:
        """Hand held rows, oldest first, to the consumers with credit (round-robin).
        Never raises: it runs inside acks and after commits."""
        if not self.held or self._stopping:
            return
        eligible = [c for c in self._eligible() if not c.no_ack]
        if not eligible:
            return
        credit = self._reserve(eligible)
        for c in eligible:
            c.release(credit[id(c)])
        rows = self._unhold(sum(credit.values()))
        shares = self._split(eligible, credit, rows)
        back: list[ClaimedMessage] = []
        for c in eligible:
            batch = shares[id(c)]
            if not batch:
                continue
            try:
                if c.deliver(batch):
                    self.stats.delivered(self.queue_id, len(batch), False, 0)
                    continue
            except Exception:  # a consumer's failure stays its own
                log.exception("delivery of held rows on queue %s failed", self.queue_id)
            back += batch
        if back:
            back.sort(key=lambda r: r.id)
            self.held.extendleft(reversed(back))
            size = sum(len(r.body) for r in back)
            self.held_bytes += size
            self.budget.bytes += size

    async def release_held(self) -> None:
        """Return the held rows to the queue as never delivered (before a basic.get or a
        purge, and when nobody here may take them). A failure is retried in the
        background (the rows stay this node's until then) and raised."""
        rows = self._unhold(len(self.held))
        if not rows:
            return
        self._arrivals += 1  # they are ready now: claims find them
        ids = [r.id for r in rows]
        self._unreleased.update(ids)
        try:
            await self._repo.release(ids, [r.delivery_count for r in rows], self._node_id)
        except Exception:
            self._spawn_release(rows)
            raise
        self._unreleased.difference_update(ids)
        self._wake.set()

    def _release_soon(self) -> None:
        rows = self._unhold(len(self.held))
        if rows:
            self._arrivals += 1
            self._spawn_release(rows)

    async def _releases_done(self) -> None:
        """Wait (at most ``RELEASE_WAIT``) for the releases under way to be committed."""
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=RELEASE_WAIT)

    def _spawn_release(self, rows: list[ClaimedMessage]) -> None:
        ids, counts = [r.id for r in rows], [r.delivery_count for r in rows]
        self._unreleased.update(ids)

        async def attempt() -> None:
            await self._repo.release(ids, counts, self._node_id)

        async def run() -> None:
            await retry(attempt, lambda _exc: True, Backoff(0.1, 5.0))
            self._unreleased.difference_update(ids)
            self.wake()

        task = asyncio.get_running_loop().create_task(run(), name=f"release-{self.queue_id}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def arrived(self) -> None:
        """Rows were just written into the queue (the wake-up follows the batch)."""
        self._arrivals += 1

    async def settled(self) -> None:
        """Wait until no claim is in flight: what it took is delivered or given back."""
        await self._settled.wait()

    def wake(self) -> None:
        """Rows may have become ready (or the consumers changed): claim."""
        self._arrivals += 1
        self._note_credit()
        self._wake.set()

    def credit_freed(self) -> None:
        """A consumer may take more: held rows first, then claim, unless the queue is
        known to be drained."""
        self._note_credit()
        if self.held:
            self.give_held()
            if self.held:
                if not any(c.credit() > 0 for c in self.consumers):
                    self._waiting_since = None  # zero-TTL messages published now are dropped
                if self._wants_ahead():
                    self._wake.set()  # a backlog: claim the next rows to hold
                return
        if self._drained_at != self._arrivals:
            self._wake.set()

    @property
    def drained(self) -> bool:
        """The last claim came back short and nothing may have arrived since (nor are
        held rows on their way back to the queue)."""
        return self._drained_at == self._arrivals and not self._unreleased

    def _note_credit(self) -> None:
        if self._waiting_since is None and any(c.credit() > 0 for c in self.consumers):
            self._waiting_since = time.monotonic()  # credit freed (ack, qos, new consumer)

    def due_in(self, seconds: float) -> None:
        """A delayed message of this queue falls due in ``seconds``."""
        self.delayed = True
        self._arrivals += 1  # it becomes ready by itself: not drained for freed credit
        at = asyncio.get_running_loop().time() + seconds + 0.005
        if self._due_at is None or at < self._due_at:
            self._due_at = at
            self._wake.set()  # re-arm the wait with the nearer timer

    async def caught_up(self) -> None:
        """Let consumers with credit take what is ready now (before a basic.get, within
        :meth:`held_back`: the get takes the oldest row, as a consumer would)."""
        if not any(c.credit() > 0 for c in self.consumers):
            return
        self._wake.set()
        await asyncio.sleep(0)  # the task wakes and starts its claim
        await self._settled.wait()

    async def stop(self) -> None:
        """End the task. A claim in flight is finished first (its rows delivered, or given
        back): cancelled mid-claim, the rows it took would stay owned by no channel."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            if self._settled.is_set():
                self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._stopping = True
        self.requeued()  # nobody here takes them: not even after the requeue
        try:
            await asyncio.shield(self.release_held())
        except Exception as exc:  # noqa: BLE001 - retried in the background
            log.warning("returning held rows of queue %s failed: %s", self.queue_id, exc)
        await self._releases_done()  # before a shutdown requeues all it owns, redelivered

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.consumers and not self._stopping:
            timeout = None if self._due_at is None else max(self._due_at - loop.time(), 0.0)
            if self.held:  # no claim reads the other nodes' consumers: look every second
                timeout = ALONE_RECHECK if timeout is None else min(timeout, ALONE_RECHECK)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._due_at is not None and loop.time() >= self._due_at:
                self._due_at = None
                self._arrivals += 1
            try:
                if await self._drain() and self.delayed:
                    # Empty for now: sleep until the next delayed message falls due.
                    due = await self._repo.next_due(self.queue_id)
                    self._due_at = None if due is None else loop.time() + due + 0.005
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away; poll retries
                self._drained_at = None
                if self._outage is None or not self._outage.report(exc):
                    log.warning("dispatch for queue %s failed: %s", self.queue_id, exc)
                await asyncio.sleep(0.5)
                self._wake.set()

    def _eligible(self) -> list[DeliveryTarget]:
        """Consumers with credit, at the highest priority that has any (x-priority)."""
        ready = [c for c in self.consumers if c.credit() > 0]
        if not ready:
            return []
        top = max(c.priority for c in ready)
        return [c for c in ready if c.priority == top]

    async def _claimers(self) -> list[DeliveryTarget]:
        """The eligible consumers; with a single active consumer, only it (if it is here)."""
        eligible = self._eligible()
        if eligible and self.single_active:
            active = await self._repo.active_consumer(self.queue_id)
            if active is None or active[0] != self._node_id:
                return []
            eligible = [c for c in eligible if (c.channel_key, c.tag) == active[1:]]
        return eligible

    def _reserve(self, eligible: list[DeliveryTarget]) -> dict[int, int]:
        """Hold each consumer's credit (at most CLAIM_CAP) for the claim: {id(c): n}."""
        credit: dict[int, int] = {}
        for c in eligible:
            # Reserve one consumer at a time: consumers of one channel share its
            # global prefetch, so each reservation lowers the next one's credit.
            credit[id(c)] = min(c.credit(), CLAIM_CAP)
            c.reserve(credit[id(c)])
        return credit

    async def _claim(
        self, eligible: list[DeliveryTarget], since: float, all_no_ack: bool
    ) -> tuple[dict[int, int], int, list[ClaimedMessage]]:
        """Reserve credit and claim up to it: (credit, rows wanted, rows). Leaves
        ``_settled`` clear when rows came back (the caller hands them out)."""
        credit = self._reserve(eligible)
        want = min(sum(credit.values()), CLAIM_CAP)
        self._settled.clear()
        started = time.perf_counter()
        try:
            rows = await self._repo.claim(
                self.queue_id, self._node_id, 0, want, all_no_ack, since=since
            )
        except BaseException:
            self._settled.set()
            raise
        finally:
            self.stats.claimed(time.perf_counter() - started)
            # No await from here to the deliveries: the reservation becomes unacked.
            for c in eligible:
                c.release(credit[id(c)])
        if not rows:
            self._settled.set()
        return credit, want, rows

    async def _drain(self) -> bool:
        """Claim and deliver until the queue is empty (True) or nobody has credit."""
        while not self._stopping:
            if self._unreleased:  # older rows on their way back: a claim would jump them
                return False  # (their release wakes the task)
            self.give_held()
            if self.held:  # the credit went to older rows than the queue's
                self._waiting_since = None
                if await self._claim_ahead():
                    continue
                await self._check_alone()  # another node's consumer gets them back
                return False
            eligible = await self._claimers()
            if not eligible:
                self._waiting_since = None  # zero-TTL messages published now are dropped
                if await self._claim_ahead():
                    continue  # the consumers' next rows are held for them
                return False
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            since = await self._clock.at(self._repo, self._waiting_since)
            all_no_ack = all(c.no_ack for c in eligible)
            arrivals = self._arrivals
            self._drained_at = None
            credit, want, rows = await self._claim(eligible, since, all_no_ack)
            if not rows:
                self._drained_at = arrivals
                await self._check_alone()
                return True
            try:
                returned = await self._hand_out(eligible, credit, rows, all_no_ack)
            finally:
                self._settled.set()
            if len(rows) < want:
                self._drained_at = None if returned else arrivals
                await self._check_alone()
                return True
            self._ahead_short = False  # a full claim: the queue has a backlog
        return False

    # -- claims ahead ----------------------------------------------------------

    def _wants_ahead(self) -> bool:
        """A claim ahead of the consumers' credit may pay: the queue may have a backlog
        (no claim came back short since the last news of arrivals, nor one ahead), it
        holds fewer than half of ``AHEAD_ROWS``, and it may hold rows (see ``hold``;
        ``ahead``: no length limit, which counts held rows as ready)."""
        return (
            self.holds
            and self._ahead is not None
            and not self.single_active
            and not self._paused
            and self._settled.is_set()
            and self._drained_at != self._arrivals
            and not self._ahead_short
            and len(self.held) < AHEAD_ROWS // 2
            and self.held_bytes < HOLD_BYTES // 2
            and self.budget.bytes < self.budget.limit // 2
            and self._holding_allowed()
            and self._alone_now()
            and self._ahead()
        )

    async def _claim_ahead(self) -> bool:
        """If it pays (``_wants_ahead``), claim rows to hold, none of them for credit
        now: the consumers' next rows, handed out from memory as acks free credit.
        True if it came back full. A short one does not mark the queue drained: a
        claim ahead stops before a row with a TTL (it must expire) and within a budget
        of bytes; the claims for credit find out."""
        if not self._wants_ahead():
            return False
        want = min(AHEAD_ROWS - len(self.held), AHEAD_CAP)
        room = min(HOLD_BYTES - self.held_bytes, self.budget.limit - self.budget.bytes)
        self._settled.clear()
        started = time.perf_counter()
        try:
            rows = await self._repo.claim_ahead(self.queue_id, self._node_id, want, room)
            self.stats.claimed(time.perf_counter() - started)
            if rows:
                self.hold(self._with_counts(rows))
        finally:
            self._settled.set()
        if len(rows) < want:
            self._ahead_short = True
            return False
        return True

    def _with_counts(self, rows: list[ClaimedMessage]) -> list[ClaimedMessage]:
        """Quorum queues: x-delivery-count on redeliveries (see ``_hand_out``)."""
        if self.quorum:
            for row in rows:
                if row.delivery_count > 1:
                    row.properties = with_delivery_count(row.properties, row.delivery_count)
        return rows

    def _alone_now(self) -> bool:
        """Consumed on this node only, as read within ``ALONE_RECHECK``. A read older
        than half of that starts the next one in the background: a queue whose rows are
        all handed off or held runs no claim, whose end would read it."""
        now = time.monotonic()
        age = now - self._alone_read
        if age >= ALONE_RECHECK / 2 and self._looking is None and now >= self._look_after:
            self._looking = asyncio.get_running_loop().create_task(self._look_again())
        return self._alone and age < ALONE_RECHECK

    async def _look_again(self) -> None:
        try:
            await self._check_alone(ALONE_RECHECK / 2)
        except Exception as exc:  # noqa: BLE001 - the read goes stale: claims read it
            log.debug("reading the consumers of queue %s failed: %s", self.queue_id, exc)
            self._look_after = time.monotonic() + ALONE_RECHECK / 2  # not again at once
            return
        finally:
            self._looking = None
        if self._wants_ahead():
            self._wake.set()  # alone after all: a backlog's next rows may be claimed

    async def _check_alone(self, every: float = ALONE_RECHECK) -> None:
        """Drained: read again, at most once a second (``every``), whether other nodes
        consume this queue (their consumers must get their turn, so nothing is handed
        over here)."""
        started = time.monotonic()
        if started - self._alone_read >= every:
            heard = self._heard_elsewhere
            alone = not await self._repo.consumed_elsewhere(self.queue_id, self._node_id)
            # A consumer whose NOTIFY came during the read may be missing from it. Until
            # the read is back, the last one stays too old to count.
            self._alone = alone and heard == self._heard_elsewhere
            self._alone_read = started
            if not self._alone:
                self._release_soon()  # their consumers get their turn at the held rows

    def _split(
        self, eligible: list[DeliveryTarget], credit: dict[int, int], rows: list[ClaimedMessage]
    ) -> dict[int, list[ClaimedMessage]]:
        """Rows dealt round-robin within each consumer's credit: {id(c): rows}."""
        shares: dict[int, list[ClaimedMessage]] = {id(c): [] for c in eligible}
        order = eligible[self._next % len(eligible) :] + eligible[: self._next % len(eligible)]
        i = 0
        for row in rows:
            for _ in range(len(order)):
                c = order[i % len(order)]
                i += 1
                if len(shares[id(c)]) < credit[id(c)]:
                    shares[id(c)].append(row)
                    break
        self._next += i
        return shares

    async def _hand_out(
        self,
        eligible: list[DeliveryTarget],
        credit: dict[int, int],
        rows: list[ClaimedMessage],
        all_no_ack: bool,
    ) -> bool:
        """Deliver claimed rows round-robin; give back what a vanished consumer missed
        (True if any went back)."""
        # RabbitMQ's consumers see x-delivery-count from the first redelivery on
        # (basic.get shows it from 0); a first delivery, as a hand-off's, has none.
        self._with_counts(rows)
        shares = self._split(eligible, credit, rows)
        requeue: list[int] = []
        consumed: list[int] = []
        for c in eligible:
            batch = shares[id(c)]
            if not batch:
                continue
            # A consumer cancelled during the claim still gets its share while its
            # channel has it (as on RabbitMQ, before cancel-ok).
            if not c.deliver(batch):
                if not all_no_ack:
                    requeue.extend(m.id for m in batch)
                continue
            if c.no_ack and not all_no_ack:
                consumed.extend(m.id for m in batch)
            self.stats.delivered(
                self.queue_id, len(batch), c.no_ack, sum(m.redelivered for m in batch)
            )
        await self._repo.requeue(requeue, self._node_id)
        await self._repo.delete_messages(consumed, self._node_id)
        return bool(requeue)
