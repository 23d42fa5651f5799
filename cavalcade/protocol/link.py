"""What a channel sees of its connection (aiormq's ``abc.py`` habit).

The channel depends on this protocol, never on ``connection.py``; the connection
implements it. Channel state belongs to the channel, connection state to the connection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol, TypeVar

from pamqp.base import Frame

from cavalcade.broker.api import BrokerPort as Broker
from cavalcade.broker.api import Session

from .framing import Buffers, RawFrame


class ConnectionState(enum.Enum):
    """Where the connection is in its life; changed only by the connection."""

    START = "start"  # protocol header seen, connection.start sent: waiting for start-ok
    TUNE = "tune"  # tune sent: waiting for tune-ok
    OPEN = "open"  # tuned: waiting for connection.open
    OPENED = "opened"  # open-ok sent: channels may be used
    CLOSING = "closing"  # connection.close sent or received: waiting for the socket to go


class ChannelState(enum.Enum):
    """Where a channel is in its life; changed only by the channel."""

    OPEN = "open"
    CLOSING = "closing"  # channel.close sent: waiting for close-ok
    CLOSED = "closed"  # torn down


class Link(Protocol):
    """The connection as its channels use it."""

    @property
    def broker(self) -> Broker:
        """The node's broker."""
        ...

    @property
    def session(self) -> Session:
        """The broker session of this connection (set once it is open)."""
        ...

    @property
    def frame_max(self) -> int:
        """Negotiated maximum frame size: bodies are split to fit it."""
        ...

    @property
    def max_message_size(self) -> int:
        """Largest message body a publish may announce."""
        ...

    @property
    def database_wait(self) -> float:
        """How long a channel retries a method while the database is away."""
        ...

    @property
    def cancel_notify(self) -> bool:
        """The client understands a server-sent basic.cancel."""
        ...

    @property
    def closed(self) -> bool:
        """The socket is gone (or going): nothing more is sent."""
        ...

    @property
    def write_paused(self) -> bool:
        """The transport's write buffer is full: deliver nothing more for now."""
        ...

    @property
    def closing(self) -> bool:
        """connection.close was sent or received, or the socket is gone: deliver nothing."""
        ...

    def send_method(self, channel: int, method: Frame) -> None:
        """Write one method frame."""
        ...

    def write_frames(self, frames: Buffers) -> None:
        """Write encoded frames (deliveries, returns)."""
        ...

    def pause_reading(self, reason: int) -> None:
        """Stop reading the socket on behalf of ``reason`` (a channel number)."""
        ...

    def resume_reading(self, reason: int) -> None:
        """Drop the pause of ``reason``; reading resumes when no reason is left."""
        ...

    def mark_publisher(self) -> None:
        """The client published: it is held while the node's publish backlog is full."""
        ...

    def fail(self, exc: BaseException) -> None:
        """Close the whole connection with the error ``exc`` (hard, or escalated)."""
        ...

    def forget_channel(self, number: int, channel: object) -> None:
        """``channel`` (number ``number``) is closed: drop it from the channel table."""
        ...


class ChannelHandle(Protocol):
    """A channel as its connection uses it (the connection never imports channel.py)."""

    @property
    def is_open(self) -> bool:
        """The channel is open (not closing, not closed)."""
        ...

    @property
    def needs_teardown(self) -> bool:
        """Open, or still holding consumers or unacked deliveries."""
        ...

    def on_frame(self, f: RawFrame) -> None:
        """One frame for this channel."""
        ...

    def wake_queues(self) -> None:
        """The socket takes writes again: let every consumer's queue deliver."""
        ...

    async def finish_received(self) -> None:
        """Wait until the methods received so far are handled (before a close)."""
        ...

    async def teardown_logged(self) -> None:
        """Tear the channel down, logging (not raising) a failure."""
        ...

    def stop(self) -> None:
        """Stop the channel's tasks."""
        ...


C = TypeVar("C", bound=ChannelHandle)

# How the connection gets a channel: given itself (the channel's link) and the number.
# protocol/server.py passes channel.Channel.
ChannelFactory = Callable[[Link, int], C]
