"""The one-statement write batch (``Repository.write_plain``) on a real PostgreSQL:
publishes and acks commit together, in order, with their NOTIFY; or, if the vhost's
topology moved since the batch was routed, nothing at all."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from cavalcade.storage.notify import WAKE_CHANNEL
from cavalcade.storage.repository import NewMessage, Repository


def _row(qid: int, body: bytes) -> NewMessage:
    return NewMessage(qid, 0, True, "", "plain", b"\x00\x00", None, None, None, None, body)


async def _setup(database_url: str, name: str) -> tuple[Repository, int, int, int]:
    """A repository, the default vhost's id and topology version, and a new queue."""
    repo = await Repository.connect(database_url, size=4)
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    await repo.write_alone(repo.queue_insert(vhost, name, True, False, None, None, {}))
    q = await repo.find_queue(vhost, name)
    assert q is not None
    version = (await repo.topology_versions([vhost]))[vhost]
    return repo, vhost, version, q.id


async def test_publishes_and_acks_commit_in_one_statement(database_url: str) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    repo, vhost, version, qid = await _setup(database_url, name)
    node = uuid.uuid4()
    await repo.register_node(node, "plain")
    listener = await asyncpg.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(WAKE_CHANNEL, lambda *a: heard.put_nowait(a[3]))
    try:
        first = [_row(qid, b"%d" % i) for i in range(5)]
        assert await repo.write_plain(first, [], {vhost: version}, node, durable=True) is not None
        assert await asyncio.wait_for(heard.get(), 5) == f"{node}:{qid}"
        claimed = await repo.claim(qid, node, 1, 2, no_ack=False)
        assert [m.body for m in claimed] == [b"0", b"1"]  # FIFO: ids in batch order

        more = [_row(qid, b"%d" % i) for i in range(5, 8)]
        acks = [m.id for m in claimed]
        assert await repo.write_plain(more, acks, {vhost: version}, node, durable=False) is not None
        assert await repo.ready_count(qid) == 6  # 3 left of the first five, 3 new
        rest = await repo.claim(qid, node, 1, 10, no_ack=False)
        assert [m.body for m in rest] == [b"%d" % i for i in range(2, 8)]
        assert not set(acks) & {m.id for m in rest}

        # acks alone: no publishes, no vhost to check, no NOTIFY
        assert await repo.write_plain([], [m.id for m in rest], {}, node, durable=False) is not None
        left = await repo.durable_pool.fetchval(
            "SELECT count(*) FROM messages WHERE queue_id = $1", qid
        )
        assert left == 0
    finally:
        await listener.close()
        await repo.close()


async def test_a_moved_topology_writes_nothing(database_url: str) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    repo, vhost, version, qid = await _setup(database_url, name)
    node = uuid.uuid4()
    await repo.register_node(node, "plain")
    try:
        assert (
            await repo.write_plain([_row(qid, b"a")], [], {vhost: version}, node, True) is not None
        )
        held = await repo.claim(qid, node, 1, 1, no_ack=False)
        await repo.bump_topology(vhost)  # another node bound or deleted something

        stale = {vhost: version}
        assert await repo.write_plain([_row(qid, b"b")], [held[0].id], stale, node, True) is None
        assert await repo.ready_count(qid) == 0  # "b" not inserted
        still = await repo.durable_pool.fetchval(
            "SELECT owner_node FROM messages WHERE id = $1", held[0].id
        )
        assert still == node  # the ack was not applied either

        fresh = await repo.topology_versions([vhost])
        assert (
            await repo.write_plain([_row(qid, b"b")], [held[0].id], fresh, node, True) is not None
        )
        got = await repo.claim(qid, node, 1, 5, no_ack=False)
        assert [m.body for m in got] == [b"b"]
    finally:
        await repo.close()


async def test_one_message_over_the_backlog_limit_does_not_block(database_url: str) -> None:
    """A single publish larger than the whole backlog limit is written without blocking
    publishers; a second one behind it is a backlog, and blocks until both are in."""
    from cavalcade.broker.group_commit import WriteBatcher

    name = f"plain-{uuid.uuid4().hex[:8]}"
    repo, _vhost, _version, qid = await _setup(database_url, name)
    node = uuid.uuid4()
    await repo.register_node(node, "plain")
    changes: list[bool] = []
    batcher = WriteBatcher(repo, node, lambda _queues: None, backlog_limit=10_000)
    batcher.on_blocked = changes.append
    batcher.start()
    try:
        await batcher.publish([_row(qid, b"x" * 50_000)])
        assert changes == [] and not batcher.blocked

        pending = [batcher.publish([_row(qid, b"y" * 50_000)]) for _ in range(2)]
        assert batcher.blocked
        await asyncio.gather(*pending)
        assert changes == [True, False] and not batcher.blocked
        assert await repo.ready_count(qid) == 3
    finally:
        await batcher.stop()
        await repo.close()


