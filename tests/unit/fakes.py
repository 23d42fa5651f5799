"""In-process stand-ins for protocol tests: a transport that records bytes, and a broker
that implements the broker methods the protocol layer calls, in memory (no database)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.base import Frame

from cavalcade.broker.service import DeclaredQueue, Session
from cavalcade.broker.topology import VhostTopology
from cavalcade.domain.properties import Properties
from cavalcade.errors import ConnectionAccessRefused, NotAllowed, NotFound
from cavalcade.protocol.channel import Channel
from cavalcade.protocol.connection import AMQPConnection
from cavalcade.protocol.framing import PROTOCOL_HEADER
from cavalcade.settings import Settings
from cavalcade.storage.records import ClaimedMessage


class FakeTransport:
    """Records what the protocol writes and how it drives the socket."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written = bytearray()
        self.closing = False
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.limits: tuple[int, int] | None = None
        self._extra: dict[str, Any] = {
            "peername": peer,
            "sockname": ("127.0.0.1", 5672),
            "ssl_object": None,
        }

    def take(self) -> bytes:
        """What was written since the last take."""
        out = bytes(self.written)
        self.written.clear()
        return out

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resumes += 1

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class FakeOutage:
    def __init__(self) -> None:
        self.reported: list[BaseException] = []

    def report(self, exc: BaseException) -> bool:
        self.reported.append(exc)
        return False


class FakeStats:
    def __init__(self) -> None:
        self.confirms = 0

    def confirmed(self, n: int) -> None:
        self.confirms += n


class FakeBatcher:
    def __init__(self) -> None:
        self.blocked = False
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


@dataclass
class FakeQueue:
    name: str
    messages: list[ClaimedMessage] = field(default_factory=list)
    consumers: list[Any] = field(default_factory=list)
    id: int = 0


class FakeBroker:
    """The broker as the protocol calls it: users, one vhost "/", queues in a dict;
    publishes are "stored" when the test resolves their futures (or at once)."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = users if users is not None else {"guest": "guest"}
        self.batcher = FakeBatcher()
        self.hurried = 0  # hurry() calls: a client waits for the publishes queued
        self.outage = FakeOutage()
        self.stats = FakeStats()
        self.queues: dict[str, FakeQueue] = {}
        self.exchanges: set[str] = {"", "amq.direct", "amq.topic", "amq.fanout"}
        self.published: list[tuple[str, str, Properties, bytes]] = []
        self.pending: list[asyncio.Future[int]] = []
        self.auto_store = True  # resolve publish futures at once (routed to one queue)
        self.acked: list[int] = []
        self.requeued: list[tuple[int, int]] = []
        self.discarded: list[tuple[int, int]] = []
        self.woken: list[int] = []
        self.sessions_open: list[Session] = []
        self.sessions_closed: list[Session] = []
        self.calls: list[str] = []
        self._id = 0

    # -- flow ------------------------------------------------------------------

    @property
    def publishing_blocked(self) -> bool:
        return self.batcher.blocked

    async def flush(self) -> None:
        await self.batcher.flush()

    def hurry(self) -> None:
        self.hurried += 1

    # -- errors, ids -----------------------------------------------------------

    @staticmethod
    def amqp_error(exc: BaseException) -> BaseException:
        return exc

    @staticmethod
    def database_unavailable(exc: BaseException) -> bool:
        return False

    def next_id(self) -> int:
        self._id += 1
        return self._id

    # -- sessions ----------------------------------------------------------------

    async def authenticate(self, username: str, password: str, peer: str | None) -> tuple[int, str]:
        if self.users.get(username) != password:
            raise ConnectionAccessRefused(f"user '{username}' - invalid credentials")
        return 1, username

    async def authenticate_external(self, username: str, peer: str | None) -> tuple[int, str]:
        return 1, username

    async def open_session(
        self,
        user_id: int,
        user: str,
        vhost_name: str,
        peer: str | None = None,
        client_properties: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Session:
        if vhost_name != "/":
            raise NotAllowed(f"vhost {vhost_name} not found")
        everything = re.compile(".*")
        s = Session(
            id=self.next_id(),
            user=user,
            user_id=user_id,
            vhost=VhostTopology(id=1, name="/"),
            permissions=(everything, everything, everything),
            vhost_name="/",
        )
        self.sessions_open.append(s)
        return s

    def session_closing(self, session: Session) -> None:
        self.calls.append("session_closing")

    async def close_session(self, session: Session) -> None:
        self.sessions_closed.append(session)

    # -- entities ------------------------------------------------------------------

    async def declare_exchange(self, s: Session, name: str, *args: Any) -> None:
        self.exchanges.add(name)

    async def delete_exchange(self, s: Session, name: str, if_unused: bool) -> None:
        self.exchanges.discard(name)

    async def bind_exchange(self, s: Session, *args: Any, unbind: bool = False) -> None:
        self.calls.append("unbind_exchange" if unbind else "bind_exchange")

    async def declare_queue(
        self,
        s: Session,
        name: str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> DeclaredQueue:
        name = name or f"amq.gen-{self.next_id()}"
        q = self.queues.get(name)
        if q is None:
            if passive:
                raise NotFound(f"no queue '{name}' in vhost '/'")
            q = self.queues[name] = FakeQueue(name, id=self.next_id())
        return DeclaredQueue(name, len(q.messages), len(q.consumers))

    def _queue(self, name: str) -> FakeQueue:
        q = self.queues.get(name)
        if q is None:
            raise NotFound(f"no queue '{name}' in vhost '/'")
        return q

    async def bind_queue(self, s: Session, queue: str, *args: Any, unbind: bool = False) -> None:
        self._queue(queue)

    async def purge_queue(self, s: Session, name: str) -> int:
        q = self._queue(name)
        n = len(q.messages)
        q.messages.clear()
        return n

    async def delete_queue(self, s: Session, name: str, if_unused: bool, if_empty: bool) -> int:
        q = self.queues.pop(name)
        for c in list(q.consumers):
            c.cancel_by_server()
        return len(q.messages)

    # -- publishing ------------------------------------------------------------------

    def check_publish(self, s: Session, exchange: str) -> None:
        return None

    async def check_exchange(self, s: Session, exchange: str) -> None:
        if exchange not in self.exchanges:
            raise NotFound(f"no exchange '{exchange}' in vhost '/'")

    def check_exchange_cached(self, s: Session, exchange: str) -> bool:
        return exchange in self.exchanges  # else check_exchange (404) from the channel task

    @staticmethod
    def check_message(props: Properties) -> None:
        return None

    def publish(
        self,
        s: Session,
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
        waited: bool = True,
    ) -> asyncio.Future[int]:
        self.published.append((exchange, routing_key, props, body))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.auto_store:
            fut.set_result(1 if routing_key in self.queues else 0)
        else:
            self.pending.append(fut)
        return fut

    # -- consuming -------------------------------------------------------------------

    async def reply_queue(self, s: Session) -> str:
        return "amq.rabbitmq.reply-to.fake"

    async def consume(self, s: Session, queue: str, target: Any, exclusive: bool) -> int:
        q = self._queue(queue)
        q.consumers.append(target)
        return q.id

    def is_single_active(self, s: Session, queue_id: int) -> bool:
        return False

    def _by_id(self, queue_id: int) -> FakeQueue | None:
        return next((q for q in self.queues.values() if q.id == queue_id), None)

    async def detach(self, queue_id: int, target: Any) -> None:
        q = self._by_id(queue_id)
        if q is not None and target in q.consumers:
            q.consumers.remove(target)

    async def cancel(self, s: Session, queue_id: int, target: Any) -> None:
        await self.detach(queue_id, target)

    def credit_freed(self, queue_id: int) -> None:
        self.woken.append(queue_id)

    async def get(
        self, s: Session, queue: str, no_ack: bool, channel_key: int
    ) -> tuple[ClaimedMessage, int] | None:
        q = self._queue(queue)
        if not q.messages:
            return None
        msg = q.messages.pop(0)
        return msg, len(q.messages)

    def ack(self, ids: Any, queue_ids: Any = ()) -> None:
        self.acked += list(ids)

    def requeue(self, messages: Any) -> None:
        self.requeued += list(messages)

    def discard(self, messages: Any) -> None:
        self.discarded += list(messages)


def method_bytes(channel: int, method: Frame) -> bytes:
    """A method frame as pamqp (an encoder independent of ours) writes it."""
    return bytes(pamqp_frame.marshal(method, channel))


async def until(predicate: Callable[[], bool], turns: int = 200) -> None:
    """Give the event loop turns until ``predicate`` holds (no wall-clock waiting)."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


