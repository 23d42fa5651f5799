"""Row shapes: a stored row of ``exchanges``, ``bindings`` or ``queues`` as the record the
broker uses, one converter each (the repository and the topology log read the same rows)."""

from __future__ import annotations

from typing import Any

import asyncpg

from cavalcade.domain.routing import BindingInfo, ExchangeInfo

from . import textsafe
from .records import QueueRow


def json_args(value: Any) -> dict[str, Any]:
    """An ``arguments`` column (JSON) as a dict."""
    return dict(textsafe.load_json(value) or {})


def as_stored(arguments: dict[str, Any]) -> dict[str, Any] | None:
    """``arguments`` as a read of the column they are written to returns them; None if
    that is not known here (jsonb prints floats its own way: 1e23 comes back an int)."""
    if _has_float(arguments):
        return None
    return json_args(textsafe.dump_json(arguments))


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float(v) for v in value)
    return False


def exchange_info(r: asyncpg.Record) -> ExchangeInfo:
    """An exchange (without its bindings) from a row of ``exchanges``."""
    return ExchangeInfo(
        id=r["id"],
        name=r["name"],
        type=r["type"],
        durable=r["durable"],
        auto_delete=r["auto_delete"],
        internal=r["internal"],
        arguments=json_args(r["arguments"]),
    )


def binding_info(r: asyncpg.Record) -> BindingInfo:
    """A binding from a row of ``bindings``."""
    return BindingInfo(
        source_id=r["source_id"],
        routing_key=r["routing_key"],
        arguments=json_args(r["arguments"]),
        queue_id=r["queue_id"],
        exchange_id=r["exchange_id"],
    )


def queue_row(r: asyncpg.Record) -> QueueRow:
    """A queue from a row of ``queues``."""
    return QueueRow(
        id=r["id"],
        name=r["name"],
        durable=r["durable"],
        auto_delete=r["auto_delete"],
        exclusive_node=r["exclusive_node"],
        exclusive_connection=r["exclusive_connection"],
        arguments=json_args(r["arguments"]),
    )
