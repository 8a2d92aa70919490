"""Start-up and shutdown of ``run``/``serve`` in order: whatever fails, nothing is left behind.

Each step of :data:`~routewatch.runner.STARTUP_STEPS` is made to fail, by a
real condition where one exists (a database that refuses, a schema that
cannot be migrated, a corrupt rollup row at the first refresh, the API port
taken between its pre-bind and listen, a prober worker whose spool another
process holds) and by the runner's ``fail_at`` test hook for the rest. After
each, no asyncio task, no connection to the test database, no child process
(the prober workers are real ``routewatch probe`` processes) and no listening
socket of this process is left. The runner is called in-process, on the
test's event loop, against the test database.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from hostile.harness import free_port

from routewatch.aggregator.publish.server import bind_listeners
from routewatch.config import load_config
from routewatch.config.settings import ENV_PREFIX, Settings
from routewatch.parts import Database, DatabaseUnavailable, InjectedFault
from routewatch.postgres.file_lock import FileLock
from routewatch.prober_workers import WorkerFailed
from routewatch.runner import (
    RUN_LOCK,
    STARTUP_MARKS,
    STARTUP_STEPS,
    RunOptions,
    run,
    serve,
)
from routewatch.storage.leadership import LEADER_LOCK_KEY
from routewatch.storage.migrate import MigrationError, migrate

pytestmark = pytest.mark.system

CONFIG = """
region: test
routers:
  - name: orcarouter
    base_url: simulator
    models: [openai/gpt-4.1-nano, google/gemini-2.5-flash]
prompts:
  - name: short
    messages: [{role: user, content: "Count from 1 to 10 in words."}]
schedule: {interval: 1s, jitter: 200ms, concurrency: 4}
timeouts: {connect: 2s, headers: 5s, first_token: 5s, idle: 2s, total: 10s}
api: {host: 127.0.0.1, port: 0}
aggregator: {refresh: 500ms}
"""
# The tests' own connections to the test database, told apart from the runner's.
TEST_CONNECTION = "startup-unwinds-test"
BANNER_END = "Ctrl-C stops everything."


# ---------------------------------------------------------------- what a process holds


def _child_pids() -> set[int]:
    me = os.getpid()
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            children.add(int(entry.name))
    return children


def _listening_ports() -> set[int]:
    """Ports of this process's sockets in the LISTEN state."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in ours:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def _runner_connections(dsn: str) -> int:
    """Connections to the test database other than the tests' own."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": TEST_CONNECTION})
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name <> $1",
                TEST_CONNECTION,
            )
        )
    finally:
        await conn.close()


@dataclass(frozen=True)
class Held:
    """What this process held before the runner ran."""

    tasks: frozenset[asyncio.Task[object]]
    children: frozenset[int]
    ports: frozenset[int]

    @classmethod
    def now(cls) -> Held:
        return cls(frozenset(asyncio.all_tasks()), frozenset(_child_pids()), frozenset(_listening_ports()))

    async def assert_nothing_more(self, dsn: str) -> None:
        """No task, child process, listening socket or database connection beyond these."""
        await asyncio.sleep(0)  # let callbacks of the last closed transports run
        tasks = [t for t in asyncio.all_tasks() - self.tasks if not t.done()]
        assert not tasks, f"tasks left running: {tasks}"
        assert _child_pids() <= self.children, f"child processes left: {_child_pids() - self.children}"
        assert _listening_ports() <= self.ports, f"listening sockets left: {_listening_ports() - self.ports}"
        # A backend ends a moment after its client has closed the connection.
        deadline = time.monotonic() + 10
        while (left := await _runner_connections(dsn)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert left == 0, f"{left} database connection(s) left"


# ---------------------------------------------------------------- the runner, in-process


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from an environment without routewatch's variables (a developer's own stay out)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return Settings()


@dataclass
class Run:
    """One in-process run: its options, the test database, the API's pre-bound sockets."""

    opts: RunOptions
    settings: Settings
    database: Database
    sockets: list[socket.socket]

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def serve(self) -> int:
        return await serve(self.opts, self.settings, self.database, self.sockets)