class Client:
    """Drives one AMQPConnection over a FakeTransport, as a client would."""

    def __init__(self, settings: Settings | None = None, broker: FakeBroker | None = None) -> None:
        self.broker = broker or FakeBroker()
        self.settings = settings or Settings(heartbeat=0)
        self.registry: set[AMQPConnection[Channel]] = set()
        self.conn = AMQPConnection(
            self.broker,  # type: ignore[arg-type]  # the fake has the methods the protocol calls
            self.settings,
            self.registry,
            new_channel=Channel,
        )
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def send_method(self, channel: int, method: Frame) -> None:
        self.send(method_bytes(channel, method))

    async def reply(self) -> bytes:
        """The next bytes the server writes (after the connection task has run)."""
        await until(lambda: bool(self.transport.written))
        return self.transport.take()

    async def handshake(self, frame_max: int = 131072, heartbeat: int = 0) -> None:
        """Header, start-ok, tune-ok and open: the connection is open, output taken."""
        self.send(PROTOCOL_HEADER)
        self.transport.take()
        self.send_method(
            0,
            commands.Connection.StartOk(
                client_properties={"capabilities": {"consumer_cancel_notify": True}},
                mechanism="PLAIN",
                response="\0guest\0guest",
            ),
        )
        await self.reply()
        self.send_method(
            0,
            commands.Connection.TuneOk(channel_max=2047, frame_max=frame_max, heartbeat=heartbeat),
        )
        self.send_method(0, commands.Connection.Open(virtual_host="/"))
        await self.reply()

    async def open_channel(self, number: int = 1) -> None:
        self.send_method(number, commands.Channel.Open())
        assert self.transport.take() == method_bytes(number, commands.Channel.OpenOk())

    async def close(self) -> None:
        """End the connection as a vanished socket would; wait for the cleanup."""
        self.conn.connection_lost(None)
        await until(lambda: not self.registry)
