"""The server's tune is a ceiling, as on RabbitMQ: a tune-ok above it (or 0, "no limit"),
or a frame_max under 4096, ends the connection (socket closed, no connection.open-ok); a
client's heartbeat, even above the proposal, is accepted."""

from __future__ import annotations

import pytest
from pamqp import commands

from .conftest import RawClient, RawClosed


def _tune_ok(raw, **kw) -> RawClient:
    c: RawClient = raw(timeout=8)
    c.send_raw(b"AMQP\x00\x00\x09\x01")
    c.expect(commands.Connection.Start)
    c.send(
        commands.Connection.StartOk(
            client_properties={},
            mechanism="PLAIN",
            response=f"\0{c.addr.user}\0{c.addr.password}",
            locale="en_US",
        )
    )
    tune = c.expect(commands.Connection.Tune)
    fields = {"channel_max": tune.channel_max, "frame_max": tune.frame_max, "heartbeat": 0}
    fields.update(kw)
    c.send(commands.Connection.TuneOk(**fields))
    c.send(commands.Connection.Open(virtual_host=c.addr.vhost))
    return c


@pytest.mark.parametrize(
    "fields",
    [
        {"channel_max": 65535},
        {"channel_max": 0},
        {"frame_max": 131073},
        {"frame_max": 0},
        {"frame_max": 4000},
    ],
    ids=[
        "channel_max-above",
        "channel_max-0",
        "frame_max-above",
        "frame_max-0",
        "frame_max-below-min",
    ],
)
def test_tune_ok_above_the_proposal_is_refused(raw, fields):
    c = _tune_ok(raw, **fields)
    with pytest.raises(RawClosed):
        while True:
            _, value = c.recv()
            assert not isinstance(value, commands.Connection.OpenOk), fields


def test_higher_heartbeat_is_accepted(raw):
    c = _tune_ok(raw, heartbeat=600)
    c.expect(commands.Connection.OpenOk)
