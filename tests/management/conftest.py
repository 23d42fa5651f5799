"""A Cavalcade node with its management listener, and RabbitMQ's management API beside it.

``node`` (module scope) runs ``cavalcade serve --management-port P --stats-interval 0.5``
on a database of its own. ``rabbit`` is the local RabbitMQ's API (127.0.0.1:15672,
guest/guest), or the test is skipped: differential tests run the same requests on both.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.conftest import BrokerProcess, _fresh_database, free_port, spawn_broker

STATS_INTERVAL = 0.5


@dataclass
class Api:
    """A management API: ``base`` (``http://host:port/api/``), the AMQP URL, a session."""

    name: str
    base: str
    amqp_url: str
    http: requests.Session
    broker: BrokerProcess | None = None

    @property
    def root(self) -> str:
        return self.base[: -len("api/")]

    def url(self, path: str) -> str:
        return self.base + path.lstrip("/")

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url(path), timeout=10, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.http.put(
            self.url(path), json=body if body is not None else {}, timeout=10, **kw
        )

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.http.post(self.url(path), json=body, timeout=10, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.url(path), timeout=10, **kw)

    def json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


def _session() -> requests.Session:
    s = requests.Session()
    s.auth = ("guest", "guest")
    return s


def _wait_http(port: int, broker: BrokerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if broker.process.poll() is not None:
                pytest.fail(f"node exited:\n{broker.stderr()}")
            time.sleep(0.05)
    pytest.fail(f"no management listener on {port}:\n{broker.stderr()}")


@pytest.fixture(scope="module")
def node(
    pg_dsn: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    with _fresh_database(pg_dsn, template_database) as url:
        http_port = free_port()
        broker = spawn_broker(
            url,
            free_port(),
            tmp_path_factory.mktemp("mgmt"),
            management_port=http_port,
            stats_interval=STATS_INTERVAL,
        )
        try:
            broker.wait_ready()
            _wait_http(http_port, broker)
            yield Api(
                "cavalcade", f"http://127.0.0.1:{http_port}/api/", broker.url, _session(), broker
            )
        finally:
            broker.stop()
            broker.report()


@pytest.fixture(scope="session")
def rabbit() -> Api:
    try:
        r = requests.get("http://127.0.0.1:15672/api/overview", auth=("guest", "guest"), timeout=2)
    except requests.RequestException:
        pytest.skip("no RabbitMQ management API on 127.0.0.1:15672")
    if r.status_code != 200:
        pytest.skip("RabbitMQ management API not usable")
    return Api(
        "rabbitmq", "http://127.0.0.1:15672/api/", "amqp://guest:guest@127.0.0.1:5672/", _session()
    )


@pytest.fixture(params=["cavalcade", "rabbitmq"])
def api(request: pytest.FixtureRequest) -> Api:
    """Each test that takes ``api`` runs on Cavalcade and on RabbitMQ."""
    return request.getfixturevalue("node" if request.param == "cavalcade" else "rabbit")


def unique(prefix: str) -> str:
    return f"mgmt.{prefix}.{uuid.uuid4().hex[:10]}"


def wait_for(check: Any, timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy (statistics are published
    every STATS_INTERVAL; RabbitMQ's every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
