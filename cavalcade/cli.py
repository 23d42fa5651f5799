"""The command line: ``cavalcade serve`` and ``cavalcade db upgrade|downgrade|current|...``.

Every option is also a ``CAVALCADE_*`` environment variable (see :class:`Settings`); a
flag on the command line wins over the environment. Errors an operator must act on are
printed as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cavalcade.cli_settings import CommandError, build_settings, wait_for_database
from cavalcade.cli_settings import database as _database
from cavalcade.errors import SchemaNotReady
from cavalcade.settings import Settings

if TYPE_CHECKING:
    from cavalcade.storage.embedded import EmbeddedPostgres

log = logging.getLogger("cavalcade.cli")

PROG = "cavalcade"


class _Interrupted(BaseException):
    """SIGTERM/SIGINT arrived while the node was still starting (outside the event loop)."""


# --------------------------------------------------------------------------- arguments


def _database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (postgres://, postgresql://, postgresql+asyncpg://; several "
        "hosts and libpq parameters allowed) [CAVALCADE_DATABASE_URL]; without one, an "
        "embedded PostgreSQL runs in --data-dir",
    )
    parser.add_argument(
        "--database-url-file",
        metavar="FILE",
        type=Path,
        help="read the database URL from FILE (so it never shows in ps)"
        " [CAVALCADE_DATABASE_URL_FILE]",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help="folder of the embedded PostgreSQL [CAVALCADE_DATA_DIR, ./cavalcade-data]",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR [CAVALCADE_LOG_LEVEL, INFO]",
    )


def _management_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--management-port",
        type=int,
        metavar="PORT",
        help="management HTTP API, /metrics and dashboard [CAVALCADE_MANAGEMENT_PORT, 15672]",
    )
    parser.add_argument(
        "--management-host",
        metavar="HOST",
        help="address of the management listener [CAVALCADE_MANAGEMENT_HOST, as --host]",
    )
    parser.add_argument(
        "--no-management",
        dest="management",
        action="store_false",
        default=None,
        help="no management listener [CAVALCADE_MANAGEMENT=false]",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        metavar="SECONDS",
        help="how often each node publishes its message counters [CAVALCADE_STATS_INTERVAL, 5]",
    )
    parser.add_argument(
        "--management-tls",
        action="store_true",
        default=None,
        help="serve the management listener over HTTPS with --tls-cert/--tls-key "
        "[CAVALCADE_MANAGEMENT_TLS]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An AMQP 0-9-1 broker that keeps all of its state in PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run a broker node")
    serve.add_argument("--host", help="address to listen on [CAVALCADE_HOST, 0.0.0.0]")
    serve.add_argument("--port", type=int, help="AMQP port [CAVALCADE_PORT, 5672]")
    _database_options(serve)
    serve.add_argument(
        "--node-name", help="label of this node [CAVALCADE_NODE_NAME, cavalcade@HOST:PORT]"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="sibling node processes sharing the listening socket [CAVALCADE_WORKERS, 1]",
    )
    serve.add_argument(
        "--notify",
        choices=["listen", "poll"],
        help="wake-ups by LISTEN/NOTIFY, or by polling only [CAVALCADE_NOTIFY, listen]",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="fallback wake-up interval [CAVALCADE_POLL_INTERVAL, 1.0]",
    )
    serve.add_argument(
        "--database-wait",
        type=float,
        metavar="SECONDS",
        help="how long to retry an unreachable database at start [CAVALCADE_DATABASE_WAIT, 60]",
    )
    serve.add_argument(
        "--memory-high-watermark",
        type=float,
        metavar="LIMIT",
        help="block publishers while the node's resident memory is above LIMIT: a fraction"
        " of RAM (<= 1) or bytes; 0 is off [CAVALCADE_MEMORY_HIGH_WATERMARK, 0.4]",
    )
    tls = serve.add_argument_group("TLS (amqps)")
    tls.add_argument(
        "--tls-port",
        type=int,
        metavar="PORT",
        help="amqps port (5671 by convention) [CAVALCADE_TLS_PORT]",
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="server certificate (PEM) [CAVALCADE_TLS_CERT]",
    )
    tls.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="its private key (PEM) [CAVALCADE_TLS_KEY]"
    )
    tls.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="CA bundle for client certificates [CAVALCADE_TLS_CA]",
    )
    tls.add_argument(
        "--tls-verify-peer",
        action="store_const",
        const=True,
        help="ask for and verify client certificates (SASL EXTERNAL) [CAVALCADE_TLS_VERIFY_PEER]",
    )
    tls.add_argument(
        "--tls-fail-if-no-peer-cert",
        action="store_const",
        const=True,
        help="refuse clients without a valid certificate [CAVALCADE_TLS_FAIL_IF_NO_PEER_CERT]",
    )
    tls.add_argument(
        "--no-plain-listener",
        dest="plain_listener",
        action="store_const",
        const=False,
        help="TLS only: no plain AMQP listener [CAVALCADE_PLAIN_LISTENER=false]",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or JSON objects [CAVALCADE_LOG_FORMAT, text]",
    )
    _management_options(serve)
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", help="manage the database schema (Alembic)")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate up (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    _database_options(upgrade)
    downgrade = db_commands.add_parser("downgrade", help="migrate down to REVISION")
    downgrade.add_argument("revision")
    _database_options(downgrade)
    current = db_commands.add_parser("current", help="show the database's revision")
    current.add_argument("-v", "--verbose", action="store_true")
    _database_options(current)
    history = db_commands.add_parser("history", help="list the migrations")
    history.add_argument("-v", "--verbose", action="store_true")
    _database_options(history)
    check = db_commands.add_parser("check", help="fail if the models and the schema differ")
    _database_options(check)
    db.set_defaults(handler=cmd_db)
    # Parsed by cavalcade.ctl itself (its exit codes are rabbitmqctl's); listed for --help.
    commands.add_parser("ctl", help="operator verbs, as rabbitmqctl's (cavalcade ctl --help)")
    return parser


class _JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level_name: str, log_format: str = "text") -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise CommandError(f"unknown log level {level_name!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler])
    if level > logging.DEBUG:
        # alembic's per-migration INFO lines are useful; SQLAlchemy's are noise
        logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _version() -> str:
    from cavalcade import __version__

    return __version__


# --------------------------------------------------------------------------- database


# --------------------------------------------------------------------------- db


def cmd_db(args: argparse.Namespace) -> int:
    from alembic.util.exc import AutogenerateDiffsDetected
    from alembic.util.exc import CommandError as AlembicError

    from cavalcade.storage import schema

    settings = build_settings(args)
    _configure_logging(settings.log_level)
    with _database(settings, stop_when_done=True) as dsn:
        try:
            if args.db_command == "upgrade":
                schema.upgrade(dsn, args.revision)
            elif args.db_command == "downgrade":
                schema.downgrade(dsn, args.revision)
            elif args.db_command == "current":
                schema.current(dsn, verbose=args.verbose)
            elif args.db_command == "history":
                schema.history(dsn, verbose=args.verbose)
            elif args.db_command == "check":
                schema.check(dsn)
        except AutogenerateDiffsDetected as exc:
            raise CommandError(f"the schema differs from the models: {exc}") from exc
        except AlembicError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot reach the database: {exc}") from exc
    return 0


# --------------------------------------------------------------------------- serve


def bind_socket(host: str, port: int, flag: str = "--port") -> socket.socket:
    """Bind (not yet listen) the AMQP socket: SO_REUSEADDR, never SO_REUSEPORT."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CommandError(f"cannot resolve --host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(
                f"port {port} is already in use on {host or '*'}: stop what holds it or "
                f"choose another with {flag}"
            ) from exc
        if exc.errno == errno.EACCES:
            raise CommandError(
                f"no permission to listen on port {port}: choose another with {flag}"
            ) from exc
        raise CommandError(f"cannot listen on {host}:{port} ({flag}): {exc}") from exc
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While the node starts (no event loop yet), turn SIGTERM/SIGINT into an exception so
    the embedded cluster is still stopped on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind_management_socket(settings: Settings) -> socket.socket | None:
    """The management listener's socket, bound in the parent like the AMQP one (workers
    share it). A port given explicitly that is taken is an error; the default port
    (15672) taken by something else only logs a warning and runs without it."""
    if not settings.management:
        return None
    host = settings.effective_management_host()
    try:
        sock = bind_socket(host, settings.management_port, "--management-port")
    except CommandError as exc:
        explicit = "management_port" in settings.model_fields_set
        if explicit or os.environ.get("CAVALCADE_MANAGEMENT_PORT"):
            raise
        log.warning("%s; running without the management listener", exc)
        return None
    sock.listen(128)
    return sock


