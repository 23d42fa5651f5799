"""A publish the database refuses fails only itself: other clients' publishes, acks and
requeues in the same write batch commit (the batch is written again in parts).

The refusal is real: a CHECK constraint on this test's own database refuses rows with the
routing key ``poison`` (SQLSTATE 23514), exactly as any data error of PostgreSQL would."""

from __future__ import annotations

import asyncio

import aiormq
import aiormq.exceptions
import asyncpg
import pytest
from pamqp import commands

from cavalcade.storage.dsn import normalize_dsn

pytestmark = pytest.mark.timeout(180)

PUBLISHES = 3000
ACKED = 300
POISON = 20


async def _sql(url: str, statement: str) -> None:
    conn = await asyncpg.connect(normalize_dsn(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _count(url: str, queue: str) -> int:
    """Rows stored for ``queue`` (declare-ok's count is an estimate above 2,000)."""
    conn = await asyncpg.connect(normalize_dsn(url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM messages m JOIN queues q ON q.id = m.queue_id"
                " WHERE q.name = $1",
                queue,
            )
        )
    finally:
        await conn.close()


async def test_poison_publish_fails_only_itself(database_url, start_broker):
    await _sql(
        database_url,
        "ALTER TABLE messages ADD CONSTRAINT test_poison CHECK (routing_key <> 'poison')",
    )
    node = start_broker(database_url)
    publisher = await aiormq.connect(node.url)
    consumer = await aiormq.connect(node.url)
    poisoner = await aiormq.connect(node.url)
    try:
        pch, cch, xch = (
            await publisher.channel(),
            await consumer.channel(),
            await poisoner.channel(),
        )
        await pch.queue_declare("qa")
        await cch.queue_declare("qb")
        await xch.queue_declare("qp")
        await xch.queue_bind("qp", "amq.direct", routing_key="poison")
        for i in range(ACKED):
            await pch.basic_publish(b"b%d" % i, routing_key="qb")

        acked = 0
        done = asyncio.Event()

        async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
            nonlocal acked
            await cch.basic_ack(msg.delivery_tag)
            acked += 1
            if acked == ACKED:
                done.set()

        await cch.basic_qos(prefetch_count=50)

        async def publish_all() -> list[object]:
            return await asyncio.gather(
                *(pch.basic_publish(b"a%d" % i, routing_key="qa") for i in range(PUBLISHES)),
                return_exceptions=True,
            )

        async def poison_all() -> list[object]:
            out: list[object] = []
            for _ in range(POISON):
                await asyncio.sleep(0.005)
                try:
                    out.append(
                        await xch.basic_publish(b"p", exchange="amq.direct", routing_key="poison")
                    )
                except aiormq.exceptions.DeliveryError as exc:
                    out.append(exc)
            return out

        await cch.basic_consume("qb", on_message, no_ack=False)
        results, poisoned = await asyncio.gather(publish_all(), poison_all())
        await asyncio.wait_for(done.wait(), 60)

        confirms = [r for r in results if isinstance(r, commands.Basic.Ack)]
        assert len(confirms) == PUBLISHES, {type(r).__name__ for r in results}
        assert all(isinstance(r, aiormq.exceptions.DeliveryError) for r in poisoned)
        assert len(poisoned) == POISON
        # every consumer ack was applied: nothing comes back when the consumer leaves
        await consumer.close()
        assert await _count(database_url, "qb") == 0
        assert await _count(database_url, "qa") == PUBLISHES
        assert await _count(database_url, "qp") == 0
        # the channels of the innocent stay open and usable
        assert (await pch.basic_publish(b"after", routing_key="qa")) is not None
    finally:
        for c in (publisher, consumer, poisoner):
            if not c.is_closed:
                await c.close()
