"""The one retry helper: backoff pauses, budgets, and which failures it retries."""

from __future__ import annotations

import asyncio
import time

import pytest

from cavalcade.storage.retry import Backoff, retry


def test_pauses_double_up_to_the_cap() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.pause() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_wait_budget_counts_the_pauses() -> None:
    b = Backoff(0.1, 2.0, wait=0.3)
    assert [b.pause() for _ in range(4)] == [0.1, 0.2, None, None]


def test_deadline_refuses_a_pause_that_would_end_after_it() -> None:
    b = Backoff(10.0, 10.0, deadline=time.monotonic() + 5.0)
    assert b.pause() is None


def test_retries_until_success_and_reports_each_failure() -> None:
    calls: list[int] = []
    seen: list[Exception] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("away")
        return "ok"

    got = asyncio.run(retry(attempt, lambda e: True, Backoff(0.0, 0.0), seen.append))
    assert got == "ok" and len(calls) == 3 and len(seen) == 2


def test_raises_what_is_not_retryable_at_once() -> None:
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise ValueError("data")

    with pytest.raises(ValueError):
        asyncio.run(retry(attempt, lambda e: isinstance(e, ConnectionError), Backoff(0.0, 0.0)))
    assert calls == [1]


def test_raises_the_last_failure_when_the_budget_is_spent() -> None:
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise ConnectionError(str(len(calls)))

    with pytest.raises(ConnectionError, match="3"):
        asyncio.run(retry(attempt, lambda e: True, Backoff(0.001, 0.001, wait=0.002)))
    assert len(calls) == 3
