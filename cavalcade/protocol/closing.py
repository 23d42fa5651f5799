"""The one place where an exception becomes Channel.Close or Connection.Close."""

from __future__ import annotations

from pamqp import commands

from cavalcade.errors import AMQPError, InternalError


def close_method(exc: AMQPError) -> commands.Channel.Close | commands.Connection.Close:
    """Hard errors (and anything on channel 0) close the connection, soft ones the channel."""
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
