"""The channel task gives the event loop a turn while it drains a long inbox.

A socket read can queue hundreds of publishes at once; ``Queue.get`` never suspends
while items are waiting, so without an explicit yield the channel would hold the loop
(heartbeats, the write batcher, every other connection) until its inbox is empty.
The broker and connection here are small stand-ins: no socket, no database.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from pamqp import commands

from cavalcade.protocol.channel import Channel

N = 3000


class _Broker:
    def __init__(self) -> None:
        self.publishing_blocked = False
        self.published = 0
        self._id = 0

    def next_id(self) -> int:
        self._id += 1
        return self._id

    def check_publish(self, _s: Any, _exchange: str) -> None:
        return None

    async def check_exchange(self, _s: Any, _exchange: str) -> None:
        return None

    def check_exchange_cached(self, _s: Any, _exchange: str) -> bool:
        return True

    @staticmethod
    def check_message(_props: Any) -> None:
        return None

    def publish(self, *_a: Any) -> asyncio.Future[int]:
        # Slow routing (e.g. many bindings): about 0.1 ms of CPU per publish.
        end = time.perf_counter() + 0.0001
        while time.perf_counter() < end:
            pass
        self.published += 1
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(1)
        return fut

    @staticmethod
    def database_unavailable(_exc: BaseException) -> bool:
        return False


class _Conn:
    def __init__(self, broker: _Broker) -> None:
        self.broker = broker
        self.session = SimpleNamespace(user="guest")
        self.publisher = True
        self.settings = SimpleNamespace(max_message_size=1 << 20)
        self.database_wait = 0.0
        self.failures: list[BaseException] = []

    def pause_reading(self, _n: int) -> None:
        pass

    def resume_reading(self, _n: int) -> None:
        pass

    def fail(self, exc: BaseException, _ch: Any) -> None:
        self.failures.append(exc)


async def test_a_long_inbox_does_not_hold_the_event_loop() -> None:
    broker = _Broker()
    conn = _Conn(broker)
    ch = Channel(conn, 1)  # type: ignore[arg-type]
    publish = commands.Basic.Publish(exchange="", routing_key="q")
    for _ in range(N):
        ch._enqueue(publish, (b"\x00\x00", b"x"))
    seen_while_draining: list[int] = []

    async def other_work() -> None:
        # Another task of the node (a heartbeat, the batcher): it must get turns
        # while the channel is still working through its inbox.
        while broker.published < N:
            seen_while_draining.append(broker.published)
            await asyncio.sleep(0)

    await asyncio.wait_for(other_work(), 60)
    ch.stop()
    assert not conn.failures
    assert broker.published == N
    assert any(0 < p < N for p in seen_while_draining), seen_while_draining[:5]


async def test_publishes_handed_over_at_once_stop_after_a_slice() -> None:
    """Publishes skip the inbox while the channel task waits, for at most one SLICE:
    one large read of them does not hold the event loop for all of them."""
    broker = _Broker()
    conn = _Conn(broker)
    ch = Channel(conn, 1)  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)  # the task now waits on its empty inbox
    publish = commands.Basic.Publish(exchange="", routing_key="q")
    for _ in range(N):  # one read's worth, synchronously (data_received)
        ch._enqueue(publish, (b"\x00\x00", b"x"))
    at_once = broker.published
    assert 0 < at_once < N  # some at once, the rest queued once the slice was spent
    await asyncio.wait_for(until_published(broker, N), 60)
    ch.stop()
    assert not conn.failures


async def until_published(broker: _Broker, n: int) -> None:
    while broker.published < n:
        await asyncio.sleep(0)
