"""A queue's messages go with it, though ``messages`` has no foreign key (migration 0014):
inserts lock their queues once per statement, and a trigger deletes the messages of
deleted queues, however the queue goes."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cavalcade.storage import batch
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.repository import NewMessage, Repository


def _rows(qid: int, n: int, body: bytes = b"x") -> list[NewMessage]:
    return [
        NewMessage(qid, 0, True, "", "k", b"\x00\x00", None, None, None, None, body)
        for _ in range(n)
    ]


async def _queue(repo: Repository, vhost: int, name: str) -> int:
    await repo.write_alone(repo.queue_insert(vhost, name, True, False, None, None, {}))
    q = await repo.find_queue(vhost, name)
    assert q is not None
    return q.id


async def _count(repo: Repository, qid: int) -> int:
    n = await repo.durable_pool.fetchval("SELECT count(*) FROM messages WHERE queue_id = $1", qid)
    return int(n)


@pytest.fixture
async def repo(database_url: str):  # type: ignore[no-untyped-def]
    r = await Repository.connect(database_url, size=4)
    yield r
    await r.close()


async def test_messages_go_with_their_queue_however_it_goes(repo: Repository) -> None:
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    by_broker, by_sql, kept = [await _queue(repo, vhost, f"cascade-{n}") for n in "abc"]
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(by_broker, 3) + _rows(by_sql, 2) + _rows(kept, 1))
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    await repo.claim(by_sql, node, 1, 1, no_ack=False)  # an unacked one goes too
    assert await repo.delete_queue(by_broker) == 3
    await repo.durable_pool.execute("DELETE FROM queues WHERE id = $1", by_sql)  # repair SQL
    assert (await _count(repo, by_broker), await _count(repo, by_sql)) == (0, 0)
    assert await _count(repo, kept) == 1


async def test_a_vhost_takes_its_messages(repo: Repository) -> None:
    admin = AdminStore(repo.durable_pool)
    name = f"cascade-{uuid.uuid4().hex[:8]}"
    assert await admin.add_vhost(name, "", "")
    vhost = await repo.find_vhost(name)
    assert vhost is not None
    qid = await _queue(repo, vhost, "q")
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(qid, 4))
    assert await admin.delete_vhost(name, "test")
    assert await _count(repo, qid) == 0


@pytest.mark.parametrize("large", [False, True])
async def test_a_queue_deleted_during_an_insert_takes_its_rows(
    repo: Repository, large: bool
) -> None:
    """The insert holds its queue's row (as the foreign key's check did): the delete
    waits for the commit, then deletes what was inserted. An insert after the delete
    inserts nothing for it."""
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    qid = await _queue(repo, vhost, f"racing-{large}")
    body = b"b" * (batch.LARGE_BODY if large else 1)
    deleting: asyncio.Task[int] | None = None
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(qid, 2, body))
        deleting = asyncio.create_task(repo.delete_queue(qid))
        await asyncio.sleep(0.3)
        assert not deleting.done()  # waits for this insert's commit
    await deleting
    assert await _count(repo, qid) == 0
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(qid, 2, body))
    assert await _count(repo, qid) == 0  # no rows for a queue that is gone


async def test_a_plain_batch_into_a_deleted_queue_writes_only_the_live_ones(
    repo: Repository,
) -> None:
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    gone, live = await _queue(repo, vhost, "plain-gone"), await _queue(repo, vhost, "plain-live")
    version = await repo.durable_pool.fetchval(
        "SELECT topology_version FROM vhosts WHERE id = $1", vhost
    )
    await repo.delete_queue(gone)
    rows = _rows(gone, 2) + _rows(live, 3)
    written = await batch.write_plain(repo.durable_pool, rows, [], {vhost: version}, None, False)
    assert written == []
    assert (await _count(repo, gone), await _count(repo, live)) == (0, 3)
