"""Flow control of one socket: reading paused for reasons, writing paused by the transport.

Reading stops while any reason holds it (a channel whose inbox is full, or BLOCKED: the
node's publish backlog is full) and resumes when the last reason is gone. Writing is
paused by the transport's buffer limits; ``drain`` waits until it may go on.
"""

from __future__ import annotations

import asyncio
from typing import Any

BLOCKED = -1  # the reason while the node's publish backlog is full
SLICED = -2  # the reason while frames of the last read wait for their turn
WRITE_HIGH = 4 * 1024 * 1024
WRITE_LOW = 1024 * 1024


class FlowControl:
    """Read pause/resume on the transport, and write back-pressure."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._paused_by: set[int] = set()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False  # the connection is gone: reading never resumes
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)

    # -- reading --------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        """Reading is held because the node's publish backlog is full."""
        return BLOCKED in self._paused_by

    @property
    def reading_paused(self) -> bool:
        return bool(self._paused_by)

    def pause_reading(self, reason: int) -> None:
        """Stop reading the socket; ``reason`` is a channel number, or BLOCKED."""
        if not self._paused_by:
            self._transport.pause_reading()
        self._paused_by.add(reason)

    def resume_reading(self, reason: int) -> bool:
        """Drop ``reason``; True if that resumed reading."""
        self._paused_by.discard(reason)
        if self._paused_by or self.closed:
            return False
        self._transport.resume_reading()
        return True

    # -- writing --------------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return not self._writable.is_set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        """Wait until the transport takes writes again."""
        await self._writable.wait()
