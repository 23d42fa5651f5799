"""Memory stays bounded while the database is stalled and a client floods empty publishes:
the backlog counts each publish's real cost, so publishers get connection.blocked and are
no longer read long before the node grows without bound.

The stall is real: a transaction of the test holds an exclusive lock on ``messages`` in
the node's own database, so every write batch waits."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pytest
from pamqp import commands, frame, header

from cavalcade.storage.dsn import normalize_dsn

from .conftest import RawClient, parse_url
from .wire import method

pytestmark = pytest.mark.timeout(180)

MAX_PUBLISHES = 3_000_000  # bounded even if the node never blocks


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _flood(c: RawClient) -> tuple[int, float]:
    """Send empty publishes until the node stops reading (or the bound); returns count."""
    one = method(1, commands.Basic.Publish, exchange="", routing_key="flood") + frame.marshal(
        header.ContentHeader(0, 0, commands.Basic.Properties()), 1
    )
    chunk = one * 1000
    sent, started = 0, time.monotonic()
    c.sock.settimeout(3.0)
    try:
        while sent < MAX_PUBLISHES:
            c.sock.sendall(chunk)
            sent += 1000
    except TimeoutError:
        pass
    return sent, time.monotonic() - started


async def test_stalled_database_flood_is_bounded(database_url, start_broker):
    node = start_broker(database_url, memory_high_watermark=0)  # the backlog alone
    c = RawClient(parse_url(node.url), timeout=10)
    c.send_raw(b"AMQP\x00\x00\x09\x01")
    c.expect(commands.Connection.Start)
    c.send(
        commands.Connection.StartOk(
            client_properties={"capabilities": {"connection.blocked": True}},
            mechanism="PLAIN",
            response="\0guest\0guest",
            locale="en_US",
        )
    )
    tune = c.expect(commands.Connection.Tune)
    c.send(
        commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
        )
    )
    c.send(commands.Connection.Open(virtual_host="/"))
    c.expect(commands.Connection.OpenOk)
    c.open_channel(1)
    c.rpc(commands.Queue.Declare(queue="flood"), commands.Queue.DeclareOk)
    lock = await asyncpg.connect(normalize_dsn(database_url))
    tx = lock.transaction()
    await tx.start()
    await lock.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
    before = _rss(node.process.pid)
    try:
        sent, seconds = _flood(c)
        after = _rss(node.process.pid)
        blocked = False
        c.sock.settimeout(5)
        deadline = time.monotonic() + 5
        while not blocked and time.monotonic() < deadline:
            _, value = c.recv(timeout=5)
            blocked = isinstance(value, commands.Connection.Blocked)
        print(
            f"\nstalled database: {sent} empty publishes in {seconds:.1f} s; node RSS "
            f"{before >> 20} -> {after >> 20} MiB; connection.blocked: {blocked}"
        )
        assert blocked
        assert sent < MAX_PUBLISHES
        assert after - before < 256 * 1024 * 1024
    finally:
        await tx.rollback()
        await lock.close()
        c.close()


def test_memory_watermark_blocks_publishers(database_url, start_broker):
    # 20 MB: below any node's resident memory, so the alarm is raised at once
    node = start_broker(database_url, memory_high_watermark=20_000_000)
    c = RawClient(parse_url(node.url), timeout=10)
    c.send_raw(b"AMQP\x00\x00\x09\x01")
    c.expect(commands.Connection.Start)
    c.send(
        commands.Connection.StartOk(
            client_properties={"capabilities": {"connection.blocked": True}},
            mechanism="PLAIN",
            response="\0guest\0guest",
            locale="en_US",
        )
    )
    tune = c.expect(commands.Connection.Tune)
    c.send(commands.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max))
    c.send(commands.Connection.Open(virtual_host="/"))
    c.expect(commands.Connection.OpenOk)
    c.open_channel(1)
    c.send_raw(
        method(1, commands.Basic.Publish, exchange="", routing_key="nowhere")
        + frame.marshal(header.ContentHeader(0, 0, commands.Basic.Properties()), 1)
    )
    c.expect(commands.Connection.Blocked, timeout=10)
    c.close()
    assert "memory alarm" in node.stderr()