def _run_node_process(
    settings: Settings,
    dsn: str,
    sock: socket.socket,
    tls_sock: socket.socket | None = None,
    http_sock: socket.socket | None = None,
) -> None:
    """Run one node in this process until SIGTERM/SIGINT."""
    from cavalcade import app

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                log.info("received %s: stopping", signal.Signals(signum).name)
                stop.set()
            elif task is not None:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await app.run_node(settings, dsn, sock, stop, tls_sock, http_sock)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(main())
        except asyncio.CancelledError:
            pass


def _fork_workers(
    count: int,
    settings: Settings,
    dsn: str,
    sock: socket.socket,
    tls_sock: socket.socket | None = None,
    http_sock: socket.socket | None = None,
) -> list[int]:
    """Fork ``count`` sibling nodes sharing ``sock``; each runs until SIGTERM/SIGINT."""
    children: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                _run_node_process(settings, dsn, sock, tls_sock, http_sock)
            except BaseException:  # last resort in a forked child
                log.exception("worker node failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    return children


def _reap(children: list[int], timeout: float = 30.0) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
    for pid in pending:
        log.warning("worker %d did not stop in %.0fs; killing it", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _bind_listeners(
    settings: Settings,
) -> tuple[socket.socket, socket.socket | None, socket.socket | None]:
    """The AMQP, AMQPS and management sockets, bound (the TLS setup checked first)."""
    tls_sock = None
    if settings.tls_port is not None:
        from cavalcade.protocol.tls import TLSConfigError, server_context

        try:
            server_context(settings)  # fail before listening
        except TLSConfigError as exc:
            raise CommandError(str(exc)) from exc
        tls_sock = bind_socket(settings.host, settings.tls_port)
    elif not settings.plain_listener:
        raise CommandError("--no-plain-listener needs --tls-port")
    if settings.plain_listener:
        sock = bind_socket(settings.host, settings.port)
    else:
        assert tls_sock is not None
        sock, tls_sock = tls_sock, None
    try:
        http_sock = bind_management_socket(settings)
    except CommandError:
        _close_sockets(sock, tls_sock)
        raise
    return sock, tls_sock, http_sock


def _close_sockets(*socks: socket.socket | None) -> None:
    for s in socks:
        if s is not None:
            s.close()


def _external_database(settings: Settings) -> str:
    """The normalised DSN of ``--database-url``, once it answers and its schema is current."""
    from cavalcade.storage import schema
    from cavalcade.storage.dsn import InvalidDatabaseURL, normalize_dsn, redact

    assert settings.database_url
    try:
        dsn = normalize_dsn(settings.database_url)
    except InvalidDatabaseURL as exc:
        raise CommandError(str(exc)) from exc
    display = redact(settings.database_url)
    asyncio.run(wait_for_database(dsn, settings.database_wait, display))
    try:
        note = asyncio.run(schema.check_schema(dsn))
        if note:
            log.warning("%s", note)
    except SchemaNotReady as exc:
        raise CommandError(str(exc)) from exc
    return dsn


def _start_embedded(embedded: EmbeddedPostgres) -> str:
    """Start the embedded cluster and upgrade its schema; its DSN."""
    from cavalcade.storage import schema
    from cavalcade.storage.embedded import EmbeddedPostgresError

    try:
        dsn = embedded.start()
    except EmbeddedPostgresError as exc:
        raise CommandError(str(exc)) from exc
    schema.upgrade(dsn, "head")
    return dsn


def _listen(settings: Settings, sock: socket.socket, tls_sock: socket.socket | None) -> None:
    """Load the broker, then start accepting on the bound sockets."""
    try:
        import cavalcade.app  # noqa: F401
    except ImportError as exc:
        raise CommandError(f"cannot load the broker (cavalcade.app): {exc}") from exc
    sock.listen(1024)
    if tls_sock is not None:
        tls_sock.listen(1024)
        log.info("amqps listening on %s:%d", settings.host, tls_sock.getsockname()[1])


def _log_listeners(
    settings: Settings, sock: socket.socket, http_sock: socket.socket | None
) -> None:
    log.info(
        "listening on %s:%d (%d worker%s)",
        settings.host,
        sock.getsockname()[1],
        settings.workers,
        "" if settings.workers == 1 else "s",
    )
    if http_sock is not None:
        log.info(
            "management listener on %s:%d",
            settings.effective_management_host(),
            http_sock.getsockname()[1],
        )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = build_settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    sock, tls_sock, http_sock = _bind_listeners(settings)
    embedded = None
    try:
        with _signals_interrupt():
            if settings.database_url:
                dsn = _external_database(settings)
            else:
                from cavalcade.storage.embedded import EmbeddedPostgres

                embedded = EmbeddedPostgres(settings.data_dir)
                dsn = _start_embedded(embedded)
            _listen(settings, sock, tls_sock)
        _log_listeners(settings, sock, http_sock)
        children = _fork_workers(settings.workers - 1, settings, dsn, sock, tls_sock, http_sock)
        try:
            _run_node_process(settings, dsn, sock, tls_sock, http_sock)
        finally:
            _reap(children)
    except _Interrupted:
        log.info("interrupted while starting")
    finally:
        _close_sockets(sock, tls_sock, http_sock)
        if embedded is not None:
            try:
                embedded.stop()
            except Exception as exc:  # noqa: BLE001 - report, then exit
                log.error("could not stop the embedded PostgreSQL: %s", exc)
    return 0


# --------------------------------------------------------------------------- main


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``cavalcade`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ctl"]:
        from cavalcade import ctl

        ctl.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except CommandError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
