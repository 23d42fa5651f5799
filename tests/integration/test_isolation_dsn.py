"""Secrets in database URLs: never logged, never echoed; libpq security parameters the
driver cannot honour are refused loudly; ``--database-url-file`` keeps the URL out of ps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cavalcade.storage.dsn import InvalidDatabaseURL, normalize_dsn, redact
from tests.conftest import broker_command, free_port

SECRET = "hunter2-Secret"


def test_redact_hides_every_password():
    url = f"postgresql://u:{SECRET}@h1:5432,h2/db?sslmode=require&password={SECRET}&sslpassword={SECRET}"
    shown = redact(url)
    assert SECRET not in shown
    assert shown.startswith("postgresql://u:***@h1:5432,h2/db?sslmode=require&")
    assert redact(f"not a url {SECRET}") == "<not a URL>"


def test_malformed_url_is_not_echoed():
    with pytest.raises(InvalidDatabaseURL) as ei:
        normalize_dsn(f"{SECRET}@nowhere")
    assert SECRET not in str(ei.value)


@pytest.mark.parametrize(
    "param",
    [
        "channel_binding=require",
        "require_auth=scram-sha-256",
        "requirepeer=postgres",
        "gssencmode=require",
    ],
)
def test_security_parameters_the_driver_cannot_honour_are_refused(param):
    with pytest.raises(InvalidDatabaseURL, match=param.split("=")[0]):
        normalize_dsn(f"postgresql://u@h/db?{param}")


def test_honoured_security_parameters_are_kept():
    dsn = normalize_dsn("postgresql://u@h/db?sslmode=verify-full&channel_binding=prefer")
    assert "sslmode=verify-full" in dsn and "channel_binding" not in dsn


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        broker_command("serve", "--host", "127.0.0.1", "--port", str(free_port()), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_password_parameter_never_logged_on_retries():
    url = f"postgresql://postgres@127.0.0.1:1/x?password={SECRET}&connect_timeout=1"
    done = _serve("--database-url", url, "--database-wait", "2")
    assert done.returncode != 0
    assert SECRET not in done.stderr + done.stdout
    assert "password=***" in done.stderr


def test_refused_parameter_stops_serve_loudly():
    done = _serve("--database-url", "postgresql://postgres@127.0.0.1/x?requirepeer=root")
    assert done.returncode != 0 and "requirepeer" in done.stderr


def test_database_url_file(tmp_path: Path, database_url: str, start_broker):
    path = tmp_path / "url"
    path.write_text(database_url + "\n")
    node = start_broker(None, database_url_file=str(path))
    cmdline = Path(f"/proc/{node.process.pid}/cmdline").read_bytes()
    assert database_url.encode() not in cmdline
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    conn.channel().queue_declare("from-file")
    conn.close()


def test_database_url_file_unreadable(tmp_path: Path):
    done = _serve("--database-url-file", str(tmp_path / "missing"))
    assert done.returncode != 0 and "--database-url-file" in done.stderr
