"""Permissions are checked as RabbitMQ checks them, side by side with RabbitMQ: unanchored
regex search, write on amq.default for default-exchange publishes, DLX and AE at declare
time, configure for a non-passive redeclare, access before existence, and changes applied
to open connections (a new channel sees a cleared permission).

Cavalcade's users and permissions are set with SQL on the node's own database; RabbitMQ's
through its management API."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest

from cavalcade.domain.passwords import hash_password
from cavalcade.storage.dsn import normalize_dsn
from tests.waiting import wait_until

from .conftest import connect, run_sync_sql, safe_close

PASSWORD = "pw-iso"
SetPerms = Callable[[str, str, str], None]


def _rabbit_api(method: str, path: str, body: object | None = None) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:15672/api/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
        },
    )
    with urllib.request.urlopen(req, timeout=10):
        pass


@pytest.fixture(params=["cavalcade", "rabbitmq"])
def limited(request, tmp_path) -> Iterator[tuple[str, SetPerms]]:
    """(AMQP URL of a fresh user, set_permissions(configure, write, read))."""
    user = "iso-" + uuid.uuid4().hex[:8]
    if request.param == "rabbitmq":
        request.getfixturevalue("rabbitmq_url")
        _rabbit_api("PUT", f"users/{user}", {"password": PASSWORD, "tags": ""})

        def set_perms(c: str, w: str, r: str) -> None:
            if c == w == r == "":
                _rabbit_api("DELETE", f"permissions/%2F/{user}")
            else:
                _rabbit_api(
                    "PUT", f"permissions/%2F/{user}", {"configure": c, "write": w, "read": r}
                )

        try:
            yield f"amqp://{user}:{PASSWORD}@127.0.0.1:5672/", set_perms
        finally:
            _rabbit_api("DELETE", f"users/{user}")
        return
    database_url = request.getfixturevalue("database_url")
    node = request.getfixturevalue("start_broker")(database_url)
    dsn = normalize_dsn(database_url)
    run_sync_sql(
        dsn,
        "INSERT INTO users (name, password_hash) VALUES ($1, $2)",
        user,
        hash_password(PASSWORD),
    )

    def set_perms(c: str, w: str, r: str) -> None:
        if c == w == r == "":
            run_sync_sql(
                dsn,
                "DELETE FROM permissions WHERE user_id = (SELECT id FROM users WHERE name = $1)",
                user,
            )
            return
        run_sync_sql(
            dsn,
            "INSERT INTO permissions (user_id, vhost_id, configure, write, read)"
            " SELECT u.id, v.id, $2, $3, $4 FROM users u, vhosts v"
            " WHERE u.name = $1 AND v.name = '/'"
            " ON CONFLICT (user_id, vhost_id) DO UPDATE SET configure = $2, write = $3,"
            " read = $4",
            user,
            c,
            w,
            r,
        )

    yield f"amqp://{user}:{PASSWORD}@127.0.0.1:{node.port}/", set_perms


def _code(fn: Callable[[], object]) -> int:
    try:
        fn()
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    return 200


def _fresh(conn: pika.BlockingConnection):
    return conn.channel()


def test_permission_rules(limited):
    url, set_perms = limited
    tag = uuid.uuid4().hex[:6]
    mine, other = f"mine-{tag}", f"other-{tag}"
    set_perms(".*", ".*", ".*")
    admin = connect(url)
    try:
        ch = admin.channel()
        ch.queue_declare(other)
        ch.exchange_declare(f"x-{other}", "fanout")
        set_perms("^mine-", "^mine-", "q")  # read: unanchored, so "xq-..." is readable
        # permissions re-read on open connections: configure on "other-" is gone
        wait_until(lambda: _code(lambda: _fresh(admin).queue_declare(other)) == 403, 10, "perms")
        ch = _fresh(admin)
        assert _code(lambda: ch.queue_declare(mine)) == 200
        # default exchange: write on amq.default needed
        ch.basic_publish("", mine, b"x")
        assert _code(lambda: ch.queue_declare(mine, passive=True)) == 403
        ch = _fresh(admin)
        # regex search, not prefix match: read "q" allows reading a name containing q
        assert _code(lambda: ch.basic_get(other)) == 403  # "other-" has no q
        ch = _fresh(admin)
        # non-passive redeclare of someone else's queue: configure needed
        assert _code(lambda: ch.queue_declare(other)) == 403
        ch = _fresh(admin)
        assert _code(lambda: ch.queue_declare(other, passive=True)) == 200
        # DLX / AE the user may not write to: refused at declare time
        assert (
            _code(
                lambda: ch.queue_declare(
                    f"mine-dlx-{tag}", arguments={"x-dead-letter-exchange": f"x-{other}"}
                )
            )
            == 403
        )
        ch = _fresh(admin)
        assert (
            _code(
                lambda: ch.exchange_declare(
                    f"mine-ae-{tag}", "fanout", arguments={"alternate-exchange": f"x-{other}"}
                )
            )
            == 403
        )
        ch = _fresh(admin)
        # access before existence: a bind of missing names without permission is 403
        assert _code(lambda: ch.queue_bind(f"nope-{tag}", f"nope-x-{tag}")) == 403
        ch = _fresh(admin)
        # cleared permissions apply to open connections: a new channel gets 403
        set_perms("", "", "")
        wait_until(lambda: _code(lambda: _fresh(admin).queue_declare(mine)) == 403, 10, "no perms")
        ch = _fresh(admin)
        assert _code(lambda: ch.queue_declare(f"mine-late-{tag}")) == 403
    finally:
        safe_close(admin)
        set_perms(".*", ".*", ".*")
        cleanup = connect(url)
        try:
            c = cleanup.channel()
            for q in (mine, other):
                c.queue_delete(q)
            c.exchange_delete(f"x-{other}")
        finally:
            safe_close(cleanup)
