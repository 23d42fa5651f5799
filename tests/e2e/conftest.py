"""Shared fixtures and helpers for the end-to-end suite.

Every scenario runs twice: against Cavalcade and against RabbitMQ. The RabbitMQ
run is the differential check: it proves the test asserts what the reference
broker really does. The session fixtures ``cavalcade_url`` and ``rabbitmq_url``
come from the root ``tests/conftest.py``.

Brokers are shared between tests and never fresh, so every test must use
names from :func:`unique` (or the ``resources`` fixture, which also deletes
them afterwards) and must not assume an empty broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands, constants, frame, header, heartbeat
from pamqp import exceptions as pexc

BROKERS = ["cavalcade", "rabbitmq"]

# Short, so that a broken broker fails a test quickly instead of hanging it.
OP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- #
# Broker selection
# --------------------------------------------------------------------------- #


@pytest.fixture(params=BROKERS)
def amqp_url(request: pytest.FixtureRequest) -> str:
    """AMQP URL of the broker under test; every test runs once per broker."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def broker_name(request: pytest.FixtureRequest, amqp_url: str) -> str:
    """``"cavalcade"`` or ``"rabbitmq"``, matching ``amqp_url``."""
    return request.node.callspec.params["amqp_url"]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    user: str
    password: str
    vhost: str


def parse_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) if path else "/"
    return BrokerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        user=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        vhost=vhost,
    )


@pytest.fixture
def address(amqp_url: str) -> BrokerAddress:
    return parse_url(amqp_url)


def unique(name: str) -> str:
    """A queue/exchange name no other test (or earlier run) uses."""
    return f"e2e.{name}.{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- #
# pika
# --------------------------------------------------------------------------- #


def pika_params(url: str, **overrides: Any) -> pika.ConnectionParameters:
    params = pika.URLParameters(url)
    params.socket_timeout = OP_TIMEOUT
    params.stack_timeout = OP_TIMEOUT * 2
    params.blocked_connection_timeout = OP_TIMEOUT * 2
    params.connection_attempts = 1
    params.retry_delay = 0
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def connect(url: str, **overrides: Any) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika_params(url, **overrides))


def safe_close(conn: pika.BlockingConnection) -> None:
    with contextlib.suppress(Exception):
        if conn.is_open:
            conn.close()


@pytest.fixture
def conn(amqp_url: str) -> Iterator[pika.BlockingConnection]:
    c = connect(amqp_url)
    try:
        yield c
    finally:
        safe_close(c)


@pytest.fixture
def channel(conn: pika.BlockingConnection):
    return conn.channel()


@pytest.fixture
def open_conn(amqp_url: str) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Factory for extra pika connections, all closed at teardown."""
    made: list[pika.BlockingConnection] = []

    def factory(**overrides: Any) -> pika.BlockingConnection:
        c = connect(amqp_url, **overrides)
        made.append(c)
        return c

    try:
        yield factory
    finally:
        for c in made:
            safe_close(c)


class Resources:
    """Hands out unique names and deletes the entities at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str = "q") -> str:
        q = unique(name)
        self.queues.append(q)
        return q

    def exchange(self, name: str = "x") -> str:
        x = unique(name)
        self.exchanges.append(x)
        return x

    def track_queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def cleanup(self) -> None:
        if not (self.queues or self.exchanges):
            return
        try:
            c = connect(self.url)
        except Exception:  # noqa: BLE001 - nothing to clean up without a broker
            return
        try:
            ch = c.channel()
            for kind, names in (("q", self.queues), ("x", self.exchanges)):
                for name in names:
                    try:
                        if kind == "q":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                    except pika.exceptions.ChannelClosed:
                        ch = c.channel()
                    except pika.exceptions.AMQPError:
                        return
        finally:
            safe_close(c)


@pytest.fixture
def resources(amqp_url: str) -> Iterator[Resources]:
    r = Resources(amqp_url)
    try:
        yield r
    finally:
        r.cleanup()


