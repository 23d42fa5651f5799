"""The amqps listener's TLS context and SASL EXTERNAL (the user is the client
certificate's CN, as rabbitmq_auth_mechanism_ssl takes it)."""

from __future__ import annotations

import ssl
from typing import Any

from cavalcade.settings import Settings


class TLSConfigError(ValueError):
    """The certificate, key or CA cannot be loaded."""


def server_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2 or later; peer verification as ``--tls-verify-peer`` /
    ``--tls-fail-if-no-peer-cert`` say (RabbitMQ's ``verify_peer`` / ``fail_if_no_peer_cert``)."""
    if not settings.tls_cert or not settings.tls_key:
        raise TLSConfigError("--tls-cert and --tls-key are needed for --tls-port")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        if settings.tls_ca:
            ctx.load_verify_locations(str(settings.tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the TLS certificate, key or CA: {exc}") from exc
    if settings.tls_verify_peer or settings.tls_fail_if_no_peer_cert:
        if not settings.tls_ca:
            raise TLSConfigError("--tls-verify-peer needs --tls-ca")
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_fail_if_no_peer_cert else ssl.CERT_OPTIONAL
        )
    return ctx


def peer_common_name(ssl_object: Any) -> str | None:
    """The CN of a verified client certificate (None: no verified certificate)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
