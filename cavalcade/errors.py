"""AMQP reply codes and the exception hierarchy every layer raises.

A ``ChannelError`` (soft) closes only the channel; a ``ConnectionError_`` (hard)
closes the whole connection. The protocol layer turns both into Close methods
with RabbitMQ's reply text form ``CODE_NAME - text``.
"""

from __future__ import annotations

from enum import IntEnum


class ReplyCode(IntEnum):
    """Reply codes of AMQP 0-9-1."""

    REPLY_SUCCESS = 200
    CONTENT_TOO_LARGE = 311
    NO_ROUTE = 312
    NO_CONSUMERS = 313
    CONNECTION_FORCED = 320
    INVALID_PATH = 402
    ACCESS_REFUSED = 403
    NOT_FOUND = 404
    RESOURCE_LOCKED = 405
    PRECONDITION_FAILED = 406
    FRAME_ERROR = 501
    SYNTAX_ERROR = 502
    COMMAND_INVALID = 503
    CHANNEL_ERROR = 504
    UNEXPECTED_FRAME = 505
    RESOURCE_ERROR = 506
    NOT_ALLOWED = 530
    NOT_IMPLEMENTED = 540
    INTERNAL_ERROR = 541


class AMQPError(Exception):
    """An error with an AMQP reply code; ``text`` is the part after ``CODE_NAME - ``."""

    code: ReplyCode = ReplyCode.INTERNAL_ERROR
    hard: bool = False

    def __init__(self, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        """RabbitMQ's form: ``NOT_FOUND - no queue 'q' in vhost '/'``."""
        return f"{self.code.name} - {self.text}"[:255]


class ChannelError(AMQPError):
    """A soft error: the channel is closed, the connection lives on."""


class ConnectionError_(AMQPError):  # trailing underscore: avoid shadowing the builtin
    """A hard error: the whole connection is closed."""

    hard = True


def _soft(name: str, code: ReplyCode) -> type[ChannelError]:
    return type(name, (ChannelError,), {"code": code, "__doc__": f"Soft error {code.name}."})


def _hard(name: str, code: ReplyCode) -> type[ConnectionError_]:
    return type(name, (ConnectionError_,), {"code": code, "__doc__": f"Hard error {code.name}."})


ContentTooLarge = _soft("ContentTooLarge", ReplyCode.CONTENT_TOO_LARGE)
AccessRefused = _soft("AccessRefused", ReplyCode.ACCESS_REFUSED)
NotFound = _soft("NotFound", ReplyCode.NOT_FOUND)
ResourceLocked = _soft("ResourceLocked", ReplyCode.RESOURCE_LOCKED)
PreconditionFailed = _soft("PreconditionFailed", ReplyCode.PRECONDITION_FAILED)

ConnectionForced = _hard("ConnectionForced", ReplyCode.CONNECTION_FORCED)
InvalidPath = _hard("InvalidPath", ReplyCode.INVALID_PATH)
ConnectionAccessRefused = _hard("ConnectionAccessRefused", ReplyCode.ACCESS_REFUSED)
FrameError = _hard("FrameError", ReplyCode.FRAME_ERROR)
SyntaxError_ = _hard("SyntaxError_", ReplyCode.SYNTAX_ERROR)
CommandInvalid = _hard("CommandInvalid", ReplyCode.COMMAND_INVALID)
ChannelErrorHard = _hard("ChannelErrorHard", ReplyCode.CHANNEL_ERROR)
UnexpectedFrame = _hard("UnexpectedFrame", ReplyCode.UNEXPECTED_FRAME)
ResourceError = _hard("ResourceError", ReplyCode.RESOURCE_ERROR)
NotAllowed = _hard("NotAllowed", ReplyCode.NOT_ALLOWED)
NotImplemented_ = _hard("NotImplemented_", ReplyCode.NOT_IMPLEMENTED)
InternalError = _hard("InternalError", ReplyCode.INTERNAL_ERROR)


class SchemaNotReady(Exception):
    """The database schema is missing, behind or ahead of the code's head revision."""
