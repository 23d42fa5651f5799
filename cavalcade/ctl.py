"""``cavalcade ctl VERB ...``: the operator's verbs, named and ordered as ``rabbitmqctl``'s.

It talks to the database (``--database-url`` / ``--data-dir``, as ``cavalcade db``) through
the admin use-cases of ``broker/admin.py``, so it works with no node running; running
nodes apply a change within about a second.

Output: a banner line (``Listing queues for vhost / ...``; ``-q`` drops it), then a
tab-separated table with a header row (``--no-table-headers`` drops it), or
``--formatter json``. Exit codes as rabbitmqctl's: 0 ok, 64 usage, 65 data error (no such
user, vhost, queue, policy; refused value; failed authentication), 69 database
unavailable; one line on stderr for each error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cavalcade.ctl_registry import VERBS, Output, Unavailable, UsageError, verb

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69

PROG = "cavalcade ctl"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message and "VERB" in message:
            message = message.split("invalid choice: ", 1)[1].split(" (", 1)[0]
            message = f"Command {message} not found (cavalcade ctl --help lists them)"
        raise UsageError(message)


# --------------------------------------------------------------------------- columns

Getter = Callable[[Any], Any]


def _attr(name: str) -> Getter:
    return lambda r: getattr(r, name)


def _json_text(name: str) -> Getter:
    return lambda r: json.dumps(getattr(r, name), separators=(",", ":"))


QUEUE_COLUMNS: dict[str, Getter] = {
    c: _attr(c)
    for c in (
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "policy",
        "operator_policy",
        "effective_policy_definition",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "message_bytes",
        "message_bytes_ready",
        "message_bytes_unacknowledged",
        "consumers",
        "type",
        "state",
    )
}
QUEUE_COLUMNS["owner_pid"] = _attr("owner_node")
EXCHANGE_COLUMNS: dict[str, Getter] = {
    c: _attr(c)
    for c in ("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments", "policy")
}
BINDING_COLUMNS: dict[str, Getter] = {
    c: _attr(c)
    for c in (
        "source_name",
        "source_kind",
        "destination_name",
        "destination_kind",
        "routing_key",
        "arguments",
        "vhost",
    )
}
CONNECTION_COLUMNS: dict[str, Getter] = {
    c: _attr(c)
    for c in (
        "pid",
        "name",
        "node",
        "vhost",
        "user",
        "peer_host",
        "peer_port",
        "host",
        "port",
        "ssl",
        "auth_mechanism",
        "channels",
        "frame_max",
        "channel_max",
        "timeout",
        "client_properties",
        "user_provided_name",
        "connected_at",
        "protocol",
        "state",
    )
}
CONSUMER_COLUMNS: dict[str, Getter] = {
    c: _attr(c)
    for c in (
        "queue_name",
        "channel_pid",
        "consumer_tag",
        "ack_required",
        "exclusive",
        "priority",
        "active",
        "arguments",
        "vhost",
    )
}
CONSUMER_COLUMNS["prefetch_count"] = lambda r: 0
VHOST_COLUMNS: dict[str, Getter] = {
    "name": _attr("name"),
    "description": _attr("description"),
    "tags": _attr("tags"),
    "tracing": lambda r: False,
}
NODE_COLUMNS: dict[str, Getter] = {
    "name": _attr("name"),
    "id": _attr("id"),
    "running": _attr("running"),
    "started_at": _attr("started_at"),
    "heartbeat_at": _attr("heartbeat_at"),
    "seconds_since_heartbeat": lambda r: round(r.seconds_since_heartbeat, 1),
    "connections": _attr("connections"),
}
POLICY_COLUMNS: dict[str, Getter] = {
    "vhost": _attr("vhost"),
    "name": _attr("name"),
    "pattern": _attr("pattern"),
    "apply-to": _attr("apply_to"),
    "definition": _json_text("definition"),
    "priority": _attr("priority"),
}


def _columns(
    requested: Sequence[str], known: dict[str, Getter], default: Sequence[str]
) -> list[str]:
    if not requested:
        return list(default)
    unknown = [c for c in requested if c not in known]
    if unknown:
        raise UsageError(f"Info key(s) {','.join(unknown)} are not supported")
    return list(requested)


def _rows(
    records: Sequence[Any], columns: Sequence[str], known: dict[str, Getter]
) -> list[list[Any]]:
    return [[known[c](r) for c in columns] for r in records]


# --------------------------------------------------------------------------- verbs


def _password(given: str | None, user: str) -> str:
    if given is not None:
        return given
    line = sys.stdin.readline()
    if not line:
        raise UsageError(f"no password given for user '{user}' (argument or stdin)")
    return line.rstrip("\r\n")


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from exc


def _user_and_password(p: argparse.ArgumentParser) -> None:
    p.add_argument("username")
    p.add_argument("password", nargs="?")


@verb("add_user", "add a user (the password is read from stdin when omitted)", _user_and_password)
async def _add_user(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Adding user "{a.username}" ...')
    await admin.add_user(a.username, _password(a.password, a.username))


@verb("delete_user", "delete a user", lambda p: p.add_argument("username"))
async def _delete_user(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Deleting user "{a.username}" ...')
    await admin.delete_user(a.username)


@verb("change_password", "change a user's password (stdin when omitted)", _user_and_password)
async def _change_password(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Changing password for user "{a.username}" ...')
    await admin.change_password(a.username, _password(a.password, a.username))


@verb("clear_password", "remove a user's password", lambda p: p.add_argument("username"))
async def _clear_password(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Clearing password for user "{a.username}" ...')
    await admin.clear_password(a.username)


@verb("authenticate_user", "check a user's password (stdin when omitted)", _user_and_password)
async def _authenticate_user(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Authenticating user "{a.username}" ...')
    await admin.authenticate_user(a.username, _password(a.password, a.username))
    out.banner("Success")


def _tags_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("username")
    p.add_argument("tags", nargs="*")


@verb("set_user_tags", "replace a user's tags (administrator, monitoring, ...)", _tags_args)
async def _set_user_tags(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Setting tags for user "{a.username}" to [{", ".join(a.tags)}] ...')
    await admin.set_user_tags(a.username, a.tags)


@verb("list_users", "list users and their tags")
async def _list_users(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner("Listing users ...")
    out.table(["user", "tags"], [[u.name, u.tags] for u in await admin.list_users()])


def _vhost_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("vhost_name", metavar="VHOST")
    p.add_argument("--description", default="")
    p.add_argument("--tags", default="", help="comma-separated")


@verb("add_vhost", "add a vhost (with its default exchanges)", _vhost_args)
async def _add_vhost(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Adding vhost "{a.vhost_name}" ...')
    tags = [t for t in a.tags.split(",") if t]
    await admin.add_vhost(a.vhost_name, a.description, tags)


@verb(
    "delete_vhost",
    "delete a vhost and everything in it",
    lambda p: p.add_argument("vhost_name", metavar="VHOST"),
)
async def _delete_vhost(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Deleting vhost "{a.vhost_name}" ...')
    await admin.delete_vhost(a.vhost_name)


def _columns_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("columns", nargs="*", metavar="COLUMN")


@verb("list_vhosts", "list vhosts", _columns_arg)
async def _list_vhosts(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = _columns(a.columns, VHOST_COLUMNS, ["name"])
    out.banner("Listing vhosts ...")
    out.table(cols, _rows(await admin.list_vhosts(), cols, VHOST_COLUMNS))


def _set_permissions_args(p: argparse.ArgumentParser) -> None:
    for name in ("username", "conf", "write", "read"):
        p.add_argument(name)


@verb("set_permissions", "set a user's permissions in a vhost", _set_permissions_args)
async def _set_permissions(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Setting permissions for user "{a.username}" in vhost "{a.vhost}" ...')
    await admin.set_permissions(a.vhost, a.username, a.conf, a.write, a.read)


@verb(
    "clear_permissions",
    "revoke a user's permissions in a vhost",
    lambda p: p.add_argument("username"),
)
async def _clear_permissions(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Clearing permissions for user "{a.username}" in vhost "{a.vhost}" ...')
    await admin.clear_permissions(a.vhost, a.username)


@verb("list_permissions", "list the permissions in a vhost")
async def _list_permissions(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Listing permissions for vhost "{a.vhost}" ...')
    perms = await admin.list_permissions(a.vhost)
    out.table(
        ["user", "configure", "write", "read"],
        [[p.user, p.configure, p.write, p.read] for p in perms],
    )


@verb("list_user_permissions", "list a user's permissions", lambda p: p.add_argument("username"))
async def _list_user_permissions(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Listing permissions for user "{a.username}" ...')
    perms = await admin.list_user_permissions(a.username)
    out.table(
        ["vhost", "configure", "write", "read"],
        [[p.vhost, p.configure, p.write, p.read] for p in perms],
    )


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("pattern")
    p.add_argument("definition")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument(
        "--apply-to", dest="apply_to", default="all", choices=["all", "queues", "exchanges"]
    )


async def _set_any_policy(admin: Any, a: argparse.Namespace, out: Output, operator: bool) -> None:
    kind = "operator policy override" if operator else "policy"
    out.banner(
        f'Setting {kind} "{a.name}" for pattern "{a.pattern}" to "{a.definition}" with '
        f'priority "{a.priority}" for vhost "{a.vhost}" ...'
    )
    definition = _json_arg(a.definition, "the policy definition")
    await admin.set_policy(
        a.vhost, a.name, a.pattern, definition, a.priority, a.apply_to, operator=operator
    )


@verb("set_policy", "set a policy", _policy_args)
async def _set_policy(admin: Any, a: argparse.Namespace, out: Output) -> None:
    await _set_any_policy(admin, a, out, False)


@verb("set_operator_policy", "set an operator policy (caps what policies may set)", _policy_args)
async def _set_operator_policy(admin: Any, a: argparse.Namespace, out: Output) -> None:
    await _set_any_policy(admin, a, out, True)


@verb("clear_policy", "remove a policy", lambda p: p.add_argument("name"))
async def _clear_policy(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Clearing policy "{a.name}" on vhost "{a.vhost}" ...')
    await admin.clear_policy(a.vhost, a.name)


@verb("clear_operator_policy", "remove an operator policy", lambda p: p.add_argument("name"))
async def _clear_operator_policy(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Clearing operator policy "{a.name}" on vhost "{a.vhost}" ...')
    await admin.clear_policy(a.vhost, a.name, operator=True)


async def _list_any_policies(
    admin: Any, a: argparse.Namespace, out: Output, operator: bool
) -> None:
    kind = "operator policy overrides" if operator else "policies"
    out.banner(f'Listing {kind} for vhost "{a.vhost}" ...')
    cols = list(POLICY_COLUMNS)
    out.table(
        cols, _rows(await admin.list_policies(a.vhost, operator=operator), cols, POLICY_COLUMNS)
    )


@verb("list_policies", "list the policies of a vhost")
async def _list_policies(admin: Any, a: argparse.Namespace, out: Output) -> None:
    await _list_any_policies(admin, a, out, False)


@verb("list_operator_policies", "list the operator policies of a vhost")
async def _list_operator_policies(admin: Any, a: argparse.Namespace, out: Output) -> None:
    await _list_any_policies(admin, a, out, True)


@verb(
    "set_vhost_limits",
    "set a vhost's limits (max-connections, max-queues)",
    lambda p: p.add_argument("definition"),
)
async def _set_vhost_limits(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Setting vhost limits to "{a.definition}" for vhost "{a.vhost}" ...')
    await admin.set_vhost_limits(a.vhost, _json_arg(a.definition, "the limits"))


@verb("clear_vhost_limits", "remove a vhost's limits")
async def _clear_vhost_limits(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Clearing vhost "{a.vhost}" limits ...')
    await admin.clear_vhost_limits(a.vhost)


@verb(
    "list_vhost_limits",
    "show a vhost's limits (--global: every vhost's)",
    lambda p: p.add_argument("--global", dest="all", action="store_true"),
)
async def _list_vhost_limits(admin: Any, a: argparse.Namespace, out: Output) -> None:
    if a.all:
        out.banner("Listing limits for all vhosts ...")
        vhosts = [v for v in await admin.list_vhosts() if v.limits]
        out.table(
            ["vhost", "limits"],
            [[v.name, json.dumps(v.limits, separators=(",", ":"))] for v in vhosts],
        )
        return
    out.banner(f'Listing limits for vhost "{a.vhost}" ...')
    out.value(await admin.list_vhost_limits(a.vhost))


def _user_limits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("username")
    p.add_argument("definition")


@verb("set_user_limits", "set a user's limits (max-connections, max-channels)", _user_limits_args)
async def _set_user_limits(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Setting user limits to "{a.definition}" for user "{a.username}" ...')
    await admin.set_user_limits(a.username, _json_arg(a.definition, "the limits"))


def _clear_user_limits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("username")
    p.add_argument("limit", nargs="?", default="all")


@verb("clear_user_limits", "remove one of a user's limits (or all)", _clear_user_limits_args)
async def _clear_user_limits(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f'Clearing "{a.limit}" limit for user "{a.username}" ...')
    await admin.clear_user_limits(a.username, a.limit)


def _list_user_limits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", default="guest")
    p.add_argument("--global", dest="all", action="store_true")


@verb("list_user_limits", "show a user's limits (--global: every user's)", _list_user_limits_args)
async def _list_user_limits(admin: Any, a: argparse.Namespace, out: Output) -> None:
    if a.all:
        out.banner("Listing limits for all users ...")
        users = [u for u in await admin.list_users() if u.limits]
        out.table(
            ["user", "limits"],
            [[u.name, json.dumps(u.limits, separators=(",", ":"))] for u in users],
        )
        return
    out.banner(f'Listing limits for user "{a.user}" ...')
    out.value(await admin.list_user_limits(a.user))


@verb("list_queues", "list queues (columns: name messages ... policy)", _columns_arg)
async def _list_queues(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = _columns(a.columns, QUEUE_COLUMNS, ["name", "messages"])
    out.banner(f"Listing queues for vhost {a.vhost} ...")
    out.table(cols, _rows(await admin.list_queues(a.vhost), cols, QUEUE_COLUMNS))


@verb("list_exchanges", "list exchanges", _columns_arg)
async def _list_exchanges(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = _columns(a.columns, EXCHANGE_COLUMNS, ["name", "type"])
    out.banner(f"Listing exchanges for vhost {a.vhost} ...")
    out.table(cols, _rows(await admin.list_exchanges(a.vhost), cols, EXCHANGE_COLUMNS))


@verb("list_bindings", "list bindings", _columns_arg)
async def _list_bindings(admin: Any, a: argparse.Namespace, out: Output) -> None:
    default = [c for c in BINDING_COLUMNS if c != "vhost"]
    cols = _columns(a.columns, BINDING_COLUMNS, default)
    out.banner(f"Listing bindings for vhost {a.vhost}...")
    out.table(cols, _rows(await admin.list_bindings(a.vhost), cols, BINDING_COLUMNS))


@verb("list_connections", "list client connections on every node", _columns_arg)
async def _list_connections(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = _columns(a.columns, CONNECTION_COLUMNS, ["user", "peer_host", "peer_port", "state"])
    out.banner("Listing connections ...")
    out.table(cols, _rows(await admin.list_connections(), cols, CONNECTION_COLUMNS))


@verb("list_consumers", "list consumers", _columns_arg)
async def _list_consumers(admin: Any, a: argparse.Namespace, out: Output) -> None:
    default = [
        "queue_name",
        "channel_pid",
        "consumer_tag",
        "ack_required",
        "prefetch_count",
        "active",
        "arguments",
    ]
    cols = _columns(a.columns, CONSUMER_COLUMNS, default)
    out.banner(f"Listing consumers in vhost {a.vhost} ...")
    out.table(cols, _rows(await admin.list_consumers(a.vhost), cols, CONSUMER_COLUMNS))


@verb("list_nodes", "list broker nodes (live and not yet reaped)", _columns_arg)
async def _list_nodes(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = _columns(a.columns, NODE_COLUMNS, ["name", "id", "running", "connections"])
    out.banner("Listing nodes ...")
    out.table(cols, _rows(await admin.list_nodes(), cols, NODE_COLUMNS))


async def _maintenance(admin: Any, a: argparse.Namespace, out: Output, draining: bool) -> None:
    from cavalcade.broker import maintenance
    from cavalcade.broker.admin import NotFoundError

    what = "Putting node" if draining else "Reviving node"
    out.banner(f"{what} '{a.node}' {'into' if draining else 'out of'} maintenance mode ...")
    try:
        change = maintenance.drain if draining else maintenance.revive
        await change(admin.store, a.node)
    except maintenance.NodeNotFound as exc:
        raise NotFoundError(str(exc)) from exc


@verb(
    "drain",
    "maintenance mode: the node closes its clients (320), hands back what it holds, "
    "accepts none until revived",
    lambda p: p.add_argument("node", help="node name or id"),
)
async def _drain(admin: Any, a: argparse.Namespace, out: Output) -> None:
    await _maintenance(admin, a, out, True)


@verb(
    "revive",
    "take a node out of maintenance mode",
    lambda p: p.add_argument("node", help="node name or id"),
)
async def _revive(admin: Any, a: argparse.Namespace, out: Output) -> None:
    await _maintenance(admin, a, out, False)


@verb("purge_queue", "remove a queue's ready messages", lambda p: p.add_argument("queue"))
async def _purge_queue(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f"Purging queue '{a.queue}' in vhost '{a.vhost}' ...")
    await admin.purge_queue(a.vhost, a.queue)


def _delete_queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("queue")
    p.add_argument("-u", "--if-unused", dest="if_unused", action="store_true")
    p.add_argument("-e", "--if-empty", dest="if_empty", action="store_true")


@verb("delete_queue", "delete a queue", _delete_queue_args)
async def _delete_queue(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f"Deleting queue '{a.queue}' on vhost '{a.vhost}' ...")
    count = await admin.delete_queue(a.vhost, a.queue, a.if_unused, a.if_empty)
    out.banner(f"Queue was successfully deleted with {count} message{'s' if count != 1 else ''}")


def _close_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("connection", help="its pid (<NODE_ID.ID>) or name, as list_connections shows")
    p.add_argument("reason")


@verb("close_connection", "close a client connection (320 with REASON)", _close_args)
async def _close_connection(admin: Any, a: argparse.Namespace, out: Output) -> None:
    out.banner(f"Closing connection {a.connection}, reason: {a.reason}...")
    await admin.close_connection(a.connection, a.reason)


@verb("status", "the database, schema revision, nodes and totals")
async def _status(admin: Any, a: argparse.Namespace, out: Output) -> None:
    st = await admin.status()
    if out.json:
        print(
            json.dumps(
                {
                    "database": st.database,
                    "server_version": st.server_version,
                    "schema_revision": st.schema_revision,
                    "nodes": [{c: NODE_COLUMNS[c](n) for c in NODE_COLUMNS} for n in st.nodes],
                    "totals": st.totals,
                },
                default=str,
            )
        )
        return
    out.banner("Status of the cluster ...")
    print(f"Database: {st.database}\nPostgreSQL: {st.server_version}")
    print(f"Schema revision: {st.schema_revision}\n\nNodes")
    for n in st.nodes:
        state = "running" if n.running else "not responding"
        print(f"{n.name} ({n.id}): {state}, {n.connections} connection(s)")
    print("\nTotals")
    for k, v in st.totals.items():
        print(f"{k}: {v}")


# --------------------------------------------------------------------------- main


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    """Options every verb takes, before or after it (as rabbitmqctl's)."""
    kw: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-p", "--vhost", metavar="VHOST", **kw)
    p.add_argument("-q", "--quiet", action="store_true", **kw)
    p.add_argument("-s", "--silent", action="store_true", **kw)
    p.add_argument("--no-table-headers", dest="no_table_headers", action="store_true", **kw)
    p.add_argument("--formatter", choices=["table", "json"], **kw)
    p.add_argument("--database-url", metavar="URL", help="as for cavalcade db", **kw)
    p.add_argument("--data-dir", metavar="DIR", type=Path, **kw)
    p.add_argument("-t", "--timeout", type=float, metavar="SECONDS", **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Operator verbs, as rabbitmqctl's.")
    _common(parser, top=True)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    for name, (_, args, help_) in VERBS.items():
        sub = verbs.add_parser(name, help=help_, description=help_)
        args(sub)
        _common(sub, top=False)
    return parser


def _settings(a: argparse.Namespace) -> Any:
    from cavalcade.cli_settings import CommandError, build_settings

    ns = argparse.Namespace(database_url=a.database_url, data_dir=a.data_dir, log_level="WARNING")
    try:
        return build_settings(ns)
    except CommandError as exc:
        raise UsageError(str(exc)) from exc


async def _run(dsn: str, a: argparse.Namespace, out: Output) -> None:
    from cavalcade.broker.admin import Admin

    try:
        admin = await Admin.connect(dsn, timeout=a.timeout or 10.0)
    except Exception as exc:  # any failure to connect means "unavailable"
        raise Unavailable(f"cannot reach the database: {exc or type(exc).__name__}") from exc
    try:
        await VERBS[a.verb][0](admin, a, out)
    finally:
        await admin.close()


def _error(code: int, message: str) -> int:
    print(f"Error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return code


def run(argv: Sequence[str]) -> int:
    """Parse and run one verb; returns the exit status."""
    from cavalcade.broker.admin import AdminError
    from cavalcade.storage.sqlstate import is_unavailable

    try:
        a = build_parser().parse_args(list(argv))
    except UsageError as exc:
        return _error(EX_USAGE, str(exc))
    a.vhost = a.vhost or "/"
    out = Output(
        quiet=bool(a.quiet or a.silent),
        headers=not (a.no_table_headers or a.silent),
        json=a.formatter == "json",
    )
    try:
        settings = _settings(a)
        from cavalcade.cli_settings import CommandError, database

        try:
            with database(settings, stop_when_done=True) as dsn:
                asyncio.run(_run(dsn, a, out))
        except CommandError as exc:
            raise Unavailable(str(exc)) from exc
    except UsageError as exc:
        return _error(EX_USAGE, str(exc))
    except AdminError as exc:
        return _error(EX_DATAERR, str(exc))
    except Unavailable as exc:
        return _error(EX_UNAVAILABLE, str(exc))
    except Exception as exc:
        if is_unavailable(exc):
            return _error(EX_UNAVAILABLE, f"database unavailable: {exc}")
        raise
    return EX_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    raise SystemExit(run(sys.argv[1:] if argv is None else argv))


# Verbs kept in modules of their own register themselves on import.
from cavalcade import ctl_definitions  # noqa: E402, F401
