"""``cavalcade ctl``'s verbs on users, vhosts, permissions, policies and limits."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cavalcade.ctl_registry import (
    POLICY_COLUMNS,
    VHOST_COLUMNS,
    Output,
    UsageError,
    columns_arg,
    pick_columns,
    table_rows,
    verb,
)


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


@verb("list_vhosts", "list vhosts", columns_arg)
async def _list_vhosts(admin: Any, a: argparse.Namespace, out: Output) -> None:
    cols = pick_columns(a.columns, VHOST_COLUMNS, ["name"])
    out.banner("Listing vhosts ...")
    out.table(cols, table_rows(await admin.list_vhosts(), cols, VHOST_COLUMNS))


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
        cols,
        table_rows(await admin.list_policies(a.vhost, operator=operator), cols, POLICY_COLUMNS),
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
