"""What ``cavalcade ctl``'s verbs share: the errors they raise, how they print
(rabbitmqctl's tables, or JSON), the columns of each listing and the registry ``@verb``
adds them to."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any


class UsageError(Exception):
    """Bad command line: exit 64."""


class Unavailable(Exception):
    """The database cannot be reached: exit 69."""


# --------------------------------------------------------------------------- output


def _erlang_table(value: dict[str, Any]) -> str:
    """Arguments as rabbitmqctl prints them: ``[{"x-expires",10000}]``."""
    parts = []
    for k, v in value.items():
        shown = json.dumps(v) if not isinstance(v, str) else f'"{v}"'
        parts.append(f'{{"{k}",{shown}}}')
    return "[" + ",".join(parts) + "]"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, dict):
        return _erlang_table(value)
    return str(value)


@dataclass
class Output:
    quiet: bool
    headers: bool
    json: bool

    def banner(self, text: str) -> None:
        if not self.quiet and not self.json:
            print(text)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.json:
            objects = [
                json.dumps(dict(zip(columns, row, strict=True)), separators=(",", ":"), default=str)
                for row in rows
            ]
            print("[")
            if objects:
                print("\n,".join(objects))
            print("]")
            return
        if self.headers:
            print("\t".join(columns))
        for row in rows:
            print("\t".join(_cell(v) for v in row))

    def value(self, value: Any) -> None:
        """One JSON value (limits), as rabbitmqctl prints it."""
        print(json.dumps(value, separators=(",", ":")))


# --------------------------------------------------------------------------- verbs

Verb = Callable[[Any, argparse.Namespace, Output], Awaitable[None]]
VERBS: dict[str, tuple[Verb, Callable[[argparse.ArgumentParser], object], str]] = {}


def verb(
    name: str, help_: str, args: Callable[[argparse.ArgumentParser], object] = lambda p: None
) -> Callable[[Verb], Verb]:
    def register(fn: Verb) -> Verb:
        VERBS[name] = (fn, args, help_)
        return fn

    return register


def columns_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("columns", nargs="*", metavar="COLUMN")


# --------------------------------------------------------------------------- columns

Getter = Callable[[Any], Any]


def attr(name: str) -> Getter:
    return lambda r: getattr(r, name)


def json_text(name: str) -> Getter:
    return lambda r: json.dumps(getattr(r, name), separators=(",", ":"))


QUEUE_COLUMNS: dict[str, Getter] = {
    c: attr(c)
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
QUEUE_COLUMNS["owner_pid"] = attr("owner_node")
EXCHANGE_COLUMNS: dict[str, Getter] = {
    c: attr(c)
    for c in ("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments", "policy")
}
BINDING_COLUMNS: dict[str, Getter] = {
    c: attr(c)
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
    c: attr(c)
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
    c: attr(c)
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
    "name": attr("name"),
    "description": attr("description"),
    "tags": attr("tags"),
    "tracing": lambda r: False,
}
NODE_COLUMNS: dict[str, Getter] = {
    "name": attr("name"),
    "id": attr("id"),
    "running": attr("running"),
    "started_at": attr("started_at"),
    "heartbeat_at": attr("heartbeat_at"),
    "seconds_since_heartbeat": lambda r: round(r.seconds_since_heartbeat, 1),
    "connections": attr("connections"),
}
POLICY_COLUMNS: dict[str, Getter] = {
    "vhost": attr("vhost"),
    "name": attr("name"),
    "pattern": attr("pattern"),
    "apply-to": attr("apply_to"),
    "definition": json_text("definition"),
    "priority": attr("priority"),
}


def pick_columns(
    requested: Sequence[str], known: dict[str, Getter], default: Sequence[str]
) -> list[str]:
    if not requested:
        return list(default)
    unknown = [c for c in requested if c not in known]
    if unknown:
        raise UsageError(f"Info key(s) {','.join(unknown)} are not supported")
    return list(requested)


def table_rows(
    records: Sequence[Any], columns: Sequence[str], known: dict[str, Getter]
) -> list[list[Any]]:
    return [[known[c](r) for c in columns] for r in records]
