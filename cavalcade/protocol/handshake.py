"""The connection handshake's decisions: what connection.start offers, the SASL login of
start-ok, what tune proposes and which tune-ok is refused. The connection sends and keeps
state; this module decides (no socket, no connection state)."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from typing import Any

from pamqp import commands

from cavalcade import __version__
from cavalcade.broker.api import BrokerPort
from cavalcade.errors import ConnectionAccessRefused
from cavalcade.settings import Settings

from .sasl import MECHANISMS, parse_response

log = logging.getLogger(__name__)

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "consumer_priorities": True,
    "direct_reply_to": True,
}


def mechanisms(cert_user: str | None) -> str:
    """EXTERNAL is offered when the client presented a verified certificate."""
    return f"{MECHANISMS} EXTERNAL" if cert_user else MECHANISMS


def start_method(settings: Settings, cert_user: str | None) -> commands.Connection.Start:
    """connection.start: our properties, capabilities and SASL mechanisms."""
    props: dict[str, Any] = {
        "product": "Cavalcade",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "cluster_name": settings.effective_node_name(),
        "copyright": "Cavalcade contributors",
        "information": "AMQP 0-9-1 on PostgreSQL",
        "capabilities": CAPABILITIES,
    }
    return commands.Connection.Start(
        version_major=0,
        version_minor=9,
        server_properties=props,
        mechanisms=mechanisms(cert_user),
        locales="en_US",
    )


@dataclass(frozen=True, slots=True)
class ClientCapabilities:
    """What the client said it understands, in start-ok's client properties."""

    cancel_notify: bool  # a server-sent basic.cancel
    blocked_notify: bool  # connection.blocked / unblocked
    close_on_failure: bool  # a 403 connection.close after a refused login

    @classmethod
    def of(cls, client_properties: dict[str, Any]) -> ClientCapabilities:
        caps = client_properties.get("capabilities")
        if not isinstance(caps, dict):
            return cls(False, False, False)
        return cls(
            bool(caps.get("consumer_cancel_notify")),
            bool(caps.get("connection.blocked")),
            bool(caps.get("authentication_failure_close")),
        )


async def login(
    broker: BrokerPort,
    m: commands.Connection.StartOk,
    cert_user: str | None,
    peer: str | None,
    close_on_failure: bool,
) -> tuple[int, str] | None:
    """The (user id, user name) of start-ok's credentials. A refused login raises 403 for
    a client that understands it, else it is None: the socket is simply closed (as
    RabbitMQ does)."""
    creds = parse_response(m.mechanism, m.response)
    if m.mechanism not in mechanisms(cert_user).split():
        raise ConnectionAccessRefused(
            f"unsupported authentication mechanism '{m.mechanism}'", 10, 11
        )
    refused = ConnectionAccessRefused(
        f"Login was refused using authentication mechanism {m.mechanism}. "
        "For details see the broker logfile.",
        10,
        11,
    )
    if m.mechanism == "EXTERNAL" and cert_user:
        creds = (cert_user, "")
    if creds is None:
        if not close_on_failure:
            return None
        raise refused
    try:
        if m.mechanism == "EXTERNAL":
            return await broker.authenticate_external(creds[0], peer)
        return await broker.authenticate(creds[0], creds[1], peer)
    except ConnectionAccessRefused as exc:
        log.info("login of %r from %s refused: %s", creds[0], peer, exc.text)
        if not close_on_failure:
            return None
        raise refused from exc


def tune_method(settings: Settings) -> commands.Connection.Tune:
    """connection.tune: our ceilings."""
    return commands.Connection.Tune(
        channel_max=settings.channel_max,
        frame_max=settings.frame_max,
        heartbeat=settings.heartbeat,
    )


def tune_ok_refusal(m: commands.Connection.TuneOk, settings: Settings) -> str | None:
    """Why a tune-ok is refused, or None. The server's proposal is a ceiling, as on
    RabbitMQ: a tune-ok above it (0 means "no limit", also above it) or a frame_max below
    4096 fails the negotiation. The client's heartbeat wins whatever it is."""
    refusal = _tune_refusal("channel_max", m.channel_max, settings.channel_max)
    return refusal or _tune_refusal("frame_max", m.frame_max, settings.frame_max)


def _tune_refusal(name: str, value: int, ceiling: int) -> str | None:
    """RabbitMQ's words for a tune-ok value it refuses, or None."""
    if value == 0 or value > ceiling:
        shown = f"{value} (no limit)" if value == 0 and name == "channel_max" else str(value)
        return f"negotiated {name} = {shown} is higher than the maximum allowed value ({ceiling})"
    if name == "frame_max" and value < 4096:
        return f"negotiated {name} = {value} is lower than the minimum allowed value (4096)"
    return None
