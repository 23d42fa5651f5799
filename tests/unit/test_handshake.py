"""The handshake's decisions without a socket: capabilities, mechanisms, tune-ok refusals."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands

from cavalcade.errors import ConnectionAccessRefused
from cavalcade.protocol.handshake import (
    ClientCapabilities,
    login,
    mechanisms,
    start_method,
    tune_ok_refusal,
)
from cavalcade.settings import Settings

from .fakes import FakeBroker


def test_capabilities_of_client_properties() -> None:
    assert ClientCapabilities.of({}) == ClientCapabilities(False, False, False)
    assert ClientCapabilities.of({"capabilities": "yes"}) == ClientCapabilities(False, False, False)
    caps = {"consumer_cancel_notify": True, "authentication_failure_close": 1}
    assert ClientCapabilities.of({"capabilities": caps}) == ClientCapabilities(True, False, True)


def test_external_is_offered_only_with_a_certificate() -> None:
    assert mechanisms(None) == "PLAIN AMQPLAIN"
    assert mechanisms("alice") == "PLAIN AMQPLAIN EXTERNAL"
    assert start_method(Settings(), "alice").mechanisms == "PLAIN AMQPLAIN EXTERNAL"


@pytest.mark.parametrize(
    ("channel_max", "frame_max", "refusal"),
    [
        (100, 8192, None),
        (
            0,
            8192,
            "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
        (
            100,
            0,
            "negotiated frame_max = 0 is higher than the maximum allowed value (131072)",
        ),
        (
            100,
            4095,
            "negotiated frame_max = 4095 is lower than the minimum allowed value (4096)",
        ),
    ],
)
def test_tune_ok_refusal(channel_max: int, frame_max: int, refusal: str | None) -> None:
    settings = Settings(channel_max=2047, frame_max=131072)
    m = commands.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max)
    assert tune_ok_refusal(m, settings) == refusal


def _start_ok(mechanism: str, response: str) -> commands.Connection.StartOk:
    return commands.Connection.StartOk(mechanism=mechanism, response=response)


async def test_login() -> None:
    broker: Any = FakeBroker()  # the fake has the broker methods login calls
    plain = _start_ok("PLAIN", "\0guest\0guest")
    assert await login(broker, plain, None, None, False) == (1, "guest")
    wrong = _start_ok("PLAIN", "\0guest\0nope")
    assert await login(broker, wrong, None, None, False) is None  # the socket is closed
    with pytest.raises(ConnectionAccessRefused, match="Login was refused"):
        await login(broker, wrong, None, None, True)
    external = _start_ok("EXTERNAL", "")
    with pytest.raises(ConnectionAccessRefused, match="unsupported authentication mechanism"):
        await login(broker, external, None, None, True)
    assert await login(broker, external, "alice", None, True) == (1, "alice")


@pytest.mark.parametrize(
    ("size", "ok"), [(1, True), (512 * 1024 * 1024, True), (0, False), (2**29 + 1, False)]
)
def test_max_message_size_is_bounded_as_rabbitmq_bounds_it(size: int, ok: bool) -> None:
    """At most 512 MiB, as RabbitMQ's ``max_message_size`` (a stored body is a bytea,
    which holds under 1 GiB; larger would fail at every write, retried for ever)."""
    if ok:
        assert Settings(max_message_size=size).max_message_size == size
    else:
        with pytest.raises(ValueError):
            Settings(max_message_size=size)