async def test_constant_and_varying_columns_round_trip(database_url: str) -> None:
    """Columns the same in every row travel as one default, the others as arrays: the
    stored rows are the same either way, NULLs included."""
    from cavalcade.storage.batch import columns

    name = f"plain-{uuid.uuid4().hex[:8]}"
    repo, vhost, version, qid = await _setup(database_url, name)
    node = uuid.uuid4()
    await repo.register_node(node, "plain")
    rows = [
        NewMessage(qid, 0, True, "ex", "rk", b"\x00\x00", None, "id-1", None, None, b"a"),
        NewMessage(qid, 0, True, "ex", "rk", b"\x00\x00", None, None, "c", None, b"b", 60_000),
        NewMessage(qid, 0, True, "ex", "rk", b"\x00\x00", None, "id-3", "c", None, b"c"),
    ]
    params = columns(rows)
    arrays, defaults = params[:13], params[13:]
    assert arrays[0] == [] and defaults[0] == [qid]  # one queue: a default
    assert arrays[3] == [] and defaults[3] == ["ex"]
    assert arrays[6] == [] and defaults[6] == [None]  # all NULL
    assert arrays[7] == ["id-1", None, "id-3"]  # varies: whole, NULL kept
    assert arrays[10] == [b"a", b"b", b"c"]  # the body always goes whole
    try:
        assert await repo.write_plain(rows, [], {vhost: version}, node, durable=True) is not None
        got = await repo.durable_pool.fetch(
            "SELECT exchange, routing_key, message_id, correlation_id, body,"
            " expires_at IS NOT NULL AS ttl FROM messages WHERE queue_id = $1 ORDER BY id",
            qid,
        )
        assert [tuple(r) for r in got] == [
            ("ex", "rk", "id-1", None, b"a", False),
            ("ex", "rk", None, "c", b"b", True),
            ("ex", "rk", "id-3", "c", b"c", False),
        ]
    finally:
        await repo.close()


async def test_names_with_nul_are_stored_once_escaped(database_url: str) -> None:
    """An exchange or routing key holding NUL or the escape character reads back as
    published, whether it travels as a default (one row) or in an array (rows differ)."""
    name = f"plain-{uuid.uuid4().hex[:8]}"
    repo, vhost, version, qid = await _setup(database_url, name)
    node = uuid.uuid4()
    await repo.register_node(node, "plain")
    odd = ["a\x00b", "\U0010ffff0", "plain"]

    def row(key: str) -> NewMessage:
        return NewMessage(qid, 0, True, key, key, b"\x00\x00", None, None, None, None, b"x")

    try:
        for batch in ([row(odd[0])], [row(odd[1])], [row(k) for k in odd]):
            assert (
                await repo.write_plain(batch, [], {vhost: version}, node, durable=True) is not None
            )
        async with repo.write_transaction(node) as tx:  # the general path's INSERT
            await tx.insert([row(odd[0])])
        got = await repo.claim(qid, node, 1, 10, no_ack=True)
        assert [(m.exchange, m.routing_key) for m in got] == [
            (k, k) for k in [odd[0], odd[1], *odd, odd[0]]
        ]
    finally:
        await repo.close()


async def test_without_notify_the_statement_sends_none(database_url: str) -> None:
    """``--notify poll``: the statement has no pg_notify call at all."""
    name = f"plain-{uuid.uuid4().hex[:8]}"
    repo, vhost, version, qid = await _setup(database_url, name)
    repo.notify = False
    node = uuid.uuid4()
    await repo.register_node(node, "plain")
    listener = await asyncpg.connect(database_url)
    heard: list[str] = []
    await listener.add_listener(WAKE_CHANNEL, lambda *a: heard.append(a[3]))
    try:
        assert (
            await repo.write_plain([_row(qid, b"q")], [], {vhost: version}, node, True) is not None
        )
        await asyncio.sleep(0.3)
        assert heard == [] and await repo.ready_count(qid) == 1
    finally:
        await listener.close()
        await repo.close()
