"""A channel's direct reply-to consumer (``amq.rabbitmq.reply-to``): at most one, no-ack."""

from __future__ import annotations

from cavalcade.broker.api import BrokerPort, Session
from cavalcade.domain.properties import Properties, parse_properties, rewrite_properties
from cavalcade.errors import PreconditionFailed


class DirectReplyTo:
    """The channel's private reply queue, once its reply consumer is set."""

    def __init__(self, broker: BrokerPort) -> None:
        self.broker = broker
        self.queue: str | None = None  # our direct reply-to queue, once consumed
        self.tag: str | None = None

    async def consume(self, session: Session, tag: str, no_ack: bool) -> str:
        """basic.consume on amq.rabbitmq.reply-to: the private queue to consume from."""
        if not no_ack:
            raise PreconditionFailed("reply consumer cannot acknowledge", 60, 20)
        if self.queue is not None:
            raise PreconditionFailed("reply consumer already set", 60, 20)
        self.queue = await self.broker.reply_queue(session)
        self.tag = tag
        return self.queue

    def cancelled(self, tag: str | None) -> None:
        """basic.cancel: the reply consumer goes if it is ``tag``."""
        if tag == self.tag:
            self.queue = self.tag = None

    def rewrite(self, raw: bytes) -> tuple[bytes, Properties]:
        """A publish whose reply_to is amq.rabbitmq.reply-to gets our queue's name."""
        if self.queue is None:
            raise PreconditionFailed("fast reply consumer does not exist", 60, 40)
        raw = rewrite_properties(raw, None, False, reply_to=self.queue)
        return raw, parse_properties(raw)
