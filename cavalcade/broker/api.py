"""The port the protocol layer depends on: exactly what ``cavalcade/protocol/*`` may call
on the broker, as ``typing.Protocol``s, and the value types it needs.

The protocol imports nothing else from the broker (and nothing from storage), so a
protocol test can pass any object with these methods as its broker.
:class:`cavalcade.broker.service.Broker` is the one real implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cavalcade.domain.properties import Properties
from cavalcade.storage.records import ClaimedMessage
from cavalcade.storage.retry import Backoff, retry

from .dispatch import CLAIM_CAP, DeliveryTarget
from .limits import check_channel_limit
from .queues import DIRECT_REPLY_TO, DeclaredQueue
from .sessions import Session

__all__ = [
    "CLAIM_CAP",
    "Backoff",
    "DIRECT_REPLY_TO",
    "BrokerPort",
    "ClaimedMessage",
    "Consuming",
    "DeclaredQueue",
    "DeliveryTarget",
    "Entities",
    "Flow",
    "Publishing",
    "Session",
    "Sessions",
    "check_channel_limit",
    "retry",
]


class OutageLog(Protocol):
    """The node's one log of database outages."""

    def report(self, exc: BaseException) -> bool:
        """Note ``exc``; True if it means "the database is away" (retry quietly)."""
        ...


class Stats(Protocol):
    """The node statistics the protocol feeds."""

    def confirmed(self, n: int) -> None: ...


class Sessions(Protocol):
    """Login and vhost sessions (connection.open and its end)."""

    def next_id(self) -> int: ...

    async def authenticate(
        self, username: str, password: str, peer: str | None
    ) -> tuple[int, str]: ...

    async def authenticate_external(self, username: str, peer: str | None) -> tuple[int, str]: ...

    async def open_session(
        self,
        user_id: int,
        user: str,
        vhost_name: str,
        peer: str | None = None,
        client_properties: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Session: ...

    def session_closing(self, session: Session) -> None: ...

    async def close_session(self, session: Session) -> None: ...


class Entities(Protocol):
    """Exchanges, queues and bindings."""

    async def declare_exchange(
        self,
        s: Session,
        name: str,
        type_: str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None: ...

    async def delete_exchange(self, s: Session, name: str, if_unused: bool) -> None: ...

    async def bind_exchange(
        self,
        s: Session,
        destination: str,
        source: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None: ...

    async def declare_queue(
        self,
        s: Session,
        name: str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> DeclaredQueue: ...

    async def bind_queue(
        self,
        s: Session,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any],
        unbind: bool = False,
    ) -> None: ...

    async def purge_queue(self, s: Session, name: str) -> int: ...

    async def delete_queue(self, s: Session, name: str, if_unused: bool, if_empty: bool) -> int: ...


class Publishing(Protocol):
    """basic.publish: the checks, then the hand-over to the write batch."""

    def check_publish(self, s: Session, exchange: str) -> None: ...

    async def check_exchange(self, s: Session, exchange: str) -> None: ...

    def check_exchange_cached(self, s: Session, exchange: str) -> bool: ...

    def check_message(self, props: Properties) -> None: ...

    def publish(
        self,
        s: Session,
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
        waited: bool = True,
    ) -> asyncio.Future[int]:
        """``waited``: a client waits for the commit (see broker/gathering.py)."""
        ...


class Consuming(Protocol):
    """Consumers (delivery targets), basic.get and settling deliveries."""

    async def reply_queue(self, s: Session) -> str: ...

    async def consume(
        self, s: Session, queue: str, target: DeliveryTarget, exclusive: bool
    ) -> int: ...

    def is_single_active(self, s: Session, queue_id: int) -> bool: ...

    async def detach(self, queue_id: int, target: DeliveryTarget) -> None: ...

    async def cancel(self, s: Session, queue_id: int, target: DeliveryTarget) -> None: ...

    async def get(
        self, s: Session, queue: str, no_ack: bool, channel_key: int
    ) -> tuple[ClaimedMessage, int] | None: ...

    def credit_freed(self, queue_id: int) -> None: ...

    def ack(self, ids: Sequence[int], queue_ids: Sequence[int] = ()) -> None: ...

    def requeue(self, messages: Sequence[tuple[int, int]]) -> None: ...

    def discard(self, messages: Sequence[tuple[int, int]]) -> None: ...


class Flow(Protocol):
    """Back-pressure, commits, and errors as the database causes them."""

    @property
    def outage(self) -> OutageLog: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def publishing_blocked(self) -> bool: ...

    async def flush(self) -> None: ...

    def hurry(self) -> None: ...

    def attach(
        self,
        held: Callable[[], set[int]],
        on_blocked: Callable[[bool], None],
        describe_connections: Callable[[], list[dict[str, Any]]] | None = None,
        blocked_connections: Callable[[], int] | None = None,
    ) -> None: ...

    def amqp_error(self, exc: BaseException) -> BaseException: ...

    def database_unavailable(self, exc: BaseException) -> bool: ...


class BrokerPort(Sessions, Entities, Publishing, Consuming, Flow, Protocol):
    """Everything the protocol layer may call on the broker."""
