"""Application-side helpers: publish a message, or send a Celery task, inside the
application's own database transaction (the outbox built into Cavalcade).

Both call the SQL function ``cavalcade_publish()`` on the connection (or session) you
pass, so the message is part of your transaction: delivered once it commits, never if
it rolls back. Nothing here talks AMQP or imports the broker.

Supported handles: asyncpg ``Connection`` (and ``Pool``), psycopg 3 ``Connection`` and
``AsyncConnection``, SQLAlchemy ``Session``, ``AsyncSession``, ``Connection`` and
``AsyncConnection``. With an async handle, the helpers return a coroutine: ``await
publish(conn, ...)``; with a sync one they return the outbox row id.

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        await send_task(conn, "proj", "proj.tasks.ship", [order_id], {})

    with Session(engine) as session, session.begin():
        session.add(order)
        send_task(session, celery_app, "proj.tasks.ship", [order.id], {})
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

FUNCTION = "cavalcade_publish"

__all__ = ["FUNCTION", "celery_message", "publish", "send_task"]


def _kind(handle: Any) -> str:
    """Which client library ``handle`` belongs to (by its class's module, no imports)."""
    for cls in type(handle).__mro__:
        module = cls.__module__
        if module.startswith("asyncpg"):
            return "asyncpg"
        if module.startswith("psycopg"):
            return "psycopg-async" if "Async" in cls.__name__ else "psycopg"
        if module.startswith("sqlalchemy"):
            return "sqlalchemy-async" if "Async" in cls.__name__ else "sqlalchemy"
    raise TypeError(
        f"cannot publish through a {type(handle).__name__}: pass an asyncpg, psycopg 3 or "
        "SQLAlchemy connection or session"
    )


def publish(
    conn_or_session: Any,
    exchange: str,
    routing_key: str,
    body: bytes | str,
    properties: Mapping[str, Any] | None = None,
    vhost: str = "/",
    *,
    function: str = FUNCTION,
) -> Any:
    """Publish inside the caller's transaction; the outbox id (a coroutine of it for
    async handles). ``properties`` use AMQP names (``content_type``, ``delivery_mode``,
    ``headers``, ``message_id``, ...); ``function`` may be schema-qualified
    (``"broker.cavalcade_publish"``) when the broker's objects live in their own schema."""
    if isinstance(body, str):
        body = body.encode()
    props = json.dumps(dict(properties or {}), default=_json_default)
    kind = _kind(conn_or_session)
    if kind == "asyncpg":
        sql = f"SELECT {function}($1, $2, $3, $4::jsonb, $5)"
        result: Awaitable[Any] = conn_or_session.fetchval(
            sql, exchange, routing_key, body, props, vhost
        )
        return result
    if kind.startswith("psycopg"):
        sql = f"SELECT {function}(%s, %s, %s, %s::jsonb, %s)"
        args = (exchange, routing_key, body, props, vhost)
        if kind == "psycopg-async":
            return _psycopg_async(conn_or_session, sql, args)
        cur = conn_or_session.execute(sql, args)
        return cur.fetchone()[0]
    from sqlalchemy import text

    statement = text(f"SELECT {function}(:e, :r, :b, CAST(:p AS jsonb), :v)")
    params = {"e": exchange, "r": routing_key, "b": body, "p": props, "v": vhost}
    if kind == "sqlalchemy-async":
        return _sqlalchemy_async(conn_or_session, statement, params)
    return conn_or_session.execute(statement, params).scalar_one()


async def _psycopg_async(conn: Any, sql: str, args: tuple[Any, ...]) -> Any:
    cur = await conn.execute(sql, args)
    row = await cur.fetchone()
    return row[0]


async def _sqlalchemy_async(session: Any, statement: Any, params: dict[str, Any]) -> Any:
    result = await session.execute(statement, params)
    return result.scalar_one()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- Celery


def celery_message(
    app_or_name: Any,
    task_name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[str, str, bytes, dict[str, Any]]:
    """``(exchange, routing_key, body, properties)`` of a Celery protocol-2 task message,
    as ``app.send_task`` would publish it.

    ``app_or_name`` is a Celery app (its ``amqp.as_task_v2`` builds the headers, its
    router picks the queue, its ``task_serializer`` encodes the body) or just the app's
    name (JSON body, queue ``celery`` unless ``queue=`` is given). Options: ``task_id``,
    ``queue``, ``exchange``/``routing_key`` (to route through an exchange instead of the
    default one), ``countdown``, ``eta``, ``expires``, ``priority``, ``reply_to``,
    ``time_limit``, ``soft_time_limit``, ``ignore_result``, ``shadow``, ``headers``."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    task_id = str(options.pop("task_id", None) or uuid.uuid4())
    queue = options.pop("queue", None)
    exchange = options.pop("exchange", None)
    routing_key = options.pop("routing_key", None)
    priority = options.pop("priority", None)
    extra_headers = dict(options.pop("headers", None) or {})
    if isinstance(app_or_name, str):
        headers, props, body_obj = _v2_message(task_id, task_name, args, kwargs, options)
        content_type, encoding = "application/json", "utf-8"
        body = json.dumps(body_obj, default=_json_default).encode()
        queue = queue or "celery"
    else:
        app = app_or_name
        message = app.amqp.as_task_v2(task_id, task_name, args, kwargs, **options)
        headers, props = dict(message.headers), dict(message.properties)
        from kombu.serialization import dumps

        content_type, encoding, body = dumps(message.body, serializer=app.conf.task_serializer)
        if isinstance(body, str):
            body = body.encode(encoding or "utf-8")
        if queue is None and exchange is None:
            route = app.amqp.router.route({}, task_name, args, kwargs)
            q = route.get("queue")
            queue = getattr(q, "name", q) or app.conf.task_default_queue
        priority = priority if priority is not None else app.conf.task_default_priority
    headers.update(extra_headers)
    properties: dict[str, Any] = {
        "content_type": content_type,
        "content_encoding": encoding,
        "delivery_mode": 2,
        "headers": headers,
        "correlation_id": props.get("correlation_id", task_id),
    }
    if props.get("reply_to"):
        properties["reply_to"] = props["reply_to"]
    if priority is not None:
        properties["priority"] = int(priority)
    if exchange is None:
        return "", str(queue), bytes(body), properties
    return (
        str(exchange),
        str(routing_key if routing_key is not None else queue or ""),
        bytes(body),
        properties,
    )


def send_task(
    conn_or_session: Any,
    app_or_name: Any,
    task_name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    vhost: str = "/",
    function: str = FUNCTION,
    **options: Any,
) -> Any:
    """Send a Celery task in the caller's transaction: an ordinary worker runs it once the
    transaction commits (never if it rolls back). The task id is ``options["task_id"]``
    if given; read it back with :func:`celery_message` or pass your own. Returns what
    :func:`publish` returns. The target queue must exist (a worker declares it when it
    starts): a message routed nowhere is dropped, as an unroutable publish is."""
    exchange, routing_key, body, properties = celery_message(
        app_or_name, task_name, args, kwargs, **options
    )
    return publish(
        conn_or_session, exchange, routing_key, body, properties, vhost, function=function
    )


def _v2_message(
    task_id: str,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Headers, properties and body of protocol 2, as ``AMQP.as_task_v2`` builds them."""
    now = datetime.now(UTC)
    eta = options.get("eta")
    if options.get("countdown"):
        eta = now + timedelta(seconds=float(options["countdown"]))
    expires = options.get("expires")
    if isinstance(expires, int | float):
        expires = now + timedelta(seconds=float(expires))
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": options.get("shadow"),
        "eta": eta.isoformat() if isinstance(eta, datetime) else eta,
        "expires": expires.isoformat() if isinstance(expires, datetime) else expires,
        "group": options.get("group_id"),
        "group_index": options.get("group_index"),
        "retries": int(options.get("retries", 0)),
        "timelimit": [options.get("time_limit"), options.get("soft_time_limit")],
        "root_id": options.get("root_id") or task_id,
        "parent_id": options.get("parent_id"),
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
        "origin": options.get("origin") or f"{os.getpid()}@{socket.gethostname()}",
        "ignore_result": bool(options.get("ignore_result", False)),
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    props = {"correlation_id": task_id, "reply_to": options.get("reply_to") or ""}
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return headers, props, [args, kwargs, embed]
