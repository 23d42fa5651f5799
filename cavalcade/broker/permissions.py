"""Permission checks exactly as RabbitMQ makes them.

* A permission is a regex searched *unanchored* in the resource name (``re.search``, as
  RabbitMQ's ``re:run``): ``read=q`` allows ``xq``. The empty string allows nothing.
* The default exchange ``""`` is checked as ``amq.default`` (publish needs write on it).
* Grants are re-read from the database when older than ``MAX_AGE`` seconds, so a change
  (or a clear) applies to open connections within that time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from cavalcade.errors import AccessRefused

log = logging.getLogger(__name__)

MAX_AGE = 1.0
NOTHING = re.compile(r"(?!)")

Grants = tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]
CONFIGURE, WRITE, READ = 0, 1, 2


def compile_grants(row: Sequence[str | None] | None) -> Grants:
    """Configure, write and read regexes of a permissions row (None: no access)."""
    if row is None:
        return (NOTHING, NOTHING, NOTHING)
    out: list[re.Pattern[str]] = []
    for pattern in (row[0], row[1], row[2]):
        try:
            out.append(re.compile(pattern) if pattern else NOTHING)
        except re.error:
            log.warning("permission regex %r does not compile: it allows nothing", pattern)
            out.append(NOTHING)
    return (out[0], out[1], out[2])


def resource_name(kind: str, name: str) -> str:
    return "amq.default" if kind == "exchange" and name == "" else name


def check(grants: Grants, which: int, kind: str, name: str, vhost: str, user: str) -> None:
    """403 unless the grant ``which`` allows ``kind`` ``name``."""
    shown = resource_name(kind, name)
    if grants[which].search(shown) is None:
        raise AccessRefused(
            f"access to {kind} '{shown}' in vhost '{vhost}' refused for user '{user}'"
        )


def stale(loaded_at: float) -> bool:
    return time.monotonic() - loaded_at > MAX_AGE
