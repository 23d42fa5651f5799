"""``cavalcade ctl``: every verb against a real database (no node running), its output
shapes, ``--formatter json`` and its exit codes (64 usage, 65 data error, 69 unavailable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def ctl(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAVALCADE_")}
    return subprocess.run(
        [sys.executable, "-m", "cavalcade.cli", "ctl", *args, "--database-url", url],
        capture_output=True,
        text=True,
        input=stdin or "",
        env=env,
        timeout=60,
    )


def ok(url: str, *args: str, stdin: str | None = None) -> str:
    r = ctl(url, *args, stdin=stdin)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_users_vhosts_permissions(database_url: str) -> None:
    u = database_url
    assert ok(u, "add_user", "alice", "pw") == 'Adding user "alice" ...\n'
    r = ctl(u, "add_user", "alice", "pw")
    assert r.returncode == 65 and r.stderr == 'Error: User "alice" already exists\n'
    ok(u, "add_user", "bob", stdin="from-stdin\n")
    ok(u, "authenticate_user", "bob", "from-stdin")
    assert ctl(u, "authenticate_user", "bob", "wrong").returncode == 65
    ok(u, "change_password", "bob", "new")
    ok(u, "authenticate_user", "bob", "new")
    ok(u, "set_user_tags", "alice", "administrator", "monitoring")
    assert ok(u, "-q", "list_users") == (
        "user\ttags\nalice\t[administrator, monitoring]\nbob\t[]\nguest\t[administrator]\n"
    )
    users = json.loads(ok(u, "list_users", "--formatter", "json"))
    assert {"user": "alice", "tags": ["administrator", "monitoring"]} in users
    ok(u, "add_vhost", "v1")
    assert ok(u, "list_vhosts", "-q", "--no-table-headers") == "/\nv1\n"
    ok(u, "set_permissions", "-p", "v1", "alice", "^a", ".*", "")
    assert (
        ok(u, "list_permissions", "-p", "v1", "-q")
        == "user\tconfigure\twrite\tread\nalice\t^a\t.*\t\n"
    )
    assert "v1\t^a\t.*\t" in ok(u, "list_user_permissions", "alice")
    ok(u, "clear_permissions", "-p", "v1", "alice")
    assert ok(u, "list_permissions", "-p", "v1", "-q", "--no-table-headers") == ""
    r = ctl(u, "set_permissions", "-p", "nope", "alice", ".*", ".*", ".*")
    assert r.returncode == 65 and "Virtual host 'nope' does not exist" in r.stderr
    ok(u, "delete_vhost", "v1")
    assert ctl(u, "delete_vhost", "v1").returncode == 65
    ok(u, "clear_password", "bob")
    ok(u, "delete_user", "bob")
    r = ctl(u, "delete_user", "bob")
    assert (r.returncode, r.stderr) == (65, 'Error: User "bob" does not exist\n')


def test_policies_limits_and_listings(database_url: str) -> None:
    u = database_url
    ok(
        u,
        "set_policy",
        "--priority",
        "2",
        "--apply-to",
        "queues",
        "ttl",
        "^t",
        '{"message-ttl":1000}',
    )
    assert ok(u, "list_policies", "-q") == (
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n"
        '/\tttl\t^t\tqueues\t{"message-ttl":1000}\t2\n'
    )
    (p,) = json.loads(ok(u, "list_policies", "--formatter", "json"))
    assert p["definition"] == '{"message-ttl":1000}' and p["apply-to"] == "queues"
    r = ctl(u, "set_policy", "bad", ".*", '{"foo":1}')
    assert r.returncode == 65 and "not recognised policy settings" in r.stderr
    assert ctl(u, "set_policy", "bad", ".*", "{not json").returncode == 64
    ok(u, "set_operator_policy", "cap", ".*", '{"max-length":10}')
    assert "cap" in ok(u, "list_operator_policies")
    ok(u, "clear_operator_policy", "cap")
    ok(u, "set_vhost_limits", "-p", "/", '{"max-connections":5}')
    assert ok(u, "list_vhost_limits", "-q") == '{"max-connections":5}\n'
    assert "/\t" in ok(u, "list_vhost_limits", "--global")
    ok(u, "clear_vhost_limits")
    ok(u, "set_user_limits", "guest", '{"max-channels":3}')
    assert ok(u, "list_user_limits", "--user", "guest", "-q") == '{"max-channels":3}\n'
    ok(u, "clear_user_limits", "guest", "max-channels")
    assert ctl(u, "set_user_limits", "guest", '{"max-queues":1}').returncode == 65
    assert ok(u, "list_queues", "-q") == "name\tmessages\n"
    assert json.loads(ok(u, "list_queues", "name", "policy", "--formatter", "json")) == []
    exchanges = ok(u, "list_exchanges", "-q", "--no-table-headers", "name", "type").splitlines()
    assert sorted(exchanges) == sorted(
        [
            "\tdirect",
            "amq.direct\tdirect",
            "amq.fanout\tfanout",
            "amq.topic\ttopic",
            "amq.headers\theaders",
            "amq.match\theaders",
        ]
    )
    assert ok(u, "list_bindings", "-q", "--no-table-headers") == ""
    assert ok(u, "list_connections", "-q") == "user\tpeer_host\tpeer_port\tstate\n"
    assert ok(u, "list_consumers", "-q").startswith("queue_name\tchannel_pid\tconsumer_tag")
    assert ok(u, "list_nodes", "-q") == "name\tid\trunning\tconnections\n"
    assert "Schema revision: 0005" in ok(u, "status")
    assert json.loads(ok(u, "status", "--formatter", "json"))["schema_revision"] == "0005"
    ok(u, "clear_policy", "ttl")
    assert ctl(u, "clear_policy", "ttl").returncode == 65


@pytest.mark.parametrize(
    "args",
    [
        ("bogus_verb",),
        ("add_user",),
        ("list_queues", "no_such_column"),
        ("set_permissions", "guest", ".*"),
    ],
)
def test_usage_errors_exit_64(database_url: str, args: tuple[str, ...]) -> None:
    r = ctl(database_url, *args)
    assert r.returncode == 64
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("Error: ")


def test_data_errors_exit_65(database_url: str) -> None:
    for args in (
        ("purge_queue", "nope"),
        ("delete_queue", "nope"),
        ("close_connection", "<00000000-0000-0000-0000-000000000000.1>", "bye"),
        ("list_user_permissions", "nobody"),
        ("set_user_tags", "nobody", "x"),
    ):
        r = ctl(database_url, *args)
        assert r.returncode == 65, args
        assert len(r.stderr.strip().splitlines()) == 1


def test_unreachable_database_exits_69() -> None:
    r = ctl("postgresql://postgres@127.0.0.1:1/x", "list_users", "-t", "2")
    assert r.returncode == 69
    assert r.stderr.startswith("Error: cannot reach the database")