@pytest.fixture
def make_run(tmp_path: Path, db_dsn: str, settings: Settings) -> Iterator[Callable[..., Run]]:
    path = tmp_path / "probes.yaml"
    path.write_text(CONFIG)
    config = load_config(path)
    opened: list[socket.socket] = []

    def make(**options: object) -> Run:
        sockets = bind_listeners("127.0.0.1", 0)
        opened.extend(sockets)
        options.setdefault("workers", 2)
        opts = RunOptions(
            config=config, config_path=str(path), data_dir=tmp_path / "data", host="127.0.0.1", port=0, **options
        )  # type: ignore[arg-type]
        return Run(opts, settings, Database(db_dsn, "the test database"), sockets)

    yield make
    for sock in opened:
        sock.close()


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": TEST_CONNECTION})


# ---------------------------------------------------------------- real faults, one per step that has one

Fault = Callable[[Run, AsyncExitStack], Awaitable[tuple[type[BaseException], str]]]


async def _database_refuses(run: Run, held: AsyncExitStack) -> tuple[type[BaseException], str]:
    refuser = held.enter_context(socket.socket())
    refuser.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    dsn = f"postgresql://rw:hunter2secret@127.0.0.1:{refuser.getsockname()[1]}/rw"
    run.database = Database(dsn, "a database that refuses")
    return DatabaseUnavailable, "cannot reach the database, a database that refuses"


async def _schema_not_migratable(run: Run, held: AsyncExitStack) -> tuple[type[BaseException], str]:
    conn = await _connect(run.database.dsn)
    try:  # as a routewatch from before versioned migrations left it
        await conn.execute("CREATE TABLE probe_results (id bigint)")
    finally:
        await conn.close()
    return MigrationError, "no storage mode is recorded"


async def _corrupt_rollup_row(run: Run, held: AsyncExitStack) -> tuple[type[BaseException], str]:
    conn = await _connect(run.database.dsn)
    held.push_async_callback(conn.close)
    await migrate(conn)
    await conn.execute(
        """
        INSERT INTO probe_hist_hourly (bucket, router, model, provider, region, prompt, methodology,
            attempts, ok, rate_limited, overloaded, input_tokens, output_tokens, ttft, ttfat, tps)
        VALUES (date_trunc('hour', now()), 'orcarouter', 'openai/gpt-4.1-nano', 'p', 'test', 'short', 'm1',
            1, 1, 0, 0, 0, 0, $1, $1, $1)""",
        b"\x00",
    )
    # Another process refreshes, so this one is a standby, which reads every rollup row of its windows.
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY)
    return ValueError, "histogram bytes truncated"


async def _api_port_taken_after_pre_bind(run: Run, held: AsyncExitStack) -> tuple[type[BaseException], str]:
    # Both sockets may bind the port (SO_REUSEADDR, neither listening yet); the first to listen has it.
    thief = held.enter_context(socket.socket())
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    thief.bind(("127.0.0.1", run.port))
    thief.listen()
    return OSError, "Address already in use"


async def _worker_spool_held(run: Run, held: AsyncExitStack) -> tuple[type[BaseException], str]:
    spool = run.opts.data_dir / "spool-worker-2"
    spool.mkdir(parents=True)
    lock = held.enter_context(open(spool / "lock", "a"))
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another routewatch's writer does
    # Worker 1 starts and joins the probers; worker 2 exits at start: both must be gone afterwards.
    return WorkerFailed, r"prober worker 2 \(pid \d+\) exited with code 1 while starting"


