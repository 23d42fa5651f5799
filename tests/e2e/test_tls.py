"""amqps: real clients over real TLS (certificates made here with ``cryptography``),
SASL EXTERNAL from a verified client certificate's CN, a TLS-only node."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import kombu
import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cavalcade.broker.admin import Admin
from tests.conftest import free_port, run_sync


def _cert(
    cn: str, issuer: tuple[Any, x509.Name] | None, ca: bool = False
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key, issuer_name = issuer if issuer else (key, name)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(signer_key, hashes.SHA256())


def _write(folder: Path, stem: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca = _cert("Cavalcade test CA", None, ca=True)
    ca_path, _ = _write(tmp_path, "ca", ca_key, ca)
    out = {"ca": ca_path}
    for stem, cn in (("server", "localhost"), ("client", "certuser")):
        key, cert = _cert(cn, (ca_key, ca.subject))
        out[f"{stem}_cert"], out[f"{stem}_key"] = _write(tmp_path, stem, key, cert)
    return out


def _client_context(pki: dict[str, Path], with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    return ctx


def _tls_node(start_broker: Callable[..., Any], url: str, pki: dict[str, Path], **opts: Any) -> Any:
    return start_broker(
        url,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_ca=pki["ca"],
        **opts,
    )


def test_pika_and_aio_pika_over_tls(
    database_url: str, start_broker: Callable[..., Any], pki: dict[str, Path]
) -> None:
    tls_port = free_port()
    node = _tls_node(start_broker, database_url, pki, tls_port=tls_port)
    params = pika.ConnectionParameters(
        "localhost",
        tls_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(_client_context(pki, False), "localhost"),
    )
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("tls-q")
        ch.basic_publish("", "tls-q", b"over tls")
        method, _, body = ch.basic_get("tls-q", auto_ack=True)
        assert body == b"over tls"
    finally:
        conn.close()

    async def aio() -> bytes:
        c = await aio_pika.connect(
            f"amqps://guest:guest@localhost:{tls_port}/",
            ssl_context=_client_context(pki, False),
        )
        async with c:
            ch = await c.channel()
            q = await ch.declare_queue("tls-aio", auto_delete=False)
            await ch.default_exchange.publish(aio_pika.Message(b"aio"), "tls-aio")
            msg = await q.get(timeout=5)
            await msg.ack()
            return msg.body

    assert asyncio.run(aio()) == b"aio"
    assert "(TLS)" in node.stderr()


def test_kombu_broker_use_ssl(
    database_url: str, start_broker: Callable[..., Any], pki: dict[str, Path]
) -> None:
    tls_port = free_port()
    _tls_node(start_broker, database_url, pki, tls_port=tls_port)
    use_ssl = {"ca_certs": str(pki["ca"]), "cert_reqs": ssl.CERT_REQUIRED}  # Celery's form
    with kombu.Connection(f"amqp://guest:guest@localhost:{tls_port}//", ssl=use_ssl) as conn:
        q = conn.SimpleQueue("tls-kombu")
        q.put({"hello": "tls"})
        assert q.get(timeout=5).payload == {"hello": "tls"}
        q.close()


def test_external_login_from_the_certificate_cn(
    database_url: str, start_broker: Callable[..., Any], pki: dict[str, Path]
) -> None:
    async def setup() -> None:
        a = await Admin.connect(database_url)
        try:
            await a.add_user("certuser", None)
            await a.set_permissions("/", "certuser", ".*", ".*", ".*")
        finally:
            await a.close()

    run_sync(setup)
    tls_port = free_port()
    _tls_node(start_broker, database_url, pki, tls_port=tls_port, tls_verify_peer=True)
    params = pika.ConnectionParameters(
        "localhost",
        tls_port,
        credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(_client_context(pki, True), "localhost"),
    )
    conn = pika.BlockingConnection(params)
    try:
        conn.channel().queue_declare("ext-q")
    finally:
        conn.close()

    async def listed() -> list[Any]:
        a = await Admin.connect(database_url)
        try:
            return await a.list_queues("/")
        finally:
            await a.close()

    assert "ext-q" in [q.name for q in run_sync(listed)]
    # without a client certificate EXTERNAL is not offered
    params = pika.ConnectionParameters(
        "localhost",
        tls_port,
        credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(_client_context(pki, False), "localhost"),
        connection_attempts=1,
    )
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)


def test_tls_only_node(
    database_url: str, start_broker: Callable[..., Any], pki: dict[str, Path]
) -> None:
    tls_port = free_port()
    plain = free_port()
    _tls_node(
        start_broker, database_url, pki, port=tls_port, tls_port=tls_port, no_plain_listener=True
    )
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", plain), timeout=1):
        pass
    ctx = _client_context(pki, False)
    with socket.create_connection(("127.0.0.1", tls_port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"AMQP\x00\x00\x09\x01")
            assert tls.recv(1)[:1] == b"\x01"  # connection.start
