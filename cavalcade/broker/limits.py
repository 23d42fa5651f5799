"""Vhost and user limits, checked where RabbitMQ checks them, with its codes and texts."""

from __future__ import annotations

from cavalcade.domain.limits import limit_of
from cavalcade.errors import NotAllowed, PreconditionFailed
from cavalcade.storage.admin import AdminStore

from .topology import VhostTopology


async def check_connection_limits(
    store: AdminStore, user: str, vhost_name: str, vhost_id: int
) -> int | None:
    """At connection.open: vhost then user ``max-connections`` (530). Returns the user's
    ``max-channels`` (None: unlimited)."""
    row = await store.connection_limits(user, vhost_id)
    limit = limit_of(row["vhost_limits"], "max-connections")
    if limit is not None and row["vhost_connections"] >= limit:
        raise NotAllowed(
            f"access to vhost '{vhost_name}' refused for user '{user}': "
            f"connection limit ({limit}) is reached"
        )
    limit = limit_of(row["user_limits"], "max-connections")
    if limit is not None and row["user_connections"] >= limit:
        raise NotAllowed(
            f"connection refused for user '{user}': user connection limit ({limit}) is reached"
        )
    return limit_of(row["user_limits"], "max-channels")


async def check_queue_limit(store: AdminStore, vhost: VhostTopology, queue: str) -> None:
    """Before a new queue: the vhost's ``max-queues`` (406)."""
    limit = limit_of(vhost.limits, "max-queues")
    if limit is not None and await store.queue_count(vhost.id) >= limit:
        raise PreconditionFailed(
            f"cannot declare queue '{queue}': queue limit in vhost '{vhost.name}' "
            f"({limit}) is reached"
        )


def check_channel_limit(user: str, limit: int | None, open_channels: int) -> None:
    """Before a new channel: the user's ``max-channels`` across its connections (530)."""
    if limit is not None and open_channels >= limit:
        raise NotAllowed(
            f"number of channels opened for user '{user}' has reached the maximum allowed "
            f"user limit of ({limit})"
        )
