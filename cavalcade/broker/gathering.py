"""When the write batcher waits a moment before a commit, to take more work in it.

Fire-and-forget publishers (Celery's ``delay()``: no confirms) and their consumers'
acks arrive at their own pace, not in answer to commits; at a few hundred a second,
each commit carries one or two of them, and the commit, not the row, is what costs
PostgreSQL and the node their CPU. So when work arrived while the last commit ran (a
stream) and what waits is small, the batcher waits ``wait`` more before the next one.

Never when someone waits for the commit (a confirm, a mandatory publish, a
transaction, the HTTP API): a publisher that sends its next message only once the
last is confirmed would pay the wait on every message. A wait that gathers nothing
doubles the pause before the next one may run (up to ``max_pause``).
"""

from __future__ import annotations

from dataclasses import dataclass

GATHER_WAIT = 0.002  # seconds a commit may wait for more work
GATHER_ITEMS = 32  # publishes and acks: at least this many are worth a commit now
GATHER_MAX_PAUSE = 1.0  # seconds without a wait after waits that gathered nothing


@dataclass(slots=True)
class Gathering:
    """The batcher's wait policy (see the module docstring); times are monotonic."""

    wait: float = GATHER_WAIT
    items: int = GATHER_ITEMS
    max_pause: float = GATHER_MAX_PAUSE
    arrivals: int = 0  # work handed to the batcher, ever
    _pause: float = 0.0
    _until: float = 0.0

    def worth_waiting(self, now: float, streaming: bool, items: int, waited_on: bool) -> bool:
        """Wait before this commit? ``streaming``: work came during the last commit;
        ``items``: what waits; ``waited_on``: a client waits for this commit."""
        return streaming and not waited_on and items < self.items and now >= self._until

    def gathered(self, now: float, seen: int) -> None:
        """A wait ended; ``seen`` is :attr:`arrivals` when it began."""
        if self.arrivals == seen:
            self._pause = min(max(2 * self._pause, self.wait * 2), self.max_pause)
            self._until = now + self._pause
        else:
            self._pause = 0.0
