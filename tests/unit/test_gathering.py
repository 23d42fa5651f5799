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

    def __init__(self, batcher: WriteBatcher) -> None:
        self.batches: list[tuple[list[int], int]] = []
        self.during_first: list[Any] = []
        self.batcher = batcher

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
    commits = Commits(batcher)
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
    return [b for b in commits.batches if b != ([], 0)]  # flush's empty batch


async def test_a_stream_nobody_waits_for_is_gathered() -> None:
    assert await _run("an ack") == [([1], 0), ([2, 3], 0)]


async def test_a_commit_a_client_waits_for_does_not_wait() -> None:
    assert await _run("a confirmed publish") == [([1], 0), ([2], 1), ([3], 0)]
