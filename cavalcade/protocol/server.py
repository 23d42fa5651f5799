"""The listening socket: one AMQPConnection per accepted client."""

from __future__ import annotations

import asyncio
import socket

from cavalcade.broker.service import Broker
from cavalcade.settings import Settings

from .connection import AMQPConnection
from .describe import blocked_count, describe_connections


class AMQPServer:
    """Accepts clients on an already bound socket and can close them all (320) on shutdown."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.connections: set[AMQPConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        broker.batcher.on_blocked = self._blocked
        broker.held = self._held
        broker.stats.describe_connections = lambda: describe_connections(self.connections)
        broker.stats.blocked_connections = lambda: blocked_count(self.connections)

    def _held(self) -> set[int]:
        """Every message id a channel of this node holds unacked."""
        return {
            message_id
            for conn in self.connections
            for ch in conn.channels.values()
            for message_id in ch.held_ids()
        }

    def _blocked(self, blocked: bool) -> None:
        for conn in list(self.connections):
            conn.set_blocked(blocked)

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AMQPConnection(self.broker, self.settings, self.connections),
            sock=sock,
            backlog=1024,
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, send 320 CONNECTION_FORCED to everyone, wait for their cleanup."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_forced("broker shutdown")
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
