"""The error mapping (soft vs hard, RabbitMQ's reply text) and SASL parsing."""

from __future__ import annotations

import struct

import pytest
from pamqp import commands, encode

from cavalcade.domain.arguments import assert_equivalent, assert_flag, check_reserved
from cavalcade.errors import AccessRefused, FrameError, NotFound, PreconditionFailed
from cavalcade.protocol.closing import as_amqp_error, close_method
from cavalcade.protocol.sasl import parse_response


def test_soft_error_closes_the_channel() -> None:
    m = close_method(NotFound("no queue 'q' in vhost '/'", 50, 10))
    assert isinstance(m, commands.Channel.Close)
    assert (m.reply_code, m.reply_text) == (404, "NOT_FOUND - no queue 'q' in vhost '/'")
    assert (m.class_id, m.method_id) == (50, 10)


def test_hard_error_closes_the_connection() -> None:
    m = close_method(FrameError("bad"))
    assert isinstance(m, commands.Connection.Close) and m.reply_code == 501
    assert m.reply_text == "FRAME_ERROR - bad"


def test_unexpected_exceptions_are_internal_errors() -> None:
    err = as_amqp_error(ValueError("boom"))
    assert err.hard and int(err.code) == 541


def test_inequivalent_texts() -> None:
    with pytest.raises(PreconditionFailed) as e:
        assert_flag("queue", "q", "/", "durable", True, False)
    assert e.value.reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': "
        "received 'true' but current is 'false'"
    )
    with pytest.raises(PreconditionFailed) as e:
        assert_equivalent("queue", "q", "/", {}, {"x-expires": 100}, ("x-expires",))
    assert "received the value '100' of type 'signedint' but current is none" in e.value.text
    with pytest.raises(AccessRefused):
        check_reserved("exchange", "amq.mine")


def test_plain() -> None:
    assert parse_response("PLAIN", "\0guest\0secret") == ("guest", "secret")
    assert parse_response("PLAIN", b"authz\0u\0p") == ("u", "p")
    assert parse_response("PLAIN", "garbage") is None


def test_amqplain() -> None:
    table = encode.field_table({"LOGIN": "guest", "PASSWORD": "pw"})[4:]
    assert parse_response("AMQPLAIN", table) == ("guest", "pw")
    assert parse_response("AMQPLAIN", struct.pack(">B", 9)) is None
    assert parse_response("EXTERNAL", "") is None