REAL_FAULTS: dict[str, Fault] = {
    "database": _database_refuses,
    "migrations": _schema_not_migratable,
    "aggregator": _corrupt_rollup_row,
    "api": _api_port_taken_after_pre_bind,
    "prober workers": _worker_spool_held,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", STARTUP_STEPS)
async def test_a_step_that_fails_to_start_leaves_nothing_behind(
    step: str, make_run: Callable[..., Run], db_dsn: str
) -> None:
    before = Held.now()
    async with AsyncExitStack() as held:
        if step in REAL_FAULTS:
            run = make_run()
            raised, message = await REAL_FAULTS[step](run, held)
        else:
            run = make_run(fail_at=step)
            raised, message = InjectedFault, f"injected fault at the start of {step!r}"
        with pytest.raises(raised, match=message) as failure:
            await run.serve()
        assert "hunter2secret" not in str(failure.value)
    await before.assert_nothing_more(db_dsn)  # once the fault's own socket, lock or connection is gone


@asynccontextmanager
async def _serving(run: Run, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[asyncio.Task[int]]:
    """``run`` served until its banner is printed."""
    task = asyncio.create_task(run.serve())
    out = ""
    deadline = time.monotonic() + 30
    while BANNER_END not in out:
        assert not task.done(), f"the runner ended before its banner: {task.exception()!r}\n{out}"
        assert time.monotonic() < deadline, f"no banner within 30s:\n{out}"
        await asyncio.sleep(0.05)
        out += capsys.readouterr().out
    yield task


@pytest.mark.timeout(60)
@pytest.mark.parametrize("probes", [True, False], ids=["run", "serve"])
async def test_sigterm_stops_everything_with_exit_code_0(
    probes: bool, make_run: Callable[..., Run], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = Held.now()
    run = make_run(probes=probes)
    async with _serving(run, capsys) as task:
        assert run.port in _listening_ports()
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
    out = capsys.readouterr().out
    if probes:
        assert "stopping: finishing probes in flight" in out and "probe results this run; bye" in out
    else:
        assert "\nstopping …" in out
    await before.assert_nothing_more(db_dsn)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", [s for s in STARTUP_STEPS if s not in STARTUP_MARKS])
async def test_a_step_that_fails_to_stop_does_not_keep_the_others_running(
    step: str,
    make_run: Callable[..., Run],
    db_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = Held.now()
    run = make_run(fail_stopping=step)
    async with _serving(run, capsys) as task:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(InjectedFault, match=f"injected fault once {step!r} had stopped"):
            await asyncio.wait_for(task, 30)
    await before.assert_nothing_more(db_dsn)


# ---------------------------------------------------------------- the main thread's part: lock, port, embedded server


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp, not pytest's tmp_path: as root the server runs as another
    # user, who must be able to reach the data directory.
    path = Path(tempfile.mkdtemp(prefix="routewatch-unwind-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _main_thread_released(data_dir: Path, port: int, children: set[int]) -> None:
    """The run lock can be taken, the API port bound, and no child process is left."""
    lock = FileLock(data_dir / RUN_LOCK)
    assert lock.acquire(), "the run lock is still held"
    lock.release()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert _child_pids() <= children, f"child processes left: {_child_pids() - children}"


@pytest.mark.timeout(120)
def test_a_failed_start_stops_the_embedded_server_and_frees_the_lock_and_port(
    data_dir: Path,
    tmp_path: Path,
    settings: Settings,
) -> None:
    """The embedded server, started on the main thread, is stopped when a step on the event loop fails."""
    children = _child_pids()
    path = tmp_path / "probes.yaml"
    path.write_text(CONFIG)
    port = free_port()
    opts = RunOptions(
        config=load_config(path),
        config_path=str(path),
        data_dir=data_dir,
        host="127.0.0.1",
        port=port,
        fail_at="migrations",
    )  # after the server's watch has started
    with pytest.raises(InjectedFault):
        run(opts, settings)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    _main_thread_released(data_dir, port, children)


def test_a_database_that_refuses_frees_the_lock_and_port(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    children = _child_pids()
    with socket.socket() as refuser:
        refuser.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ROUTEWATCH_DATABASE_URL", f"postgresql://rw:pw@127.0.0.1:{refuser.getsockname()[1]}/rw")
        settings = Settings()
        path = tmp_path / "probes.yaml"
        path.write_text(CONFIG)
        port = free_port()
        opts = RunOptions(
            config=load_config(path), config_path=str(path), data_dir=data_dir, host="127.0.0.1", port=port
        )
        with pytest.raises(DatabaseUnavailable):
            run(opts, settings)
    _main_thread_released(data_dir, port, children)


def test_a_fault_hook_names_a_real_step(tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(CONFIG)
    config = load_config(path)
    with pytest.raises(ValueError, match="no start-up step 'writter'"):
        RunOptions(config, str(path), tmp_path, "127.0.0.1", 0, fail_at="writter")
    with pytest.raises(ValueError, match="no step 'running' that stops"):
        RunOptions(config, str(path), tmp_path, "127.0.0.1", 0, fail_stopping="running")
