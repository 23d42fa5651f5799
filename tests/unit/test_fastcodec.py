"""The hand decoders of Basic.Publish and Basic.Ack agree with pamqp, or step aside."""

from __future__ import annotations

import pytest
from pamqp import commands
from pamqp.base import Frame

from cavalcade.errors import FrameError
from cavalcade.protocol.fastcodec import decode_hot
from cavalcade.protocol.framing import decode_method, encode_method, unchecked


def _payload(method: Frame) -> bytes:
    return encode_method(1, method)[7:-1]


def _pamqp(payload: bytes) -> Frame:
    method = commands.INDEX_MAPPING[int.from_bytes(payload[:4], "big")]()
    method.unmarshal(payload[4:])
    return method


def _fields(method: Frame) -> dict[str, object]:
    return {name: getattr(method, name) for name in method.__slots__}


@pytest.mark.parametrize(
    "method",
    [
        commands.Basic.Publish(exchange="", routing_key="q"),
        commands.Basic.Publish(exchange="amq.topic", routing_key="a.b.c", mandatory=True),
        commands.Basic.Publish(exchange="x", routing_key="", immediate=True, mandatory=True),
        unchecked(
            commands.Basic.Publish,
            ticket=0,
            exchange="ex ü",
            routing_key="ключ" * 20,
            mandatory=False,
            immediate=False,
        ),
        commands.Basic.Ack(delivery_tag=1),
        commands.Basic.Ack(delivery_tag=2**63 - 1, multiple=True),
    ],
)
def test_same_fields_as_pamqp(method: Frame) -> None:
    payload = _payload(method)
    fast = decode_hot(payload)
    assert type(fast) is type(method)
    assert _fields(fast) == _fields(_pamqp(payload)) == _fields(method)
    assert _fields(decode_method(payload)) == _fields(method)


def test_other_methods_and_odd_payloads_go_to_pamqp() -> None:
    publish = _payload(commands.Basic.Publish(exchange="ex", routing_key="rk"))
    assert decode_hot(_payload(commands.Basic.Qos(prefetch_count=5))) is None
    for cut in range(len(publish)):  # truncated anywhere, bits byte included
        assert decode_hot(publish[:cut]) is None
    assert decode_hot(_payload(commands.Basic.Ack(delivery_tag=5))[:12]) is None
    bad_utf8 = publish[:7] + b"\xff\xfe" + publish[9:]
    assert decode_hot(bad_utf8) is None
    with pytest.raises(FrameError, match="Malformed UTF-8"):
        decode_method(bad_utf8)
