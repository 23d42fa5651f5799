"""The one place where an exception becomes Channel.Close or Connection.Close."""

from __future__ import annotations

from dataclasses import dataclass

from pamqp import commands

from cavalcade.errors import AMQPError, CommandInvalid, InternalError

from .framing import encode_method


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """What to send for an error: Channel.Close on ``channel``, or (``channel`` 0)
    Connection.Close, which closes the whole connection."""

    channel: int
    method: commands.Channel.Close | commands.Connection.Close
    error: AMQPError

    @property
    def closes_connection(self) -> bool:
        return self.channel == 0

    def encode(self) -> bytes:
        return encode_method(self.channel, self.method)


def close_frame(exc: BaseException, channel: int) -> CloseFrame:
    """The close frame for ``exc`` raised on ``channel``: hard errors close the connection;
    a soft error on channel 0 escalates to a connection close with 503 COMMAND_INVALID
    (there is no channel to close), as LavinMQ does."""
    err = as_amqp_error(exc)
    if channel == 0 and not err.hard:
        err = CommandInvalid(err.text)
    if err.hard:
        return CloseFrame(0, close_method(err), err)
    return CloseFrame(channel, close_method(err), err)


def close_method(exc: AMQPError) -> commands.Channel.Close | commands.Connection.Close:
    """Hard errors close the connection, soft ones the channel."""
    if exc.hard:
        return commands.Connection.Close(
            reply_code=int(exc.code),
            reply_text=exc.reply_text,
            class_id=exc.class_id,
            method_id=exc.method_id,
        )
    return commands.Channel.Close(
        reply_code=int(exc.code),
        reply_text=exc.reply_text,
        class_id=exc.class_id,
        method_id=exc.method_id,
    )


def as_amqp_error(exc: BaseException) -> AMQPError:
    """Any unexpected exception is an INTERNAL_ERROR that closes the connection. Its text
    stays in the node's log (the caller logs it): it may carry database or file details."""
    if isinstance(exc, AMQPError):
        return exc
    return InternalError("internal error")