def channel_error(ch, fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """Run ``fn`` and return the ChannelClosedByBroker it causes.

    A round trip on the same channel afterwards surfaces closes caused by
    asynchronous methods (basic.publish, basic.ack, ...).
    """
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        fn(*args, **kwargs)
        ch.exchange_declare("amq.direct", passive=True)
    return ei.value


def connection_error(ch, fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """Like :func:`channel_error` for errors that close the whole connection."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        fn(*args, **kwargs)
        ch.exchange_declare("amq.direct", passive=True)
    return ei.value


def drain(
    conn: pika.BlockingConnection,
    until: Callable[[], bool],
    timeout: float = OP_TIMEOUT,
) -> bool:
    """Process I/O on a blocking connection until ``until()`` or timeout."""
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        conn.process_data_events(time_limit=min(left, 0.1))
    return True


def settle(conn: pika.BlockingConnection, seconds: float = 0.3) -> None:
    """Give the broker a moment to send anything it would (negative checks)."""
    conn.process_data_events(time_limit=seconds)


def get_all(ch, queue: str, limit: int = 10_000) -> list[tuple[Any, Any, bytes]]:
    """basic.get every ready message (auto-ack)."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append((method, props, body))
    return out


def wait_queue_count(ch, queue: str, expected: int, timeout: float = OP_TIMEOUT) -> int:
    """Poll passive declares until the ready count is ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        n = ch.queue_declare(queue, passive=True).method.message_count
        if n == expected or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


# --------------------------------------------------------------------------- #
# aiormq
# --------------------------------------------------------------------------- #


async def aiormq_connect(url: str, timeout: float = OP_TIMEOUT):
    import aiormq

    return await asyncio.wait_for(aiormq.connect(url), timeout)


# --------------------------------------------------------------------------- #
# Raw pamqp client for protocol-level tests
# --------------------------------------------------------------------------- #

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class RawClosed(Exception):
    """The server closed the TCP connection."""


class RawClient:
    """A minimal, blocking AMQP client speaking frames with pamqp.

    It records everything it receives in ``received`` (channel, frame) so tests
    can assert on ordering. Heartbeat frames are skipped by ``recv``.
    """

    def __init__(self, addr: BrokerAddress, timeout: float = OP_TIMEOUT) -> None:
        self.addr = addr
        self.timeout = timeout
        self.sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.received: list[tuple[int, Any]] = []
        self.start: commands.Connection.Start | None = None
        self.tune: commands.Connection.Tune | None = None
        self.frame_max = 131072
        self.last_raw = b""

    # -- bytes ------------------------------------------------------------ #

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, value: Any, channel: int = 0) -> None:
        self.sock.sendall(frame.marshal(value, channel))

    def recv_bytes(self, timeout: float | None = None) -> bytes:
        """Read whatever arrives next; b"" on EOF."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def read_all_until_eof(self, timeout: float | None = None) -> bytes:
        """Everything the server sends until it closes the socket."""
        out = b""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            chunk = self.recv_bytes(max(0.05, deadline - time.monotonic()))
            if not chunk:
                return out
            out += chunk
        raise TimeoutError(f"server did not close the socket; got {out!r}")

    # -- frames ----------------------------------------------------------- #

    def _split_frame(self) -> bytes | None:
        """Cut one complete frame (raw bytes) off the buffer, if there is one."""
        if len(self.buf) < 7:
            return None
        _, _, size = struct.unpack(">BHI", self.buf[:7])
        if len(self.buf) < 8 + size:
            return None
        raw, self.buf = self.buf[: 8 + size], self.buf[8 + size :]
        return raw

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no frame from server")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            raise TimeoutError("no frame from server") from None
        if not chunk:
            raise RawClosed(self.buf)
        self.buf += chunk

    def recv_raw_frame(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """Next frame unparsed: (type, channel, payload). Checks the frame end."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            raw = self._split_frame()
            if raw is not None:
                ftype, channel, _ = struct.unpack(">BHI", raw[:7])
                assert raw[-1] == constants.FRAME_END, f"bad frame end from server: {raw!r}"
                return ftype, channel, raw[7:-1]
            self._fill(deadline)

    def recv(self, timeout: float | None = None, skip_heartbeats: bool = True):
        """Next (channel, frame). Raises RawClosed on EOF, TimeoutError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            raw = self._split_frame()
            if raw is None:
                self._fill(deadline)
                continue
            self.last_raw = raw
            try:
                _, channel, value = frame.unmarshal(raw)
            except pexc.UnmarshalingException as exc:
                raise AssertionError(f"bad frame from server: {exc}; {raw[:64]!r}") from exc
            self.received.append((channel, value))
            if skip_heartbeats and isinstance(value, heartbeat.Heartbeat):
                continue
            return channel, value

    def expect(self, cls: type, timeout: float | None = None, channel: int | None = None):
        ch, value = self.recv(timeout)
        assert isinstance(value, cls), f"expected {cls.__name__}, got {value!r} on ch {ch}"
        if channel is not None:
            assert ch == channel
        return value

    def rpc(self, method: Any, reply: type, channel: int = 1):
        self.send(method, channel)
        return self.expect(reply, channel=channel)

    # -- handshake -------------------------------------------------------- #

    def handshake(
        self,
        heartbeat_: int = 0,
        vhost: str | None = None,
        frame_max: int | None = None,
        channel_max: int | None = None,
    ) -> commands.Connection.OpenOk:
        self.send_raw(PROTOCOL_HEADER)
        self.start = self.expect(commands.Connection.Start)
        response = f"\0{self.addr.user}\0{self.addr.password}"
        self.send(
            commands.Connection.StartOk(
                client_properties={
                    "product": "cavalcade-e2e-raw",
                    "capabilities": {
                        "consumer_cancel_notify": True,
                        "basic.nack": True,
                        "publisher_confirms": True,
                    },
                },
                mechanism="PLAIN",
                response=response,
                locale="en_US",
            )
        )
        self.tune = self.expect(commands.Connection.Tune)
        self.frame_max = frame_max or self.tune.frame_max
        self.send(
            commands.Connection.TuneOk(
                channel_max=channel_max if channel_max is not None else self.tune.channel_max,
                frame_max=self.frame_max,
                heartbeat=heartbeat_,
            )
        )
        self.send(commands.Connection.Open(virtual_host=vhost or self.addr.vhost))
        return self.expect(commands.Connection.OpenOk)

    def open_channel(self, channel: int = 1) -> None:
        self.rpc(commands.Channel.Open(), commands.Channel.OpenOk, channel)

    # -- content ---------------------------------------------------------- #

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: commands.Basic.Properties | None = None,
        mandatory: bool = False,
    ) -> None:
        parts = [
            frame.marshal(
                commands.Basic.Publish(
                    exchange=exchange, routing_key=routing_key, mandatory=mandatory
                ),
                channel,
            ),
            frame.marshal(
                header.ContentHeader(0, len(body), properties or commands.Basic.Properties()),
                channel,
            ),
        ]
        step = self.frame_max - 8
        for i in range(0, len(body), step):
            parts.append(frame.marshal(pbody.ContentBody(body[i : i + step]), channel))
        self.sock.sendall(b"".join(parts))

    def recv_content(self, timeout: float | None = None):
        """Read header + body frames after a deliver/get-ok/return."""
        _, hdr = self.recv(timeout)
        assert isinstance(hdr, header.ContentHeader), hdr
        data = b""
        while len(data) < hdr.body_size:
            _, part = self.recv(timeout)
            assert isinstance(part, pbody.ContentBody), part
            data += part.value
        return hdr.properties, data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture
def raw(address: BrokerAddress) -> Iterator[Callable[..., RawClient]]:
    """Factory for raw clients; sockets are closed at teardown."""
    made: list[RawClient] = []

    def factory(timeout: float = OP_TIMEOUT) -> RawClient:
        c = RawClient(address, timeout)
        made.append(c)
        return c

    try:
        yield factory
    finally:
        for c in made:
            c.close()


def run_sync_sql(dsn: str, statement: str, *args: Any) -> None:
    """One SQL statement on ``dsn``, from synchronous test code."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement, *args)
        finally:
            await conn.close()

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(run())).result()


__all__ = [
    "OP_TIMEOUT",
    "PROTOCOL_HEADER",
    "BrokerAddress",
    "RawClient",
    "RawClosed",
    "Resources",
    "aiormq_connect",
    "channel_error",
    "connect",
    "connection_error",
    "constants",
    "drain",
    "get_all",
    "parse_url",
    "pika_params",
    "run_sync_sql",
    "safe_close",
    "settle",
    "unique",
    "wait_queue_count",
]
