"""Storing every string AMQP allows in PostgreSQL ``text``, which refuses NUL.

AMQP short strings (names, routing keys, consumer tags, property values) and field-table
strings may hold U+0000; PostgreSQL ``text`` and ``jsonb`` cannot. Rather than change the
type of every name column (and every operator's SQL), strings are stored with a reversible
escape that leaves every other string unchanged: U+0000 becomes ``ESC 0`` and ``ESC``
itself becomes ``ESC ESC``, where ``ESC`` is U+10FFFF (a noncharacter, never in real
names). So ``SELECT name FROM queues`` shows ordinary names as they are.

Scalars go through an asyncpg codec installed on every pooled connection (``install``);
arrays and JSON documents are escaped explicitly (:func:`escape`, :func:`dump_json`).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

ESC = "\U0010ffff"
_NUL = "\x00"


def escape(value: str) -> str:
    """``value`` as it is stored (unchanged unless it holds NUL or ESC)."""
    if _NUL not in value and ESC not in value:
        return value
    return value.replace(ESC, ESC + ESC).replace(_NUL, ESC + "0")


def unescape(value: str) -> str:
    """The string :func:`escape` stored."""
    if ESC not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == ESC and i + 1 < n:
            out.append(_NUL if value[i + 1] == "0" else ESC)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def escape_or_none(value: str | None) -> str | None:
    """A decoded copy (``message_id``, ...) that text can hold unchanged, else no copy."""
    if value is None or (_NUL not in value and ESC not in value):
        return value
    return None


def _walk(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(str(k)): _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, fn) for v in value]
    return value


def dump_json(value: Any) -> str:
    """JSON for a ``jsonb`` column, every string (keys too) escaped."""
    return json.dumps(_walk(value, escape), default=str)


def load_json(value: Any) -> Any:
    """The document :func:`dump_json` stored (``value`` as asyncpg returns jsonb)."""
    if isinstance(value, str):
        value = json.loads(value)
    return _walk(value, unescape)


async def install(conn: asyncpg.Connection) -> None:
    """Escape/unescape every ``text`` and ``varchar`` scalar on ``conn`` (pool ``init``)."""
    for typ in ("text", "varchar"):
        await conn.set_type_codec(
            typ, schema="pg_catalog", encoder=escape, decoder=unescape, format="text"
        )
