"""Frames of an open channel in; whole methods out, a publish with its properties and body."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from pamqp import commands
from pamqp.base import Frame

from cavalcade.errors import AMQPError, PreconditionFailed, UnexpectedFrame

from .framing import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    RawFrame,
    decode_method,
    parse_content_header,
)
from .link import Link

Content = tuple[bytes, bytes]  # property bytes as received, body


class ContentAssembler:
    """Holds a basic.publish until its header and body frames have come (synchronous:
    runs in data_received); hands each complete method to ``enqueue``."""

    def __init__(
        self,
        link: Link,
        enqueue: Callable[[Frame, Content | None], None],
        fail_soon: Callable[[AMQPError], None],
    ) -> None:
        self.link = link
        self._enqueue = enqueue
        self._fail_soon = fail_soon
        self._method: commands.Basic.Publish | None = None
        self._props = b""
        self._body_size = 0
        self._body: bytes | bytearray = b""
        self._body_got = 0
        self._discarding = False

    def on_frame(self, f: RawFrame) -> None:
        t = f.type
        if t == FRAME_BODY:
            self._on_body_frame(f)
        elif t == FRAME_HEADER:
            self._on_header_frame(f)
        elif t == FRAME_METHOD:
            self._on_method_frame(f)

    def _on_method_frame(self, f: RawFrame) -> None:
        if self._method is not None:
            raise UnexpectedFrame(
                "expected content header for class 60, got non content header frame instead",
                60,
                40,
            )
        method = decode_method(f.payload)
        if isinstance(method, commands.Basic.Publish):
            self._method = method
            self.link.mark_publisher()
            return
        if isinstance(method, commands.Channel.CloseOk):
            return
        self._enqueue(method, None)

    def _on_header_frame(self, f: RawFrame) -> None:
        if self._method is None:
            raise UnexpectedFrame("expected method frame, got non method frame instead")
        class_id, size, props = parse_content_header(f.payload)
        if class_id != 60:
            raise UnexpectedFrame(
                f"expected content header for class 60, got one for class {class_id} instead",
                60,
                40,
            )
        limit = self.link.max_message_size
        if size > limit:
            self._method = None
            self._discarding = True
            self._fail_soon(
                PreconditionFailed(
                    f"message size {size} is larger than configured max size {limit}",
                    60,
                    40,
                )
            )
            return
        self._props, self._body_size, self._body, self._body_got = props, size, b"", 0
        if size == 0:
            self._complete_publish()
        else:
            self._body_size = size

    def _on_body_frame(self, f: RawFrame) -> None:
        if self._discarding:
            return  # the body of a refused message: the channel is about to close
        if self._method is None:
            raise UnexpectedFrame("expected method frame, got non method frame instead")
        if self._body_size == 0:
            raise UnexpectedFrame(
                "expected content header for class 60, got non content header frame instead",
                60,
                40,
            )
        if not self._body_got:
            self._body = f.payload  # most bodies are one frame
        else:
            # Appended in place (a large bytearray grows by remapping its pages), not
            # joined at the end: a join holds the body twice while it copies.
            if isinstance(self._body, bytes):
                self._body = bytearray(self._body)
            self._body += f.payload
        self._body_got += len(f.payload)
        if self._body_got >= self._body_size:
            if self._body_got > self._body_size:
                raise UnexpectedFrame("content body larger than announced in its header")
            self._complete_publish()

    def _complete_publish(self) -> None:
        method = self._method
        # A bytearray body (several frames) goes on as bytes: it is read, sliced, sent and
        # stored through the buffer protocol, never hashed or changed, and a copy to
        # bytes would hold it twice (issue 13: node memory under 2x a large body).
        body = cast(bytes, self._body)
        self._method, self._body, self._body_size, self._body_got = None, b"", 0, 0
        assert method is not None
        self._enqueue(method, (self._props, body))
