"""Background tasks that nobody awaits: keep a reference until they end."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_RUNNING: set[asyncio.Task[Any]] = set()


def keep(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """Hold ``task`` until done (a cancelled task still has to run once to finish)."""
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start a fire-and-forget task that is not lost to the garbage collector."""
    return keep(asyncio.get_running_loop().create_task(coro))
