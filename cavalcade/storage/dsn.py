"""One normaliser for database URLs, shared by ``serve``, ``db`` and ``migrations/env.py``.

Operators write libpq URLs (``postgres://``, ``postgresql://``) or SQLAlchemy ones
(``postgresql+asyncpg://``), with query parameters such as ``sslmode`` and
``target_session_attrs`` and several hosts (``h1:5432,h2:5433``). SQLAlchemy's URL parser
rejects several hosts, so the engine is built with an ``async_creator`` that hands the
normalised DSN straight to :func:`asyncpg.connect`, which understands all of that.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_SCHEMES = ("postgres", "postgresql")

# libpq client-side parameters asyncpg does not know. asyncpg would send any unknown query
# parameter to the server as a run-time setting, which the server rejects, so drop them.
_CLIENT_ONLY = frozenset(
    {
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "gssencmode",
        "gssdelegation",
        "channel_binding",
        "sslcompression",
        "sslsni",
        "sslcertmode",
        "load_balance_hosts",
        "replication",
        "hostaddr",
        # SQLAlchemy asyncpg dialect options that may ride along in a SQLAlchemy URL
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
        "async_fallback",
    }
)


# libpq security requirements the asyncpg driver cannot meet: refused loudly rather than
# dropped (a silently dropped requirement would connect with less security than asked).
# Values not listed for a name (e.g. channel_binding=prefer) ask for nothing the driver
# lacks and are dropped.
_UNSUPPORTED_SECURITY: dict[str, frozenset[str] | None] = {
    "channel_binding": frozenset({"require"}),
    "require_auth": None,  # any value
    "requirepeer": None,
    "gssencmode": frozenset({"require"}),
    "sslcertmode": frozenset({"require"}),
}

_SECRET_PARAMS = frozenset({"password", "sslpassword"})


class InvalidDatabaseURL(ValueError):
    """The database URL is not a PostgreSQL URL this broker can use."""


def _refuse_unsupported(params: list[tuple[str, str]]) -> None:
    for name, value in params:
        if name not in _UNSUPPORTED_SECURITY:
            continue
        values = _UNSUPPORTED_SECURITY[name]
        if values is None or value.lower() in values:
            raise InvalidDatabaseURL(
                f"database URL parameter {name}={value} cannot be honoured (the asyncpg"
                " driver does not support it); remove it or use a weaker setting knowingly"
            )


def normalize_dsn(url: str) -> str:
    """Return ``url`` as a ``postgresql://`` DSN that :func:`asyncpg.connect` accepts.

    Keeps user, password, every host and port, the database and the query parameters
    asyncpg understands; maps ``fallback_application_name`` to ``application_name`` when
    that is unset and drops libpq-only client options.
    """
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidDatabaseURL("not a database URL (expected postgresql://...)")
    base_scheme = scheme.lower().split("+", 1)[0]
    if base_scheme not in _SCHEMES:
        raise InvalidDatabaseURL(
            f"unsupported database URL scheme {scheme!r} (use postgresql:// or postgres://)"
        )
    location, qsep, query = rest.partition("?")
    if not qsep:
        return f"postgresql://{location}"
    params = parse_qsl(query, keep_blank_values=True)
    _refuse_unsupported(params)
    names = {name for name, _ in params}
    kept: list[tuple[str, str]] = []
    for name, value in params:
        if name == "fallback_application_name":
            if "application_name" not in names:
                kept.append(("application_name", value))
            continue
        if name in _CLIENT_ONLY:
            continue
        kept.append((name, value))
    if not kept:
        return f"postgresql://{location}"
    return f"postgresql://{location}?{urlencode(kept, safe='/:,')}"


def connect_timeout(url: str) -> float | None:
    """The libpq ``connect_timeout`` of ``url`` in seconds, if it names one."""
    _, _, query = url.partition("?")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "connect_timeout":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if seconds > 0 else None
    return None


def redact(url: str) -> str:
    """``url`` with every secret replaced by ``***`` (for logs and error lines): the
    password in the user info and ``password``/``sslpassword`` query parameters. Something
    that is not a URL is never shown."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "<not a URL>"
    location, qsep, query = rest.partition("?")
    userinfo, at, hosts = location.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        location = f"{user}:***@{hosts}"
    if qsep:
        parts = []
        for item in query.split("&"):
            name = item.split("=", 1)[0]
            parts.append(f"{name}=***" if unquote(name) in _SECRET_PARAMS else item)
        query = "&".join(parts)
    return f"{scheme}://{location}{qsep}{query}"


def make_engine(dsn: str, **kw: Any) -> AsyncEngine:
    """An :class:`AsyncEngine` whose connections come from ``asyncpg.connect(dsn)``.

    ``dsn`` may be any URL :func:`normalize_dsn` accepts; extra keywords go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine` (``pool_size``, ``echo``, ...).
    """
    normalized = normalize_dsn(dsn)
    timeout = connect_timeout(dsn) or 60.0

    async def creator() -> asyncpg.Connection:
        return await asyncpg.connect(normalized, timeout=timeout)

    return create_async_engine("postgresql+asyncpg://", async_creator=creator, **kw)


def with_database(url: str, database: str) -> str:
    """``url`` (any form :func:`normalize_dsn` accepts) pointing at ``database`` instead."""
    normalized = normalize_dsn(url)
    scheme, _, rest = normalized.partition("://")
    location, qsep, query = rest.partition("?")
    netloc = location.split("/", 1)[0]
    return f"{scheme}://{netloc}/{quote(database, safe='')}{qsep}{query}"
