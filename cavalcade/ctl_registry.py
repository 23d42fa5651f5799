"""What ``cavalcade ctl``'s verbs share: the errors they raise, how they print
(rabbitmqctl's tables, or JSON) and the registry ``@verb`` adds them to."""

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
