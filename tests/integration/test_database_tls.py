"""The database link over TLS: ``sslmode=verify-full`` with ``sslrootcert`` honoured by
``db upgrade``, ``ctl`` and ``serve``, against a private PostgreSQL started with ``ssl=on``
whose pg_hba refuses plain connections."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.conftest import free_port
from tests.e2e.test_tls import _cert, _write

BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _as_postgres(*cmd: str) -> None:
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", "postgres", "--", *cmd)
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[int, Path, Path]]:
    """(port, CA file, a CA that did not sign the server) of a ssl=on cluster."""
    if BIN is None or not (BIN / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres system user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="cavalcade-pgtls-"))
    root.chmod(0o755)
    data = root / "data"
    certs = root / "certs"
    certs.mkdir()
    ca_key, ca = _cert("DB test CA", None, ca=True)
    ca_path, _ = _write(certs, "ca", ca_key, ca)
    other_key, other = _cert("Other CA", None, ca=True)
    other_path, _ = _write(certs, "other", other_key, other)
    key, cert = _cert("localhost", (ca_key, ca.subject))
    crt, key_path = _write(certs, "server", key, cert)
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        for f in (crt, key_path):
            shutil.chown(f, "postgres")
    key_path.chmod(0o600)
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    _as_postgres(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 trust\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    opts = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c ssl=on"
        f" -c ssl_cert_file={crt} -c ssl_key_file={key_path}"
    )
    _as_postgres(
        str(BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"
    )
    try:
        yield port, ca_path, other_path
    finally:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _cavalcade(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVALCADE_")}
    return subprocess.run(
        [sys.executable, "-m", "cavalcade.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_verify_full_end_to_end(
    tls_cluster: tuple[int, Path, Path], start_broker: Callable[..., Any]
) -> None:
    port, ca, other = tls_cluster
    url = f"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    r = _cavalcade("db", "upgrade", "--database-url", url)
    assert r.returncode == 0, r.stderr
    r = _cavalcade("ctl", "add_user", "tlsdb", "pw", "--database-url", url)
    assert r.returncode == 0, r.stderr
    r = _cavalcade("ctl", "-q", "list_users", "--database-url", url)
    assert "tlsdb" in r.stdout
    node = start_broker(url)
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        conn.channel().queue_declare("over-tls-db")
    finally:
        conn.close()
    r = _cavalcade("ctl", "-q", "--no-table-headers", "list_queues", "name", "--database-url", url)
    assert "over-tls-db" in r.stdout.splitlines()
    # a CA that did not sign the server's certificate: refused, exit 69
    bad = f"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={other}"
    r = _cavalcade("ctl", "list_users", "--database-url", bad, "-t", "5")
    assert r.returncode == 69, r.stderr
    # plain connections are refused by the server's pg_hba
    plain = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    assert _cavalcade("ctl", "list_users", "--database-url", plain, "-t", "5").returncode == 69
    r = _cavalcade("ctl", "list_users", "--database-url", plain.replace("disable", "require"))
    assert r.returncode == 0, r.stderr
