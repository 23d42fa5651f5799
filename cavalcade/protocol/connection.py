"""One client connection: handshake state, heartbeats, channel table, closing, flow control.

What the handshake offers, accepts and refuses is decided in ``handshake.py``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Generic

from pamqp import commands
from pamqp.base import Frame

from cavalcade.broker.api import Backoff, BrokerPort, Session, check_channel_limit, retry
from cavalcade.errors import (
    AMQPError,
    ChannelErrorHard,
    CommandInvalid,
    ConnectionForced,
    FrameError,
    NotAllowed,
    UnexpectedFrame,
)
from cavalcade.settings import Settings

from .closing import close_frame
from .flow import BLOCKED, SLICED, FlowControl
from .framing import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    Buffers,
    FrameReader,
    RawFrame,
    decode_method,
    encode_method,
    heartbeat_frame,
    method_ids,
)
from .handshake import (
    ClientCapabilities,
    login,
    start_method,
    tune_method,
    tune_ok_refusal,
)
from .link import C, ChannelFactory, ConnectionState
from .tasks import keep, spawn
from .tls import peer_common_name

log = logging.getLogger(__name__)

# Seconds a closing connection's channels get to finish the methods they received
# (a channel held by a database outage is torn down after that, its work unfinished).
CLOSE_FINISH = 2.0
READ_SLICE = 4096  # octets of frames handled per turn of the event loop


# Hot-path constants (an Enum member read off its class costs a lookup each time).
_OPENED = ConnectionState.OPENED
_CHANNEL_FRAMES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY))
_CHANNEL_OPEN = b"\x00\x14\x00\x0a"  # class 20, method 10


class AMQPConnection(asyncio.Protocol, Generic[C]):
    """The asyncio protocol of one client socket; the ``Link`` its channels use. Its
    channels come from ``new_channel`` (protocol/server.py passes channel.Channel)."""

    def __init__(
        self,
        broker: BrokerPort,
        settings: Settings,
        registry: set[AMQPConnection[C]],
        server: Any = None,
        *,
        new_channel: ChannelFactory[C],
    ) -> None:
        self.broker = broker
        self.new_channel = new_channel
        self.server = server  # for the user's channel count (max-channels)
        self.name = "?"
        self.tls = False
        self.mechanism: str | None = None
        self.cert_user: str | None = None
        self.close_reason = "client closed the TCP connection"
        self.settings = settings
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.peer: str | None = None
        self.session: Session = None  # type: ignore[assignment]  # set by connection.open
        self.database_wait = settings.database_wait
        self.frame_max = settings.frame_max
        self.channel_max = settings.channel_max
        self.heartbeat = 0
        self.channels: dict[int, C] = {}
        self.closed = False
        # Channels finish what they received before a client close or EOF (not after an
        # error this side sent connection.close for: RabbitMQ ignores what follows it).
        self._finish_received = True
        self.cancel_notify = False
        self.blocked_notify = False
        self.publisher = False
        self._reader = FrameReader(settings.frame_max)
        self._header_seen = False
        self._sliced = False  # reading paused while read frames wait for their turn
        self._buf = b""
        self._state = ConnectionState.START
        self._user: tuple[int, str] | None = None
        self._client_properties: dict[str, Any] = {}
        self._last_recv = time.monotonic()
        self._last_sent = time.monotonic()
        self._timers: list[asyncio.TimerHandle] = []
        self._hb_task: asyncio.Task[None] | None = None
        self._conn_inbox: asyncio.Queue[Frame] = asyncio.Queue()
        self._conn_task: asyncio.Task[None] | None = None
        self._cleanup_task: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.peer_port = peer[1] if isinstance(peer, tuple) else None
        local = transport.get_extra_info("sockname")
        self.local = local if isinstance(local, tuple) else ("?", 0)
        ssl_object = transport.get_extra_info("ssl_object")
        self.tls = ssl_object is not None
        self.cert_user = peer_common_name(ssl_object)
        self.name = f"{self.peer}:{self.peer_port} -> {self.local[0]}:{self.local[1]}"
        log.info("accepting AMQP connection %s%s", self.name, " (TLS)" if self.tls else "")
        self.registry.add(self)
        loop = asyncio.get_running_loop()
        self._timers.append(
            loop.call_later(self.settings.handshake_timeout, self._handshake_timeout)
        )
        self._conn_task = loop.create_task(self._connection_methods())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_recv = time.monotonic()
        if not self._header_seen:
            rest = self._read_header(data)
            if not rest:
                return
            data = rest
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Handle the frames of a read, READ_SLICE octets per turn of the event loop: a
        publisher's 256 KiB read must not starve the other connections (its consumer's
        acks among them). The socket is not read while frames wait for their turn."""
        try:
            for f in self._reader.feed(data, READ_SLICE):
                if self.closed:
                    return
                self._on_frame(f)
        except Exception as exc:  # bad input never takes the node down
            if not isinstance(exc, AMQPError):
                log.exception("error handling frames")
            self._unslice()  # read the client's close-ok
            self.fail(exc)
            return
        if self.closed:
            return
        if self._reader.holds_frame():
            if not self._sliced:
                self._sliced = True
                self.pause_reading(SLICED)
            asyncio.get_running_loop().call_soon(self._feed_more)
        else:
            self._unslice()

    def _unslice(self) -> None:
        if self._sliced:
            self._sliced = False
            self.resume_reading(SLICED)

    def _feed_more(self) -> None:
        if not self.closed:
            self._feed(b"")

    def _read_header(self, data: bytes) -> bytes | None:
        """Collect the protocol header: the bytes after it, or None while it is incomplete
        (or was refused)."""
        self._buf += data
        if len(self._buf) < 8:
            if not PROTOCOL_HEADER.startswith(self._buf[: len(PROTOCOL_HEADER)]):
                self._reject_header()
            return None
        if self._buf[:8] != PROTOCOL_HEADER:
            self._reject_header()
            return None
        self._header_seen = True
        rest, self._buf = self._buf[8:], b""
        self._send_start()
        return rest

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()
        for ch in self.channels.values():
            ch.wake_queues()

    # -- inbound frames -------------------------------------------------------------

    def _on_frame(self, f: RawFrame) -> None:
        if self._state is _OPENED and f.channel and f.type in _CHANNEL_FRAMES:
            self._to_channel(f)  # the usual frame: what the checks below come to
            return
        if self._state is ConnectionState.CLOSING:
            self._on_frame_closing(f)
            return
        if f.type == FRAME_HEARTBEAT:
            if f.channel != 0:
                raise UnexpectedFrame(f"heartbeat frame on channel {f.channel}")
            return
        if f.type not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY):
            raise FrameError(f"unknown frame type {f.type}")
        if f.channel == 0:
            self._on_channel0_frame(f)
            return
        if self._state is not ConnectionState.OPENED:
            raise ChannelErrorHard("channel frame before the connection is open")
        self._to_channel(f)

    def _to_channel(self, f: RawFrame) -> None:
        """A frame for a channel of the open connection."""
        ch = self.channels.get(f.channel)
        if ch is None:
            self._on_unknown_channel(f)
            return
        if f.type == FRAME_METHOD and ch.is_open:
            if f.payload[:4] == _CHANNEL_OPEN:  # channel.open again
                raise ChannelErrorHard("second 'channel.open' seen", 20, 10)
        ch.on_frame(f)

    def _on_frame_closing(self, f: RawFrame) -> None:
        """Waiting for Connection.CloseOk: everything else is dropped."""
        if f.type == FRAME_METHOD and f.channel == 0:
            m = decode_method(f.payload)
            if isinstance(m, commands.Connection.CloseOk | commands.Connection.Close):
                if isinstance(m, commands.Connection.Close):
                    self.send_method(0, commands.Connection.CloseOk())
                self._abort()

    def _on_channel0_frame(self, f: RawFrame) -> None:
        if f.type != FRAME_METHOD:
            raise UnexpectedFrame(f"content frame of type {f.type} on channel 0")
        cls, meth = method_ids(f.payload)
        if cls != 10:
            raise ChannelErrorHard("expected a connection method on channel 0", cls, meth)
        self._conn_inbox.put_nowait(decode_method(f.payload))

    def _on_unknown_channel(self, f: RawFrame) -> None:
        """A frame on a channel number not in use: only channel.open may come."""
        if f.type != FRAME_METHOD:
            raise ChannelErrorHard(f"expected 'channel.open' on channel {f.channel}")
        m = decode_method(f.payload)
        if isinstance(m, commands.Channel.CloseOk):
            return  # both sides closed it at once: we already forgot it (as RabbitMQ)
        if not isinstance(m, commands.Channel.Open):
            cls, meth = method_ids(f.payload)
            raise ChannelErrorHard("expected 'channel.open'", cls, meth)
        self._open_channel(f.channel)

    def _open_channel(self, number: int) -> None:
        if self.session.max_channels is not None and self.server is not None:
            check_channel_limit(
                self.session.user,
                self.session.max_channels,
                self.server.user_channels(self.session.user) + self.session.channels_elsewhere,
            )
        if len(self.channels) >= self.channel_max:  # a count, as on RabbitMQ
            raise NotAllowed(
                f"number of channels opened ({len(self.channels)}) has reached the "
                f"negotiated channel_max ({self.channel_max})"
            )
        self.channels[number] = self.new_channel(self, number)
        self.send_method(number, commands.Channel.OpenOk())

    @property
    def _opened(self) -> bool:
        return self._state is ConnectionState.OPENED

    # -- channel 0 --------------------------------------------------------------------

    def _send_start(self) -> None:
        self.send_method(0, start_method(self.settings, self.cert_user))

    async def _connection_methods(self) -> None:
        while not self.closed:
            m = await self._conn_inbox.get()
            try:
                await self._with_database(m)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, AMQPError):
                    log.warning("%s: %s failed: %r", self.peer, type(m).__name__, exc)
                self.fail(exc)

    async def _with_database(self, m: Frame) -> None:
        """Login and open need the database: while it is away, retry until shortly before
        the handshake timeout, then close with 320 so the client reconnects later."""
        deadline = time.monotonic() + max(self.settings.handshake_timeout - 1.0, 0.5)
        away = self.broker.database_unavailable
        try:
            await retry(
                lambda: self._on_connection_method(m), away, Backoff(0.1, 1.0, deadline=deadline)
            )
        except Exception as exc:
            if not away(exc):
                raise
            raise ConnectionForced("database unavailable, try again") from exc

    async def _on_connection_method(self, m: Frame) -> None:
        if isinstance(m, commands.Connection.StartOk) and self._state is ConnectionState.START:
            await self._on_start_ok(m)
        elif isinstance(m, commands.Connection.TuneOk) and self._state is ConnectionState.TUNE:
            self._on_tune_ok(m)
        elif isinstance(m, commands.Connection.Open) and self._state is ConnectionState.OPEN:
            await self._on_open(m)
        elif isinstance(m, commands.Connection.Close):
            self.close_reason = f"client closed it ({m.reply_code} {m.reply_text})"
            self._state = ConnectionState.CLOSING
            await self._teardown_channels()
            self.send_method(0, commands.Connection.CloseOk())
            self._abort()
        elif isinstance(m, commands.Connection.CloseOk):
            self._abort()
        elif isinstance(m, commands.Connection.Blocked | commands.Connection.Unblocked):
            return
        elif isinstance(m, commands.Connection.UpdateSecret) and self._opened:
            # Credentials are checked at login; a refreshed secret (e.g. a new OAuth
            # token) is accepted as RabbitMQ does for its PLAIN users.
            self.send_method(0, commands.Connection.UpdateSecretOk())
        else:
            cls, meth = (m.index >> 16) & 0xFFFF, m.index & 0xFFFF
            raise CommandInvalid(f"unexpected method {m.name} on channel 0", cls, meth)

    async def _on_start_ok(self, m: commands.Connection.StartOk) -> None:
        props = m.client_properties if isinstance(m.client_properties, dict) else {}
        self._client_properties = props
        caps = ClientCapabilities.of(props)
        self.cancel_notify = caps.cancel_notify
        self.blocked_notify = caps.blocked_notify
        self.mechanism = m.mechanism
        user = await login(self.broker, m, self.cert_user, self.peer, caps.close_on_failure)
        if user is None:
            self._abort()  # refused, and the client does not understand a 403 close
            return
        self._user = user
        self._state = ConnectionState.TUNE
        self.send_method(0, tune_method(self.settings))

    def _on_tune_ok(self, m: commands.Connection.TuneOk) -> None:
        """A refused tune-ok is logged and the socket closed without a close method, as
        RabbitMQ does (``handshake.tune_ok_refusal`` says which are refused)."""
        refusal = tune_ok_refusal(m, self.settings)
        if refusal:
            log.error("%s: failed to negotiate connection parameters: %s", self.peer, refusal)
            self._abort()
            return
        self.frame_max = m.frame_max
        self._reader.frame_max = self.frame_max
        self.channel_max = m.channel_max
        self.heartbeat = m.heartbeat
        self._state = ConnectionState.OPEN

    async def _on_open(self, m: commands.Connection.Open) -> None:
        assert self._user is not None
        try:
            self.session = await self.broker.open_session(
                self._user[0],
                self._user[1],
                m.virtual_host or "/",
                peer=self.peer,
                client_properties=self._client_properties,
                details={
                    "name": self.name,
                    "peer_port": self.peer_port,
                    "host": str(self.local[0]),
                    "port": int(self.local[1]),
                    "tls": self.tls,
                    "auth_mechanism": self.mechanism,
                    "frame_max": self.frame_max,
                    "channel_max": self.channel_max,
                    "heartbeat": self.heartbeat,
                },
            )
        except AMQPError as exc:
            exc.class_id, exc.method_id = 10, 40
            raise
        self._state = ConnectionState.OPENED
        log.info(
            "connection %s: user '%s' authenticated and granted access to vhost '%s'%s",
            self.name,
            self._user[1],
            m.virtual_host or "/",
            f" (connection_name {self._client_properties.get('connection_name')!r})"
            if self._client_properties.get("connection_name")
            else "",
        )
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self.send_method(0, commands.Connection.OpenOk())
        if self.heartbeat:
            self._hb_task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def _heartbeats(self) -> None:
        interval = max(self.heartbeat / 2, 0.5)
        while not self.closed:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self.flow is not None and self.flow.blocked:
                self._last_recv = now  # we stopped reading: silence is ours, not the peer's
            if now - self._last_recv > 2 * self.heartbeat:
                log.info("missed heartbeats from %s; closing", self.peer)
                self._abort()
                return
            if now - self._last_sent >= interval * 0.9 and self.transport is not None:
                self.transport.write(heartbeat_frame())
                self._last_sent = now

    def _handshake_timeout(self) -> None:
        if self._state is not ConnectionState.OPENED:
            self._abort()

    def _reject_header(self) -> None:
        """Not AMQP 0-9-1: answer with the header we speak, then close (as the spec says)."""
        if self.transport is not None:
            self.transport.write(PROTOCOL_HEADER)
            self.transport.close()
        self.closed = True

    # -- outbound -----------------------------------------------------------------------

    def send_method(self, channel: int, method: Frame) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(encode_method(channel, method))
        self._last_sent = time.monotonic()

    def write_frames(self, frames: Buffers) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.writelines(frames)
        self._last_sent = time.monotonic()

    def pause_reading(self, reason: int) -> None:
        """Stop reading the socket; ``reason`` is a channel number, or BLOCKED."""
        if self.flow is not None:
            self.flow.pause_reading(reason)

    def resume_reading(self, reason: int) -> None:
        if self.flow is not None and self.flow.resume_reading(reason):
            self._last_recv = time.monotonic()

    # -- the rest of the channels' link ------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self.flow is not None and self.flow.write_paused

    @property
    def closing(self) -> bool:
        return self.closed or self._state is ConnectionState.CLOSING

    @property
    def max_message_size(self) -> int:
        return self.settings.max_message_size

    def mark_publisher(self) -> None:
        if not self.publisher:
            self.publisher = True
            if self.broker.publishing_blocked:
                self.set_blocked(True)

    def set_blocked(self, blocked: bool) -> None:
        """Publish backlog over its limit (the database is away or slow): hold publishers.

        Only connections that publish are paused, and those that asked for it are
        told with connection.blocked / unblocked, as RabbitMQ does."""
        if self.closed or not self.publisher or self._state is not ConnectionState.OPENED:
            return
        assert self.flow is not None
        if blocked and not self.flow.blocked:
            if self.blocked_notify:
                self.send_method(
                    0, commands.Connection.Blocked(reason="publish backlog: database unavailable")
                )
            self.pause_reading(BLOCKED)
        elif not blocked and self.flow.blocked:
            if self.blocked_notify:
                self.send_method(0, commands.Connection.Unblocked())
            self.resume_reading(BLOCKED)

    # -- errors and closing ---------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Close the whole connection with the error (a soft one escalates to 503)."""
        closing = close_frame(self.broker.amqp_error(exc), 0)
        if self.closed or self._state is ConnectionState.CLOSING:
            return
        self._state = ConnectionState.CLOSING
        self._finish_received = False
        self.close_reason = f"the broker closed it: {closing.error.reply_text}"
        self.send_method(0, closing.method)
        loop = asyncio.get_running_loop()
        spawn(self._teardown_channels())
        self._close_timer = loop.call_later(1.0, self._abort)

    async def _teardown_channels(self) -> None:
        """Let the channels finish what they received (connection.close, EOF: a queue
        deleted, a message acked just before), then tear them down."""
        channels = list(self.channels.values())
        finishing = channels if self._finish_received else []
        waits = [asyncio.ensure_future(ch.finish_received()) for ch in finishing if ch.is_open]
        if waits:
            _, late = await asyncio.wait(waits, timeout=CLOSE_FINISH)
            for w in late:
                w.cancel()
        for ch in channels:
            if ch.needs_teardown:
                await ch.teardown_logged()
            ch.stop()

    def forget_channel(self, number: int, channel: object) -> None:
        if self.channels.get(number) is channel:
            del self.channels[number]

    def close_forced(self, text: str = "broker shutdown") -> None:
        """Graceful node shutdown: 320 CONNECTION_FORCED so clients fail over."""
        if self._state is ConnectionState.OPENED:
            self.fail(ConnectionForced(text))
        else:
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._shutdown()

    def _shutdown(self) -> None:
        """Runs once when the socket is gone, however that happened."""
        if self.closed and self._cleanup_task is not None:
            return
        self.closed = True
        if self.flow is not None:
            self.flow.closed = True
        if self.session is not None:
            log.info(
                "closing AMQP connection %s (vhost '%s', user '%s'): %s",
                self.name,
                self.session.vhost_name,
                self.session.user,
                self.close_reason,
            )
            self.broker.session_closing(self.session)
        for t in self._timers:
            t.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._hb_task is not None:
            self._hb_task.cancel()
        if self._conn_task is not None and self._conn_task is not asyncio.current_task():
            self._conn_task.cancel()
            keep(self._conn_task)
        self._cleanup_task = spawn(self._cleanup())

    async def _cleanup(self) -> None:
        try:
            await self._teardown_channels()
            self.channels.clear()
            if self.session is not None:
                await self.broker.close_session(self.session)
        except Exception as exc:
            if not self.broker.outage.report(exc):
                log.exception("connection cleanup failed")
        finally:
            self.registry.discard(self)
