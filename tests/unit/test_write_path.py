"""The broker's write path over an in-memory transaction handle: the order of statements
and what the rules decide, without a database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, cast

from cavalcade.broker import write_path
from cavalcade.domain.limits import BatchRules, QueueLimit
from cavalcade.storage.batch import WriteBatch
from cavalcade.storage.records import DeadRow, NewMessage


def _msg(queue_id: int, body: bytes = b"x", persistent: bool = False) -> NewMessage:
    return NewMessage(queue_id, 0, persistent, "", "rk", b"", None, None, None, None, body)


def _dead(mid: int, queue_id: int) -> DeadRow:
    return DeadRow(mid, queue_id, "", "rk", b"", b"x", 0, False)


class FakeTx:
    """Records every statement; holds ready lengths and rows to hand back."""

    def __init__(self) -> None:
        self.node_id = uuid.uuid4()
        self.calls: list[tuple[str, Any]] = []
        self.lengths: dict[int, tuple[int, int]] = {}
        self.counted: list[tuple[int, int, int]] = []
        self.heads: dict[int, list[DeadRow]] = {}

    async def async_commit(self) -> None:
        self.calls.append(("async_commit", None))

    async def ready_lengths(self, queue_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        self.calls.append(("ready_lengths", sorted(queue_ids)))
        return {q: self.lengths.get(q, (0, 0)) for q in queue_ids}

    async def insert(
        self, messages: Sequence[NewMessage], delivered: Sequence[int] = ()
    ) -> list[tuple[int, int]]:
        self.calls.append(("insert", [m.queue_id for m in messages]))
        return [(messages[i].queue_id, i + 1) for i in delivered]

    async def ack(self, ids: Sequence[int]) -> None:
        self.calls.append(("ack", list(ids)))

    async def requeue(self, ids: Sequence[int]) -> None:
        self.calls.append(("requeue", list(ids)))

    async def requeue_counted(self, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        self.calls.append(("requeue_counted", list(ids)))
        return self.counted

    async def take(self, ids: Sequence[int]) -> list[DeadRow]:
        self.calls.append(("take", list(ids)))
        return [_dead(i, 7) for i in ids]

    async def take_owned(self, ids: Sequence[int]) -> list[DeadRow]:
        self.calls.append(("take_owned", list(ids)))
        return [_dead(i, 8) for i in ids]

    async def drop_head(self, queue_id: int, max_length: int, max_bytes: int) -> list[DeadRow]:
        self.calls.append(("drop_head", (queue_id, max_length, max_bytes)))
        return self.heads.get(queue_id, [])

    async def take_expired(self, limit: int) -> list[DeadRow]:
        self.calls.append(("take_expired", limit))
        return []

    async def notify_queues(self, queues: set[int], node_id: uuid.UUID | None = None) -> None:
        self.calls.append(("notify", sorted(queues)))


class Letters:
    def __init__(self) -> None:
        self.seen: list[tuple[str, list[int]]] = []

    def __call__(self, rows: list[DeadRow], reason: str) -> list[NewMessage]:
        self.seen.append((reason, [r.id for r in rows]))
        return [_msg(99) for _ in rows]


def _run(tx: FakeTx, batch: write_path.Batch, rules: BatchRules, dl: Letters) -> Any:
    return asyncio.run(write_path.write(cast(WriteBatch, tx), batch, rules, dl))


def test_transient_publishes_and_acks_commit_asynchronously() -> None:
    tx, dl = FakeTx(), Letters()
    out = _run(tx, write_path.Batch([_msg(1), _msg(2)], acks=[5]), BatchRules(), dl)
    assert tx.calls == [
        ("async_commit", None),
        ("insert", [1, 2]),
        ("ack", [5]),
        ("notify", [1, 2]),
    ]
    assert out.refused == set() and out.touched == {1, 2} and dl.seen == []


def test_full_queue_refuses_and_dead_letters_in_reason_order() -> None:
    tx, dl = FakeTx(), Letters()
    tx.lengths = {1: (1, 0)}
    tx.counted = [(20, 7, 5), (21, 7, 1)]
    tx.heads = {2: [_dead(30, 2)]}
    rules = BatchRules(
        limits={1: QueueLimit(1, None, "reject-publish-dlx"), 2: QueueLimit(1, None)},
        delivery_limits={7: 2},
    )
    batch = write_path.Batch(
        [_msg(1, persistent=True), _msg(2)], requeues=[20, 21], rejects=[40], wake={7}
    )
    out = _run(tx, batch, rules, dl)
    assert out.refused == {0}
    assert [c[0] for c in tx.calls] == [
        "ready_lengths",
        "insert",
        "requeue_counted",
        "take",
        "drop_head",
        "take_owned",
        "insert",
        "notify",
    ]
    assert ("take", [20]) in tx.calls
    # the refused publish (id 0) and the dropped head are maxlen, then delivery_limit, rejected
    assert dl.seen == [("maxlen", [0, 30]), ("delivery_limit", [20]), ("rejected", [40])]
    assert out.touched == {2, 99}
