"""Database errors reach clients only as RabbitMQ's answers, never as database text; a full
database disk blocks publishers (connection.blocked) until it clears by itself.

The errors are real: triggers on this test's own database raise the SQLSTATE in question
(foreign key violation, untranslatable character, disk full), on the broker's real paths."""

from __future__ import annotations

import asyncio
import time

import aiormq
import aiormq.exceptions
import asyncpg
import pytest
from pamqp import commands

from cavalcade.storage.dsn import normalize_dsn

pytestmark = pytest.mark.timeout(120)

_RAISE = """
CREATE TABLE test_fault (state text PRIMARY KEY);
CREATE FUNCTION test_disk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM test_fault WHERE state = '53100') THEN
    RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
      USING ERRCODE = '53100';
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION test_bind() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.routing_key = 'race' THEN
    RAISE EXCEPTION 'insert or update on table "bindings" violates foreign key constraint'
      USING ERRCODE = '23503';
  ELSIF NEW.routing_key = 'bad' THEN
    RAISE EXCEPTION 'character with byte sequence 0xe2 0x82 0xac has no equivalent'
      USING ERRCODE = '22P05';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_disk BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION test_disk();
CREATE TRIGGER test_disk BEFORE INSERT ON queues FOR EACH ROW EXECUTE FUNCTION test_disk();
CREATE TRIGGER test_bind BEFORE INSERT ON bindings FOR EACH ROW EXECUTE FUNCTION test_bind();
"""


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(normalize_dsn(url))
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


async def test_bind_refused_by_the_database_gets_rabbitmq_codes(database_url, start_broker):
    await _sql(database_url, _RAISE)
    node = start_broker(database_url)
    conn = await aiormq.connect(node.url)
    try:
        for key, name in (("race", "NOT_FOUND - "), ("bad", "PRECONDITION_FAILED - ")):
            ch = await conn.channel()
            await ch.queue_declare("q-" + key)
            with pytest.raises(aiormq.exceptions.ChannelClosed) as ei:
                await ch.queue_bind("q-" + key, "amq.direct", routing_key=key)
            text = str(ei.value.args[0])
            assert text.startswith(name), ei.value.args
            for leak in ("constraint", "byte sequence", "Error", "bindings"):
                assert leak not in text
        ch = await conn.channel()  # the connection lives on
        await ch.queue_bind("q-race", "amq.direct", routing_key="fine")
    finally:
        await conn.close()
    assert "violates foreign key" in node.stderr()  # the database's text: in the log


def _blocked(conn: aiormq.Connection) -> bool:
    """aiormq clears this event on connection.blocked and sets it on unblocked."""
    return not conn._Connection__connection_unblocked.is_set()  # type: ignore[attr-defined]


async def _until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_disk_full_blocks_publishers_and_clears_by_itself(database_url, start_broker):
    await _sql(database_url, _RAISE)
    node = start_broker(database_url)
    publisher = await aiormq.connect(node.url)
    other = await aiormq.connect(node.url)
    try:
        ch = await publisher.channel()
        och = await other.channel()
        await ch.queue_declare("qd")
        await ch.basic_publish(b"before", routing_key="qd")
        await _sql(database_url, "INSERT INTO test_fault VALUES ('53100')")
        confirm = asyncio.ensure_future(ch.basic_publish(b"during", routing_key="qd"))
        assert await _until(lambda: _blocked(publisher)), "no connection.blocked"
        # channel methods that need a write are held, not failed with database text
        declared = asyncio.ensure_future(och.queue_declare("qnew"))
        await asyncio.sleep(1.0)
        assert not confirm.done() and not declared.done()
        await _sql(database_url, "DELETE FROM test_fault")
        assert isinstance(await asyncio.wait_for(confirm, 20), commands.Basic.Ack)
        assert await _until(lambda: not _blocked(publisher)), "no connection.unblocked"
        await asyncio.wait_for(declared, 20)
        assert (await och.queue_declare("qd", passive=True)).message_count == 2
    finally:
        await publisher.close()
        await other.close()
    log = node.stderr()
    assert log.count("database resource alarm: disk full") == 1, log[-3000:]
    assert "alarm cleared" in log
