"""``cavalcade ctl export_definitions FILE`` / ``import_definitions FILE``: RabbitMQ's
definitions format, through the same use-cases as ``/api/definitions``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cavalcade.broker import definitions
from cavalcade.broker.admin import ValidationError

from .ctl_registry import Output, UsageError, verb


def _file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a definitions.json file ('-' for standard input/output)")


@verb(
    "export_definitions",
    "write users, vhosts, permissions, policies, queues, exchanges "
    "and bindings to FILE in RabbitMQ's format",
    _file_arg,
)
async def _export_definitions(admin: Any, a: argparse.Namespace, out: Output) -> None:
    doc = await definitions.export_definitions(admin)
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if a.file == "-":
        sys.stdout.write(text)
        return
    out.banner(f'Exporting definitions in JSON to a file at "{a.file}" ...')
    Path(a.file).write_text(text)


@verb(
    "import_definitions",
    "create what a definitions.json file (RabbitMQ's or ours) defines",
    _file_arg,
)
async def _import_definitions(admin: Any, a: argparse.Namespace, out: Output) -> None:
    try:
        raw = sys.stdin.read() if a.file == "-" else Path(a.file).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {a.file}: {exc}") from exc
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{a.file} is not valid JSON: {exc}") from exc
    out.banner(f'Importing definitions in JSON from a file at "{a.file}" ...')
    summary = await definitions.import_definitions(admin, doc)
    created = ", ".join(f"{n} {k}" for k, n in sorted(summary.created.items())) or "nothing new"
    out.banner(f"Successfully started definition import: {created}")
