"""Topology and message use-cases on behalf of a user rather than a connection (the
management API's PUT/DELETE of queues and exchanges, bindings, publish, get).

They run the same broker use-cases the AMQP channel runs, with the user's permissions
on the vhost, through a session that is not listed as a connection."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cavalcade.domain.json_properties import decode_properties, encode_properties
from cavalcade.domain.properties import parse_properties
from cavalcade.errors import AccessRefused, NotFound, PreconditionFailed
from cavalcade.storage.repository import ClaimedMessage

from .service import Broker, Session

ACKMODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")


async def acting_session(broker: Broker, user: str, vhost: str) -> Session:
    """A session of ``user`` on ``vhost``: NotFound if the vhost is missing,
    AccessRefused without permissions there."""
    vhost_id = await broker.repo.find_vhost(vhost)
    if vhost_id is None:
        raise NotFound(f"no vhost '{vhost}'")
    row = await broker.repo.find_user(user)
    if row is None:
        raise AccessRefused(f"no user '{user}'")
    perm = await broker.repo.find_permission(int(row["id"]), vhost_id)
    if perm is None:
        raise AccessRefused(f"access to vhost '{vhost}' refused for user '{user}'")
    patterns = tuple(re.compile(p or "^$") for p in (perm[0], perm[1], perm[2]))
    vh = broker._vhost(vhost_id, vhost)
    return Session(broker.next_id(), user, int(row["id"]), vh, patterns)  # type: ignore[arg-type]


async def queue_exists(broker: Broker, s: Session, name: str) -> bool:
    return await broker.repo.find_queue(s.vhost.id, name) is not None


async def exchange_exists(broker: Broker, s: Session, name: str) -> bool:
    return await broker.repo.find_exchange(s.vhost.id, name) is not None


async def declare_queue(
    broker: Broker,
    s: Session,
    name: str,
    durable: bool,
    auto_delete: bool,
    arguments: dict[str, Any],
) -> bool:
    """Declare (True: created) or check an existing queue for equivalence (400)."""
    existed = await queue_exists(broker, s, name)
    await broker.declare_queue(s, name, False, durable, False, auto_delete, arguments)
    return not existed


async def delete_queue(
    broker: Broker, s: Session, name: str, if_unused: bool, if_empty: bool
) -> None:
    if not await queue_exists(broker, s, name):
        raise NotFound(f"no queue '{name}' in vhost '{s.vhost.name}'")
    await broker.delete_queue(s, name, if_unused, if_empty)


async def purge_queue(broker: Broker, s: Session, name: str) -> int:
    return await broker.purge_queue(s, name)


async def declare_exchange(
    broker: Broker,
    s: Session,
    name: str,
    type_: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: dict[str, Any],
) -> bool:
    existed = await exchange_exists(broker, s, name)
    await broker.declare_exchange(s, name, type_, False, durable, auto_delete, internal, arguments)
    return not existed


async def delete_exchange(broker: Broker, s: Session, name: str, if_unused: bool) -> None:
    if not await exchange_exists(broker, s, name):
        raise NotFound(f"no exchange '{name}' in vhost '{s.vhost.name}'")
    await broker.delete_exchange(s, name, if_unused)


async def bind(
    broker: Broker,
    s: Session,
    source: str,
    destination_type: str,
    destination: str,
    routing_key: str,
    arguments: dict[str, Any],
    unbind: bool = False,
) -> None:
    """Bind (or unbind) a queue (``q``) or an exchange (``e``) to ``source``."""
    if not await exchange_exists(broker, s, source):
        raise NotFound(f"no exchange '{source}' in vhost '{s.vhost.name}'")
    if destination_type == "q":
        if not await queue_exists(broker, s, destination):
            raise NotFound(f"no queue '{destination}' in vhost '{s.vhost.name}'")
        await broker.bind_queue(s, destination, source, routing_key, arguments, unbind=unbind)
    else:
        if not await exchange_exists(broker, s, destination):
            raise NotFound(f"no exchange '{destination}' in vhost '{s.vhost.name}'")
        await broker.bind_exchange(s, destination, source, routing_key, arguments, unbind=unbind)


async def publish(
    broker: Broker,
    s: Session,
    exchange: str,
    routing_key: str,
    properties: dict[str, Any],
    body: bytes,
) -> bool:
    """Publish one message and wait for its commit; True if it reached a queue."""
    raw = encode_properties(properties)
    props = parse_properties(raw)
    await broker.check_exchange(s, exchange)
    broker.check_publish(s, exchange)
    reached = await broker.publish(s, exchange, routing_key, props, body)
    return reached > 0


@dataclass(slots=True)
class GotMessage:
    message: ClaimedMessage
    message_count: int
    properties: dict[str, Any]


async def get_messages(
    broker: Broker, s: Session, queue: str, count: int, ackmode: str
) -> list[GotMessage]:
    """basic.get up to ``count`` messages; then ack, requeue (redelivered), or reject
    (dead-lettered where the queue says so) them, as ``ackmode`` says."""
    if ackmode not in ACKMODES:
        raise PreconditionFailed(f"unknown ackmode {ackmode!r}")
    consume = ackmode == "ack_requeue_false"
    key = broker.next_id()
    got: list[tuple[ClaimedMessage, int]] = []
    for _ in range(max(0, count)):
        result = await broker.get(s, queue, consume, key)
        if result is None:
            break
        got.append(result)
    held = [(m.queue_id, m.id) for m, _ in got]
    if ackmode.endswith("requeue_true"):
        broker.requeue(held)
    elif ackmode == "reject_requeue_false":
        broker.discard(held)
    await broker.flush()
    out = []
    for message, remaining in got:
        try:
            props = decode_properties(message.properties)
        except ValueError:
            props = {}
        out.append(GotMessage(message, remaining, props))
    return out
