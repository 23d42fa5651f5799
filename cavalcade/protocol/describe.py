"""What this node's connections and channels look like, for the management statistics.

Plain JSON-ready dicts (the broker publishes them with its counters); read-only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .channel import Channel
from .connection import AMQPConnection

Connection = AMQPConnection[Channel]


def _address(value: object) -> tuple[str | None, int | None]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None, None


def _blocked(conn: Connection) -> bool:
    return conn.flow is not None and conn.flow.blocked


def describe_connection(conn: Connection) -> dict[str, Any] | None:
    """One open connection (None while it is still in the handshake)."""
    session = conn.session
    if session is None or conn.transport is None or conn.closed:
        return None
    peer_host, peer_port = _address(conn.transport.get_extra_info("peername"))
    host, port = _address(conn.transport.get_extra_info("sockname"))
    channels = []
    for number, ch in sorted(conn.channels.items()):
        channels.append(
            {
                "number": number,
                "key": ch.key,
                "prefetch_count": ch.consumer_prefetch,
                "global_prefetch_count": ch.global_prefetch,
                "consumer_count": len(ch.consumers),
                "messages_unacknowledged": len(ch.unacked),
                "messages_unconfirmed": ch.unconfirmed,
                "confirm": ch.confirm,
                "transactional": ch.tx,
                "consumers": {
                    tag: {"prefetch_count": ch.consumer_prefetch, "no_ack": c.no_ack}
                    for tag, c in ch.consumers.items()
                },
            }
        )
    return {
        "id": session.id,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "user": session.user,
        "vhost": session.vhost.name,
        "frame_max": conn.frame_max,
        "channel_max": conn.channel_max,
        "timeout": conn.heartbeat,
        "blocked": _blocked(conn),
        "channels": channels,
    }


def describe_connections(connections: Iterable[Connection]) -> list[dict[str, Any]]:
    return [d for c in list(connections) if (d := describe_connection(c)) is not None]


def blocked_count(connections: Iterable[Connection]) -> int:
    return sum(1 for c in list(connections) if _blocked(c))
