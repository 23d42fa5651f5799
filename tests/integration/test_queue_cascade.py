"""A queue's messages go with it, though ``messages`` has no foreign key (migration 0014):
inserts lock their queues once per statement, and a trigger deletes the messages of
deleted queues, however the queue goes."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from cavalcade.storage import batch
from cavalcade.storage.admin import AdminStore
from cavalcade.storage.repository import Repository

from .rows import queue as _queue
from .rows import rows as _rows


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
        await tx.insert(_rows(qid, 2, body=body))
        deleting = asyncio.create_task(repo.delete_queue(qid))
        await asyncio.sleep(0.3)
        assert not deleting.done()  # waits for this insert's commit
    await deleting
    assert await _count(repo, qid) == 0
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(qid, 2, body=body))
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


async def test_the_cascade_holds_under_any_search_path_and_truncate(repo: Repository) -> None:
    """The triggers run with the broker's schema on their path (an operator's session
    may have another one first) and cover TRUNCATE ... CASCADE as the key did."""
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    schema = await repo.durable_pool.fetchval("SELECT current_schema()")
    qid = await _queue(repo, vhost, "elsewhere")
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(qid, 2))
    async with repo.durable_pool.acquire() as conn, conn.transaction():
        await conn.execute("CREATE TEMP TABLE messages (queue_id bigint) ON COMMIT DROP")  # decoy
        await conn.execute("SET LOCAL search_path = pg_temp, pg_catalog")
        await conn.execute(f'DELETE FROM "{schema}".queues WHERE id = $1', qid)
    assert await _count(repo, qid) == 0
    other = await _queue(repo, vhost, "truncated")
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(other, 2))
    await repo.durable_pool.execute("TRUNCATE queues CASCADE")
    assert await repo.durable_pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_move_into_a_queue_being_deleted_moves_nothing(repo: Repository) -> None:
    """``cavalcade_move_messages`` locks its destination as the broker's inserts do: it
    waits for the delete, then finds no destination, and the source keeps its rows."""
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    src, dst = await _queue(repo, vhost, "mv-src"), await _queue(repo, vhost, "mv-dst")
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(src, 3))
    moving: asyncio.Task[object] | None = None
    async with repo.durable_pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM queues WHERE id = $1", dst)
        moving = asyncio.create_task(
            repo.async_commit_pool.fetchval("SELECT cavalcade_move_messages('mv-src', 'mv-dst')")
        )
        await asyncio.sleep(0.3)
        assert not moving.done()
    with pytest.raises(asyncpg.UndefinedObjectError):
        await moving
    assert await _count(repo, src) == 3


async def test_orphans_are_swept(repo: Repository) -> None:
    """Rows of a queue that is gone (a node of the previous release, a deleter in
    repeatable read) are deleted by the nodes' periodic sweep."""
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    qid = await _queue(repo, vhost, "kept")
    async with repo.write_transaction() as tx:
        await tx.insert(_rows(qid, 2))
    gone = qid + 1_000_000
    await repo.durable_pool.execute(
        "INSERT INTO messages (queue_id, properties, body) VALUES ($1, '', ''), ($1, '', '')", gone
    )
    assert await repo.delete_orphans() == 2
    assert (await _count(repo, gone), await _count(repo, qid)) == (0, 2)


async def test_a_consumer_node_going_starts_the_expiry_clock(repo: Repository) -> None:
    """x-expires counts from the moment the queue lost its consumers, also when they go
    with their node (reaped or shut down), as RabbitMQ counts from the consumer's loss."""
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    await repo.write_alone(
        repo.queue_insert(vhost, "expiring", False, False, None, None, {"x-expires": 30_000})
    )
    q = await repo.find_queue(vhost, "expiring")
    assert q is not None
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    await repo.add_consumer(q.id, node, 1, "c", False, False, 0)
    await repo.durable_pool.execute(
        "UPDATE queues SET last_used_at = now() - interval '1 hour' WHERE id = $1", q.id
    )
    await repo.unregister_node(node)
    assert await repo.expire_queues() == []
    assert await repo.find_queue(vhost, "expiring") is not None
    # The same when an operator requeues a dead node's work by SQL.
    other = uuid.uuid4()
    await repo.register_node(other, "m")
    await repo.add_consumer(q.id, other, 1, "c", False, False, 0)
    await repo.durable_pool.execute(
        "UPDATE queues SET last_used_at = now() - interval '1 hour' WHERE id = $1", q.id
    )
    await repo.durable_pool.execute("SELECT cavalcade_requeue_node($1, true)", other)
    assert await repo.expire_queues() == []


async def test_two_batches_into_one_length_limited_queue_do_not_deadlock(
    repo: Repository,
) -> None:
    """Each insert holds KEY SHARE on the queue; the length check's lock must not wait on
    the other batch's (FOR UPDATE did, both ways)."""
    from cavalcade.storage import queries

    vhost = await repo.find_vhost("/")
    assert vhost is not None
    qid = await _queue(repo, vhost, "limited")
    first_locked = asyncio.Event()

    async def batch_(first: bool) -> None:
        async with repo.durable_pool.acquire() as conn, conn.transaction():
            await batch.insert(conn, _rows(qid, 1))
            if first:
                first_locked.set()
                await asyncio.sleep(0.2)  # the other inserts meanwhile
            else:
                await first_locked.wait()
            await asyncio.wait_for(conn.execute(queries.LOCK_QUEUE, qid), 5)

    await asyncio.wait_for(asyncio.gather(batch_(True), batch_(False)), 10)
    assert await _count(repo, qid) == 2


async def test_the_trigger_functions_serve_queues_only(repo: Repository) -> None:
    """Nobody else may execute them (a trigger of one's own table would run them), and
    attached elsewhere they refuse."""
    for name in ("cavalcade_queues_deleted", "cavalcade_queues_truncated"):
        public = await repo.durable_pool.fetchval(
            "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a"
            " WHERE p.proname = $1 AND a.grantee = 0",
            name,
        )
        acl = await repo.durable_pool.fetchval(
            "SELECT proacl FROM pg_proc WHERE proname = $1", name
        )
        assert acl is not None and public == 0, name  # NULL proacl is PUBLIC's default grant
    async with repo.durable_pool.acquire() as conn:
        await conn.execute("CREATE TEMP TABLE decoy (id bigint)")
        await conn.execute(
            "CREATE TRIGGER decoy_truncated AFTER TRUNCATE ON decoy"
            " FOR EACH STATEMENT EXECUTE FUNCTION cavalcade_queues_truncated()"
        )
        with pytest.raises(asyncpg.RaiseError, match="trigger of queues only"):
            await conn.execute("TRUNCATE decoy")
        await conn.execute("DROP TABLE decoy")


async def test_a_length_check_counts_what_the_batch_before_it_committed(
    repo: Repository,
) -> None:
    """Two batches into one length-limited queue: the second waits for the first's lock,
    then counts the first's rows (counted in the locking statement, it saw the queue as
    it was before the wait, and reject-publish could overshoot x-max-length)."""
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    qid = await _queue(repo, vhost, "counted")
    counting: asyncio.Task[dict[int, tuple[int, int]]] | None = None

    async def second() -> dict[int, tuple[int, int]]:
        async with repo.write_transaction() as tx:
            return await tx.ready_lengths([qid])

    async with repo.write_transaction() as tx:
        assert await tx.ready_lengths([qid]) == {qid: (0, 0)}
        await tx.insert(_rows(qid, 1, body=b"abc"))
        counting = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not counting.done()  # the length checks take turns
    assert await counting == {qid: (1, 3)}
