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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

# The access verbs register first: VERBS keeps rabbitmqctl's order for --help.
from cavalcade import ctl_access  # noqa: F401
from cavalcade.ctl_registry import (
    BINDING_COLUMNS,
    CONNECTION_COLUMNS,
    CONSUMER_COLUMNS,
    EXCHANGE_COLUMNS,
    NODE_COLUMNS,
    QUEUE_COLUMNS,
    VERBS,
    Output,
    Unavailable,
    UsageError,
    columns_arg,
    pick_columns,
    table_rows,
    verb,
)

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


@verb("list_queues", "list queues (columns: name messages ... policy)", columns_arg)
async def _list_queues(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = pick_columns(a.columns, QUEUE_COLUMNS, ["name", "messages"])
    out.banner(f"Listing queues for vhost {a.vhost} ...")
    out.table(cols, table_rows(await admin.list_queues(a.vhost), cols, QUEUE_COLUMNS))


@verb("list_exchanges", "list exchanges", columns_arg)
async def _list_exchanges(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = pick_columns(a.columns, EXCHANGE_COLUMNS, ["name", "type"])
    out.banner(f"Listing exchanges for vhost {a.vhost} ...")
    out.table(cols, table_rows(await admin.list_exchanges(a.vhost), cols, EXCHANGE_COLUMNS))


@verb("list_bindings", "list bindings", columns_arg)
async def _list_bindings(admin: Any, a: argparse.Namespace, out: Output) -> None:
    default = [c for c in BINDING_COLUMNS if c != "vhost"]
    cols = pick_columns(a.columns, BINDING_COLUMNS, default)
    out.banner(f"Listing bindings for vhost {a.vhost}...")
    out.table(cols, table_rows(await admin.list_bindings(a.vhost), cols, BINDING_COLUMNS))


@verb("list_connections", "list client connections on every node", columns_arg)
async def _list_connections(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = pick_columns(a.columns, CONNECTION_COLUMNS, ["user", "peer_host", "peer_port", "state"])
    out.banner("Listing connections ...")
    out.table(cols, table_rows(await admin.list_connections(), cols, CONNECTION_COLUMNS))


@verb("list_consumers", "list consumers", columns_arg)
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
    cols = pick_columns(a.columns, CONSUMER_COLUMNS, default)
    out.banner(f"Listing consumers in vhost {a.vhost} ...")
    out.table(cols, table_rows(await admin.list_consumers(a.vhost), cols, CONSUMER_COLUMNS))


@verb("list_nodes", "list broker nodes (live and not yet reaped)", columns_arg)
async def _list_nodes(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = pick_columns(a.columns, NODE_COLUMNS, ["name", "id", "running", "connections"])
    out.banner("Listing nodes ...")
    out.table(cols, table_rows(await admin.list_nodes(), cols, NODE_COLUMNS))


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
