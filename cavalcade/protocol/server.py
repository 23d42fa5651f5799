"""The listening socket: one AMQPConnection per accepted client."""

from __future__ import annotations

import asyncio
import socket
import ssl

from cavalcade.broker.api import BrokerPort, Session
from cavalcade.settings import Settings

from .channel import Channel
from .connection import AMQPConnection
from .describe import blocked_count, describe_connections


class AMQPServer:
    """Accepts clients on an already bound socket and can close them all (320) on shutdown."""

    def __init__(self, broker: BrokerPort, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.connections: set[AMQPConnection[Channel]] = set()
        self.draining = False  # maintenance mode: new sockets are closed at once
        self._servers: list[asyncio.base_events.Server] = []
        broker.attach(
            self._held,
            self._blocked,
            lambda: describe_connections(self.connections),
            lambda: blocked_count(self.connections),
        )

    def _held(self) -> set[int]:
        """Every message id a channel of this node holds unacked."""
        return {
            message_id
            for conn in self.connections
            for ch in conn.channels.values()
            for message_id in ch.held_ids()
        }

    def sessions(self) -> list[tuple[Session, int]]:
        """Open connections of this node as (session, open channels)."""
        return [
            (c.session, len(c.channels))
            for c in self.connections
            if c.session is not None and not c.closed
        ]

    def close_connection(self, connection_id: int, reason: str) -> bool:
        """An operator's close_connection: 320 CONNECTION_FORCED with the reason."""
        for conn in list(self.connections):
            if conn.session is not None and conn.session.id == connection_id:
                conn.close_forced(reason)
                return True
        return False

    def user_channels(self, user: str) -> int:
        """Channels open on this node by a user's connections."""
        return sum(
            len(c.channels)
            for c in self.connections
            if c.session is not None and c.session.user == user and not c.closed
        )

    def _blocked(self, blocked: bool) -> None:
        for conn in list(self.connections):
            conn.set_blocked(blocked)

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Serve on a bound socket (amqps with ``tls``); may be called once per listener."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: (
                _Refused()
                if self.draining
                else AMQPConnection(
                    self.broker, self.settings, self.connections, self, new_channel=Channel
                )
            ),
            sock=sock,
            backlog=1024,
            ssl=tls,
            ssl_handshake_timeout=self.settings.handshake_timeout if tls else None,
        )
        self._servers.append(server)

    async def stop(self, grace: float = 5.0, reason: str = "broker shutdown") -> None:
        """Stop accepting, send 320 CONNECTION_FORCED to everyone, wait for their cleanup."""
        for server in self._servers:
            server.close()
        await self.close_all(grace, reason)

    async def drain(self, grace: float = 5.0) -> None:
        """Maintenance mode: refuse new clients, close the open ones with 320 (they
        reconnect to another node) and wait for their cleanup (their deliveries requeued)."""
        self.draining = True
        await self.close_all(grace, "node is in maintenance mode")

    def revive(self) -> None:
        """Leave maintenance mode: accept clients again."""
        self.draining = False

    async def close_all(self, grace: float, reason: str) -> None:
        for conn in list(self.connections):
            conn.close_forced(reason)
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)


class _Refused(asyncio.Protocol):
    """A socket accepted while the node is drained: closed before the handshake, so the
    client's connect fails fast and it tries another node."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
