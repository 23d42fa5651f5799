"""A requeue whose write the database refuses still ends what it started: the rows a
queue's dispatcher kept back for it (``requeue_coming``) go back (``requeued``), or the
queue would claim nothing again (its dispatcher waits for them)."""

from __future__ import annotations

import uuid
from typing import Any, cast

import asyncpg

from cavalcade.broker.group_commit import WriteBatcher


class Dispatcher:
    """What the write batcher calls on a queue's dispatcher around a requeue."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def requeue_coming(self) -> None:
        self.calls.append("coming")

    def requeued(self) -> None:
        self.calls.append("requeued")

    def arrived(self) -> None:
        self.calls.append("arrived")


async def test_held_rows_go_back_when_the_database_refuses_the_requeue() -> None:
    batcher = WriteBatcher(cast(Any, None), uuid.uuid4(), lambda _queues: None)
    d = Dispatcher()
    batcher.connect(cast(Any, None), cast(Any, None), cast(Any, {7: d}))
    attempts = 0

    async def refused(*_args: object) -> Any:
        nonlocal attempts
        attempts += 1
        raise asyncpg.exceptions.CheckViolationError("refused")  # SQLSTATE 23514

    batcher._commit = refused  # type: ignore[method-assign]
    batcher.requeue([(7, 41)])
    assert d.calls == ["coming"]
    await batcher._write_one()
    assert attempts >= 2  # the batch, then its settlements alone (isolate)
    assert d.calls[-1] == "requeued"
