"""A large message's row goes by a binary COPY, its body in slices (storage/large.py),
or by one INSERT where the database cannot COPY so: either way the row it stores is
the row ``INSERT`` stores, in its FIFO place."""

from __future__ import annotations

import os
import uuid

import pytest

from cavalcade.storage import batch, large, queries
from cavalcade.storage.records import NewMessage
from cavalcade.storage.repository import Repository

from .rows import queue as _queue

# Every column but the id, the body and the times (compared relative to published_at).
_COLUMNS = """queue_id, priority, owner_node, owner_channel, redelivered, delivery_count,
    persistent, exchange, routing_key, properties, content_type, message_id,
    correlation_id, expiration, expires_at - published_at AS ttl,
    available_at - published_at AS delay"""


@pytest.fixture(params=["copy", "insert"])
async def repo(database_url: str, request, monkeypatch):  # type: ignore[no-untyped-def]
    """A fresh pool; "insert": a server that refuses the COPY's first statement (as one
    without ``timestamptz_send`` would), so rows go by INSERT_ONE after a savepoint."""
    if request.param == "insert":
        refused = queries.LARGE_ROW.replace("timestamptz_send", "cavalcade_no_such_function")
        monkeypatch.setattr(queries, "LARGE_ROW", refused)
    r = await Repository.connect(database_url, size=4)
    yield r
    await r.close()


def _message(qid: int, body: bytes, **kw: object) -> NewMessage:
    fields: dict[str, object] = dict(
        queue_id=qid, priority=3, persistent=True, exchange="ex\x00\U0010ffffé",
        routing_key="rk.\x00", properties=b"\x80\x00\x01\xce", content_type="text/plain",
        message_id="id\x00", correlation_id=None, expiration="60000", body=body,
        ttl_ms=60_000, delay_ms=None,
    )  # fmt: skip
    fields.update(kw)
    return NewMessage(**fields)  # type: ignore[arg-type]


async def _stored(repo: Repository, qid: int) -> list[dict[str, object]]:
    rows = await repo.durable_pool.fetch(
        f"SELECT {_COLUMNS} FROM messages WHERE queue_id = $1 ORDER BY id", qid
    )
    return [dict(r) for r in rows]


async def _bodies(repo: Repository, qid: int) -> list[bytes]:
    rows = await repo.durable_pool.fetch(
        "SELECT body FROM messages WHERE queue_id = $1 ORDER BY id", qid
    )
    return [bytes(r["body"]) for r in rows]


@pytest.mark.parametrize(
    "kw",
    [{}, {"ttl_ms": None, "delay_ms": 5_000, "persistent": False, "content_type": None}],
    ids=["ttl", "delayed"],
)
async def test_a_copied_row_is_the_row_an_insert_stores(
    repo: Repository, kw: dict[str, object]
) -> None:
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    small = await _queue(repo, vhost, f"rows-{uuid.uuid4().hex[:8]}")
    big = await _queue(repo, vhost, f"rows-{uuid.uuid4().hex[:8]}")
    body = os.urandom(batch.LARGE_BODY + large.SLICE + 17)  # slices, the last one short
    async with repo.write_transaction() as tx:
        await tx.insert([_message(small, b"x", **kw)])
    async with repo.write_transaction() as tx:
        await tx.insert([_message(big, body, **kw)])
    want = await _stored(repo, small)
    got = await _stored(repo, big)
    assert [{**r, "queue_id": 0} for r in got] == [{**r, "queue_id": 0} for r in want]
    assert await _bodies(repo, big) == [body]


async def test_large_rows_keep_their_place_and_can_be_delivered_rows(repo: Repository) -> None:
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    qid = await _queue(repo, vhost, f"rows-{uuid.uuid4().hex[:8]}")
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    bodies = [b"s0", b"L" * batch.LARGE_BODY, b"s1", b"M" * (batch.LARGE_BODY + 1), b"s2"]
    async with repo.write_transaction(node) as tx:
        delivered = await tx.insert([_message(qid, b) for b in bodies], [1, 2, 3])
    ids = [
        r["id"]
        for r in await repo.durable_pool.fetch(
            "SELECT id FROM messages WHERE queue_id = $1 ORDER BY id", qid
        )
    ]
    assert await _bodies(repo, qid) == bodies  # FIFO across COPY and INSERT
    assert delivered == [(qid, ids[1]), (qid, ids[2]), (qid, ids[3])]
    owners = [
        (r["owner_node"], r["owner_channel"], r["delivery_count"]) for r in await _stored(repo, qid)
    ]
    assert owners == [(None, None, 0), *[(node, 0, 1)] * 3, (None, None, 0)]


async def test_a_large_row_for_a_deleted_queue_is_not_written(repo: Repository) -> None:
    vhost = await repo.find_vhost("/")
    assert vhost is not None
    qid = await _queue(repo, vhost, f"rows-{uuid.uuid4().hex[:8]}")
    assert await repo.delete_queue(qid) == 0
    node = uuid.uuid4()
    await repo.register_node(node, "n")
    async with repo.write_transaction(node) as tx:
        assert await tx.insert([_message(qid, b"L" * batch.LARGE_BODY)], [0]) == []
    n = await repo.durable_pool.fetchval("SELECT count(*) FROM messages WHERE queue_id = $1", qid)
    assert n == 0
