"""``serve`` options of the management listener: --management-port, --no-management,
a taken port, and the listener shared by --workers siblings."""

from __future__ import annotations

import socket
import subprocess

import pytest
import requests

from tests.conftest import broker_command, free_port
from tests.waiting import wait_until

from .conftest import _wait_http


def _get(port: int, path: str = "api/whoami") -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/{path}", auth=("guest", "guest"), timeout=5)


def test_explicit_port_taken_is_an_error(database_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        result = subprocess.run(
            broker_command(
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--database-url",
                database_url,
                "--management-port",
                str(taken),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"port {taken} is already in use" in last and "--management-port" in last


def test_no_management_means_no_listener(start_broker, database_url: str) -> None:
    port = free_port()
    broker = start_broker(database_url, management_port=port, no_management=True)
    with pytest.raises(requests.ConnectionError):
        _get(port)
    assert "management" not in broker.stderr().split("listening on", 1)[-1].split("\n")[0]


def test_default_port_taken_only_warns(start_broker, database_url: str) -> None:
    """15672 belongs to RabbitMQ on this machine: the node still serves AMQP."""
    try:
        socket.create_connection(("127.0.0.1", 15672), timeout=1).close()
    except OSError:
        pytest.skip("nothing holds 15672 here")
    broker = start_broker(database_url)
    assert "running without the management listener" in broker.stderr()


def test_workers_share_the_management_socket(start_broker, database_url: str) -> None:
    port = free_port()
    broker = start_broker(database_url, management_port=port, workers=2, stats_interval=0.5)
    _wait_http(port, broker)

    def node_count() -> int:
        return len(_get(port, "api/nodes").json())

    wait_until(lambda: node_count() >= 2, 30, "both workers in api/nodes", 0.2)
    assert node_count() == 2
    # whichever sibling accepts a request answers for the whole cluster
    for _ in range(10):
        assert _get(port, "api/overview").json()["object_totals"]["queues"] >= 0
