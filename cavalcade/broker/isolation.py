"""A refused row never fails anyone else's work.

When the database refuses a write batch for its data (SQLSTATE class 22 or 23), the batch
is written again in parts: first the acks, requeues and rejects alone, then the publishes,
halved until the parts that still fail are single publishes. Those are refused (the
publisher gets ``basic.nack``); everything else commits, in the original order. A part
that fails because the database is away (or out of a resource) is retried as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cavalcade.storage.sqlstate import is_data_error, is_resource_alarm, sqlstate

from .alarms import ResourceAlarm

log = logging.getLogger(__name__)

Spans = list[tuple[int, int, "asyncio.Future[int]"]]
Commit = Callable[..., Awaitable[tuple[Spans, set[int], set[int]]]]
Settlements = tuple[list[int], list[int], list[int], set[int]]


async def _retrying(
    commit: Commit, alarm: ResourceAlarm, *args: Any
) -> tuple[Spans, set[int], set[int]]:
    """``commit(*args)``, retried while the database is away; data errors are raised."""
    delay = 0.05
    while True:
        try:
            result = await commit(*args)
            alarm.clear()
            return result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_data_error(exc):
                raise
            if is_resource_alarm(exc):
                alarm.raised(exc)
            else:
                log.warning("write batch part failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def isolate(
    commit: Commit,
    first: BaseException,
    ops: Sequence[Any],
    settlements: Settlements,
    results: list[tuple[Spans, set[int]]],
    alarm: ResourceAlarm,
) -> set[int]:
    """Write ``ops`` and ``settlements`` in parts; refused single publishes are left out
    of ``results``. Returns the queues that gained messages."""
    log.error(
        "the database refused a write batch of %d publishes (SQLSTATE %s: %s); writing it in"
        " parts so that only the refused publishes fail",
        len(ops),
        sqlstate(first),
        first,
    )
    touched: set[int] = set()
    acks, requeues, rejects, wake = settlements
    if acks or requeues or rejects or wake:
        try:
            _, _, t = await _retrying(commit, alarm, [], acks, requeues, rejects, wake)
            touched |= t
        except Exception as exc:  # noqa: BLE001
            log.error("the database refused this node's acks and requeues: %s", exc)

    async def write(part: Sequence[Any]) -> None:
        if not part:
            return
        try:
            spans, refused, t = await _retrying(commit, alarm, list(part), [], [], [], set())
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(part) == 1:
                log.warning("publish refused by the database (SQLSTATE %s: %s)", sqlstate(exc), exc)
                return
            mid = len(part) // 2
            await write(part[:mid])
            await write(part[mid:])
            return
        results.append((spans, refused))
        touched.update(t)

    await write(ops)
    return touched
