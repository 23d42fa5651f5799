"""The write batcher's wait before a commit (broker/gathering.py): under a stream of
work nobody waits for, the next commit waits a moment and takes what comes meanwhile;
a commit someone waits for (a confirm) never waits; a wait that gathers nothing
pauses the waits, longer each time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from cavalcade.broker.gathering import Gathering
from cavalcade.broker.group_commit import PendingPublish, WriteBatcher
from cavalcade.domain.properties import parse_properties

from .fakes import until


def test_waits_only_in_a_stream_of_small_unwaited_batches() -> None:
    g = Gathering(wait=0.002, items=32)
    assert g.worth_waiting(0.0, streaming=True, items=3, waited_on=False)
    assert not g.worth_waiting(0.0, streaming=False, items=3, waited_on=False)
    assert not g.worth_waiting(0.0, streaming=True, items=32, waited_on=False)
    assert not g.worth_waiting(0.0, streaming=True, items=3, waited_on=True)


def test_a_wait_that_gathers_nothing_pauses_the_next_ones_longer_each_time() -> None:
    g = Gathering(wait=0.002, items=32, max_pause=0.05)
    g.gathered(10.0, g.arrivals)  # nothing came
    assert not g.worth_waiting(10.003, True, 1, False)
    assert g.worth_waiting(10.005, True, 1, False)  # paused 2 * wait
    g.gathered(10.005, g.arrivals)
    assert not g.worth_waiting(10.012, True, 1, False)
    assert g.worth_waiting(10.014, True, 1, False)  # twice as long
    for _ in range(10):
        g.gathered(20.0, g.arrivals)
    assert g.worth_waiting(20.05, True, 1, False)  # never past max_pause
    seen = g.arrivals
    g.arrivals += 1
    g.gathered(30.0, seen)  # something came: no pause
    assert g.worth_waiting(30.0, True, 1, False)


class Commits:
    """The batcher's transactions, as the acks and publishes each one took."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[int], int]] = []
        self.during_first: list[Any] = []

    async def __call__(self, ops: list[Any], acks: list[int], *_rest: Any) -> Any:
        self.batches.append((list(acks), len(ops)))
        if len(self.batches) == 1:
            for step in self.during_first:
                step()
        return [(0, 0, fut) for _work, fut, _size in ops], set(), set()


def _publish(waited: bool) -> PendingPublish:
    return PendingPublish(
        cast(Any, None), "", "q", parse_properties(b"\x00\x00"), b"x", waited=waited
    )


async def _run(first_commit_brings: str) -> list[tuple[list[int], int]]:
    batcher = WriteBatcher(cast(Any, None), uuid.uuid4(), lambda _queues: None)
    batcher.gathering = Gathering(wait=0.05, items=32)
    commits = Commits()
    batcher._commit = commits  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    # While the first commit runs, an ack (and perhaps a confirmed publish) arrives; a
    # second ack comes halfway through the wait, long before it ends.
    commits.during_first.append(lambda: batcher.ack([2]))
    if first_commit_brings == "a confirmed publish":
        commits.during_first.append(lambda: batcher.submit(_publish(waited=True)))
    commits.during_first.append(lambda: loop.call_later(0.025, batcher.ack, [3]))
    batcher.start()
    try:
        batcher.ack([1])
        await asyncio.sleep(0.2)
        await batcher.flush()
    finally:
        await batcher.stop()
    return commits.batches


async def test_a_stream_nobody_waits_for_is_gathered() -> None:
    assert await _run("an ack") == [([1], 0), ([2, 3], 0)]


async def test_a_commit_a_client_waits_for_does_not_wait() -> None:
    assert await _run("a confirmed publish") == [([1], 0), ([2], 1), ([3], 0)]


async def _in_a_gather() -> tuple[WriteBatcher, Commits]:
    """A batcher waiting to gather (an ack came during its first commit) for an hour:
    only :meth:`WriteBatcher.hurry` ends that wait within a test."""
    batcher = WriteBatcher(cast(Any, None), uuid.uuid4(), lambda _queues: None)
    batcher.gathering = Gathering(wait=3600.0, items=32)
    commits = Commits()
    batcher._commit = commits  # type: ignore[method-assign]
    commits.during_first.append(lambda: batcher.ack([2]))
    batcher.start()
    batcher.ack([1])
    await until(lambda: batcher._hurry is not None)
    return batcher, commits


async def test_a_confirmed_publish_that_comes_during_the_wait_ends_it() -> None:
    batcher, commits = await _in_a_gather()
    unwaited = batcher.submit(_publish(waited=False))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not unwaited.done()  # a publish nobody waits for is gathered
    confirmed = batcher.submit(_publish(waited=True))
    await until(confirmed.done)
    assert commits.batches[1] == ([2], 2)
    await batcher.stop()


async def test_a_flush_during_the_wait_ends_it() -> None:
    batcher, _commits = await _in_a_gather()
    flushed = asyncio.ensure_future(batcher.flush())  # basic.get, purge, tx.commit, ...
    await until(flushed.done)
    await batcher.stop()


async def test_requeues_end_the_wait_and_are_never_gathered() -> None:
    batcher, commits = await _in_a_gather()
    batcher.requeue([(7, 10)])  # the queue hands out nothing it holds until it is back
    await until(lambda: len(commits.batches) == 2)
    assert not batcher.gathering.worth_waiting(0.0, True, 1, waited_on=True)
    await batcher.stop()


async def test_hurry_ends_the_wait_for_an_earlier_unwaited_publish() -> None:
    batcher, _commits = await _in_a_gather()
    earlier = batcher.submit(_publish(waited=False))
    batcher.hurry()  # the channel's purge now waits for it (before_synchronous)
    await until(earlier.done)
    await batcher.stop()
