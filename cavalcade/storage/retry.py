"""Wait while the database is away: one retry loop with exponential backoff.

:func:`retry` runs an attempt until it succeeds, pausing between failures the
callers call retryable (``first`` seconds, doubled up to ``cap``). A :class:`Backoff`
gives up (the last failure is raised) when its budget is spent:

- ``wait``: the pauses add up to this many seconds (the time the attempts take is not
  counted): a channel holding a method (protocol/channel.py);
- ``deadline``: no pause may end after this ``time.monotonic()`` moment: a connection's
  login and open, which must close with 320 before the handshake timeout
  (protocol/connection.py);
- neither: for ever, the write batch (broker/group_commit.py).

The broker re-exports this for the protocol (cavalcade.broker.api).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """The pauses between attempts, and when to stop."""

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        wait: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.delay = first
        self.cap = cap
        self.wait = wait
        self.deadline = deadline
        self.waited = 0.0

    def pause(self) -> float | None:
        """The pause before the next attempt; None: the budget is spent, give up."""
        delay = self.delay
        if self.wait is not None and self.waited >= self.wait:
            return None
        if self.deadline is not None and time.monotonic() + delay > self.deadline:
            return None
        self.waited += delay
        self.delay = min(delay * 2, self.cap)
        return delay


def _nothing(_exc: Exception) -> object:
    return None


async def retry(
    attempt: Callable[[], Awaitable[T]],
    retryable: Callable[[Exception], bool],
    backoff: Backoff,
    on_retry: Callable[[Exception], object] = _nothing,
) -> T:
    """``await attempt()`` until it succeeds. A failure is raised unless ``retryable``
    and the backoff still has a pause; ``on_retry`` sees each failure retried."""
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not retryable(exc):
                raise
            pause = backoff.pause()
            if pause is None:
                raise
            on_retry(exc)
            await asyncio.sleep(pause)
