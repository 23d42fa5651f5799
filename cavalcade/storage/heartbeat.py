"""The node heartbeat from a thread of its own, so a stalled event loop cannot starve it.

The node's event loop may be busy for seconds at a time (a huge message, a burst of
routing work, a slow garbage collection). Its heartbeat must not wait for it, or the
other nodes declare a live node dead and redeliver what it holds. This thread runs
its own event loop on a dedicated connection and refreshes ``nodes.heartbeat_at``
every interval, while the node's loop has shown progress within ``stall_limit``
seconds: a node whose loop is stuck for good still stops heartbeating and is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid

import asyncpg

log = logging.getLogger(__name__)

STALL_LIMIT = 60.0  # seconds without progress of the node's loop before we stop beating


class HeartbeatThread:
    """Refreshes one node's heartbeat every ``interval`` seconds from a daemon thread."""

    def __init__(
        self,
        dsn: str,
        node_id: uuid.UUID,
        interval: float,
        stall_limit: float = STALL_LIMIT,
    ) -> None:
        self.dsn = dsn
        self.node_id = node_id
        self.interval = interval
        self.stall_limit = stall_limit
        self.beats = 0  # heartbeats written (for tests and logs)
        self._node_loop: asyncio.AbstractEventLoop | None = None
        self._last_tick = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating; call from the node's event loop (whose progress is watched)."""
        self._node_loop = asyncio.get_running_loop()
        self._last_tick = time.monotonic()
        self._thread = threading.Thread(
            target=self._main, name=f"heartbeat-{self.node_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5.0)

    def _tick(self) -> None:
        """Runs on the node's loop: it is making progress."""
        self._last_tick = time.monotonic()

    def _main(self) -> None:
        try:
            asyncio.run(self._beat())
        except Exception as exc:  # noqa: BLE001 - the thread must never raise
            log.warning("heartbeat thread ended: %s", exc)

    async def _beat(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while not self._stop.wait(self.interval):
                loop = self._node_loop
                if loop is not None and not loop.is_closed():
                    with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                        loop.call_soon_threadsafe(self._tick)
                if time.monotonic() - self._last_tick > self.stall_limit:
                    continue  # the node is stuck: let the others reap it
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.dsn, timeout=5, statement_cache_size=0)
                    status = await asyncio.wait_for(
                        conn.execute(
                            "UPDATE nodes SET heartbeat_at = now() WHERE id = $1", self.node_id
                        ),
                        5,
                    )
                except Exception as exc:  # noqa: BLE001 - the database may be away
                    log.debug("heartbeat thread: %s", exc)
                    if conn is not None:
                        conn.terminate()
                    conn = None
                    continue
                if status == "UPDATE 0":
                    return  # declared dead: the node's own loop notices and fences itself
                self.beats += 1
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
