"""``routewatch run`` and ``routewatch once`` as a user runs them: real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from hostile.harness import alive, routewatch_once, wait_until

from routewatch.aggregator.publish.server import HEAD_TIMEOUT_S
from routewatch.storage.leadership import LEADER_LOCK_KEY

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parent.parent
ROUTEWATCH = [sys.executable, "-m", "routewatch.cli"]

FAST_CONFIG = """
region: test
routers:
  - name: orcarouter
    base_url: simulator
    api_key_env: ROUTEWATCH_API_KEY
    models: [openai/gpt-4.1-nano, anthropic/claude-haiku-4.5, google/gemini-2.5-flash, deepseek/deepseek-r1]
prompts:
  - name: short
    messages: [{role: user, content: "Count from 1 to 40 in words."}]
schedule: {interval: 1s, jitter: 200ms, concurrency: 8}
timeouts: {connect: 2s, headers: 5s, first_token: 5s, idle: 2s, total: 10s}
api: {host: 127.0.0.1, port: 0, public_url: "https://rw.example.org"}
aggregator: {refresh: 500ms}
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
    env.update(extra)
    return env


class Run:
    """A ``routewatch run`` child process and the lines it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ROUTEWATCH + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("routewatch exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(self.lines))

    def output(self) -> str:
        """Everything printed, once the process has exited; closes the pipe."""
        assert self.proc.stdout is not None
        rest = self.proc.stdout.read()
        self.proc.stdout.close()
        return "".join(self.lines) + rest


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "probes.yaml"
    path.write_text(FAST_CONFIG)
    return path


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _interrupt(run: Run) -> tuple[int, str]:
    """Ctrl-C ``run`` (unless it has exited); its exit code and everything it printed."""
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGINT)
    code = run.proc.wait(timeout=60)
    return code, run.output()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    import shutil
    import tempfile

    # Under /tmp, not pytest's tmp_path: as root the server runs as another
    # user, who must be able to reach the data directory.
    path = Path(tempfile.mkdtemp(prefix="routewatch-run-"))
    path.chmod(0o755)  # mkdtemp makes it owner-only; this directory is ours to open
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(180)
def test_run_serves_stats_and_stops_cleanly_on_ctrl_c(config_file: Path, data_dir: Path) -> None:
    """No database configured: embedded PostgreSQL, simulator, probes, API; Ctrl-C stops it all."""
    run = Run(["run", "--config", str(config_file), "--data-dir", str(data_dir)], _env())
    try:
        api = run.wait_for(r"API:\s+(http://\S+)").group(1)
        banner = "".join(run.lines)
        assert "built-in router simulator" in banner
        assert f"data directory: {data_dir}" in banner
        assert "embedded PostgreSQL" in banner
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        # Wait until every model has probes in its 7-day stats. The slowest, deepseek/deepseek-r1, takes
        # about 3 s a probe (1.5 s to its first token, then 48 tokens at 30/s) and skips the 1 s slots
        # meanwhile; the deadline is only where waiting turns into failing, with room for a loaded machine.
        deadline = time.monotonic() + 60
        while True:
            models = _get(api + "/v1/models")["models"]
            if all(m["stats"]["samples"]["attempted"] >= 2 for m in models) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(models) == 4
        samples = {m["id"]: m["stats"]["samples"] for m in models}
        assert all(s["attempted"] >= 2 for s in samples.values()), samples
        stats = _get(api + "/v1/models/openai/gpt-4.1-nano/stats?window=7d")
        assert stats["model"] == "openai/gpt-4.1-nano" and stats["ttft_p50_ms"] > 0
        # The banner's other addresses answer: the status page and the metrics, with each prober worker's.
        status_url = run.wait_for(r"status:\s+(http://\S+)").group(1)
        with urllib.request.urlopen(status_url, timeout=10) as resp:
            assert "openai/gpt-4.1-nano" in resp.read().decode()
        # The model page's embed snippet links to api.public_url.
        with urllib.request.urlopen(api + "/status/models/openai/gpt-4.1-nano", timeout=10) as resp:
            assert "src=&quot;https://rw.example.org/badge/openai/gpt-4.1-nano.svg&quot;" in resp.read().decode()
        with urllib.request.urlopen(api + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        workers = len(os.sched_getaffinity(0))  # --workers defaults to the usable cores
        assert f"by {workers} prober process" in banner
        assert f"routewatch_prober_workers {workers:.1f}" in metrics
        for worker in range(1, workers + 1):
            assert f'routewatch_prober_worker_up{{worker="{worker}"}} 1.0' in metrics
            assert f'routewatch_probes_total{{result="ok",worker="{worker}"}}' in metrics
    finally:
        code, out = _interrupt(run)
    assert code == 0, out
    assert "Traceback" not in out
    assert re.search(r"stored \d+ probe results", out)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the embedded PostgreSQL outlived routewatch"


@pytest.mark.timeout(180)
def test_embedded_postgres_and_the_prober_workers_die_with_a_killed_routewatch(
    config_file: Path, data_dir: Path
) -> None:
    run = Run(["run", "--config", str(config_file), "--data-dir", str(data_dir)], _env())
    try:
        run.wait_for(r"API:\s+http://")
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        workers = [int(p) for p in re.findall(r"prober worker \d+ is running \(pid (\d+)", "".join(run.lines))]
        assert alive(pid) and workers and all(alive(w) for w in workers)
    finally:
        run.proc.kill()
        run.proc.wait(timeout=30)
        run.output()
    deadline = time.monotonic() + 15
    while any(map(alive, [pid, *workers])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the embedded PostgreSQL outlived a SIGKILLed routewatch"
    assert not any(map(alive, workers)), "a prober worker outlived a SIGKILLed routewatch"


def test_once_prints_a_table_of_every_model(config_file: Path) -> None:
    proc = routewatch_once(config_file)
    for model in (
        "openai/gpt-4.1-nano",
        "anthropic/claude-haiku-4.5",
        "google/gemini-2.5-flash",
        "deepseek/deepseek-r1",
    ):
        assert model in proc.stdout
    m = re.search(r"(\d+) of (\d+) probes ok", proc.stdout)
    assert m and int(m.group(2)) == 4, proc.stdout
    assert proc.returncode == (0 if m.group(1) == m.group(2) else 2)  # 2: some probe failed


def test_once_shows_the_prompt_tier_of_each_probe(tmp_path: Path) -> None:
    """A short hand-written prompt (tier 100) and a generated 1k one: each row names its tier."""
    path = tmp_path / "probes.yaml"
    path.write_text(
        FAST_CONFIG.replace(
            "models: [openai/gpt-4.1-nano, anthropic/claude-haiku-4.5, google/gemini-2.5-flash, deepseek/deepseek-r1]",
            "models: [openai/gpt-4.1-nano]",
        ).replace(
            '    messages: [{role: user, content: "Count from 1 to 40 in words."}]\n',
            '    messages: [{role: user, content: "Count from 1 to 40 in words."}]\n'
            "  - name: long\n    tier: 1k\n    max_tokens: 16\n",
        ),
        encoding="utf-8",
    )
    proc = routewatch_once(path)
    assert "router · prompt · tier" in proc.stdout, proc.stdout
    rows = re.findall(r"orcarouter · (\w+) · tier (\w+)", proc.stdout)
    assert sorted(rows) == [("long", "1k"), ("short", "100")], proc.stdout
    # The simulated model fails 8% of its requests: either probe may, and once says so.
    m = re.search(r"(\d+) of 2 probes ok", proc.stdout)
    assert m, proc.stdout
    assert proc.returncode == (0 if m.group(1) == "2" else 2), proc.stdout


def test_real_router_without_its_key_is_a_clear_error(config_file: Path) -> None:
    proc = subprocess.run(
        ROUTEWATCH + ["once", "--config", str(config_file)],
        env=_env(ROUTEWATCH_ROUTER_URL="http://127.0.0.1:9/v1"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "routewatch: router 'orcarouter': environment variable ROUTEWATCH_API_KEY is not set "
        "(probes.yaml names it in api_key_env)"
    )


def test_run_refuses_a_plan_over_the_budget(config_file: Path, data_dir: Path) -> None:
    text = config_file.read_text(encoding="utf-8").replace(
        "api_key_env: ROUTEWATCH_API_KEY\n",
        "api_key_env: ROUTEWATCH_API_KEY\n    prices: {openai/gpt-4.1-nano: {input: 1.0, output: 1.0}}\n",
    )
    over = config_file.with_name("over-budget.yaml")
    # One priced model probed every second plans $12/day; a cent is far below.
    over.write_text(text + "budget: {usd_per_day: 0.01}\n", encoding="utf-8")
    line = len(over.read_text(encoding="utf-8").splitlines())
    proc = subprocess.run(
        ROUTEWATCH + ["run", "--config", str(over), "--data-dir", str(data_dir)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stdout
    assert f"{over}:{line}: budget.usd_per_day: the planned cost is $" in proc.stderr
    assert "over the budget of $0.01/day" in proc.stderr
    assert proc.stdout == "", "nothing was started"


def test_real_router_url_from_the_environment_is_probed(config_file: Path) -> None:
    """ROUTEWATCH_ROUTER_URL replaces the simulator; here a closed loopback port refuses."""
    proc = subprocess.run(
        ROUTEWATCH + ["once", "--config", str(config_file)],
        env=_env(
            ROUTEWATCH_ROUTER_URL="http://127.0.0.1:9/v1", ROUTEWATCH_API_KEY="sk-test-secret-123456", COLUMNS="200"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "simulator" not in proc.stdout
    assert proc.stdout.count("connect_error") == 4
    assert "sk-test-secret-123456" not in proc.stdout + proc.stderr


def test_unreachable_database_is_a_clear_error_without_the_password(config_file: Path, data_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        proc = subprocess.run(
            ROUTEWATCH + ["run", "--config", str(config_file), "--data-dir", str(data_dir)],
            env=_env(ROUTEWATCH_DATABASE_URL=f"postgresql://rw:hunter2secret@127.0.0.1:{port}/rw"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"routewatch: cannot reach the database, PostgreSQL at postgresql://rw:***@127.0.0.1:{port}/rw"
    ), proc.stderr
    assert "hunter2secret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- lifecycle: failures, restarts, start-up


def _sql(dsn: str, query: str, *args: object) -> object:
    """One value from ``query`` on a private event loop."""

    async def fetch() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(fetch())
    finally:
        loop.close()


def _embedded_dsn(data_dir: Path) -> str:
    """The URL of the embedded server routewatch runs on ``data_dir``."""
    port = int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[3])
    password = quote((data_dir / "pg-password").read_text().strip(), safe="")
    return f"postgresql://routewatch:{password}@127.0.0.1:{port}/routewatch"


@pytest.mark.timeout(120)
def test_a_task_that_dies_stops_run_loudly(config_file: Path, data_dir: Path, db_dsn: str) -> None:
    """The stats refresh dies on a corrupt rollup row: `run` logs it, stores its probes and exits 1."""
    loop = asyncio.new_event_loop()
    leader = loop.run_until_complete(asyncpg.connect(db_dsn))
    run = Run(["run", "--config", str(config_file), "--data-dir", str(data_dir)], _env(ROUTEWATCH_DATABASE_URL=db_dsn))
    try:
        # Another aggregator holds the refresher role, so this run is a standby,
        # which reads every rollup row of its windows at each refresh.
        assert loop.run_until_complete(leader.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY))
        run.wait_for(r"API:\s+http://")
        wait_until(lambda: bool(_sql(db_dsn, "SELECT count(*) FROM probe_results")), 30, "stored probes")
        _sql(
            db_dsn,
            """
            INSERT INTO probe_hist_hourly (bucket, router, model, provider, region, prompt, methodology,
                attempts, ok, rate_limited, overloaded, input_tokens, output_tokens, ttft, ttfat, tps)
            VALUES (date_trunc('hour', now()), 'orcarouter', 'openai/gpt-4.1-nano', 'p', 'test', 'short', 'm1',
                1, 1, 0, 0, 0, 0, $1, $1, $1)""",
            b"\x00",
        )
        code = run.proc.wait(timeout=40)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        loop.run_until_complete(leader.close())
        loop.close()
    out = run.output()
    assert code == 1, out
    assert re.search(
        r"ERROR routewatch: the aggregator refresh task failed: ValueError: histogram bytes truncated", out
    ), out
    assert "routewatch: stopped because the aggregator refresh task failed" in out
    stored = re.search(r"stored (\d+) probe results", out)
    assert stored and int(stored.group(1)) > 0, out
    password = urlsplit(db_dsn).password
    assert password and password not in out


@pytest.mark.timeout(120)
def test_killed_embedded_postgres_is_restarted_and_probes_are_stored_again(config_file: Path, data_dir: Path) -> None:
    run = Run(["run", "--config", str(config_file), "--data-dir", str(data_dir)], _env())
    try:
        run.wait_for(r"API:\s+http://")
        dsn = _embedded_dsn(data_dir)
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        wait_until(lambda: bool(_sql(dsn, "SELECT count(*) FROM probe_results")), 30, "stored probes")
        os.kill(pid, signal.SIGKILL)
        run.wait_for(r"ERROR routewatch: the embedded PostgreSQL was killed by signal 9 \(SIGKILL\)", 10)
        run.wait_for(r"restarting the embedded PostgreSQL in 1s \(try 1 of 5", 10)
        again = run.wait_for(
            r"the embedded PostgreSQL is running again \(pid (\d+), port (\d+)\) after it was killed"
            r" by signal 9",
            30,
        )
        new_pid = int(again.group(1))
        assert new_pid != pid and alive(new_pid)
        assert _embedded_dsn(data_dir) == dsn  # same port and password: clients' URLs still work
        since = _sql(dsn, "SELECT now()")
        wait_until(
            lambda: (
                int(
                    _sql(
                        dsn,
                        "SELECT count(*) FROM probe_results WHERE started_at > $1",  # type: ignore[arg-type]
                        since,
                    )
                )
                >= 4
            ),
            30,
            "probes stored after the restart",
        )
    finally:
        code, out = _interrupt(run)
    assert code == 0, out
    assert "Traceback" not in out
    wait_until(lambda: not alive(new_pid), 15, "the restarted PostgreSQL to stop with routewatch")


@pytest.mark.parametrize("how", ["--port", "ROUTEWATCH_API_PORT"])
def test_taken_api_port_is_reported_before_anything_starts(config_file: Path, data_dir: Path, how: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = ["run", "--config", str(config_file), "--data-dir", str(data_dir)]
        env = _env()
        if how == "--port":
            args += ["--port", str(port)]
        else:
            env[how] = str(port)
        proc = subprocess.run(ROUTEWATCH + args, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    message = proc.stderr.strip()
    assert message.startswith(f"routewatch: the API address 127.0.0.1:{port} is already in use by pid {os.getpid()} (")
    assert "--port N or ROUTEWATCH_API_PORT=N" in message
    # Refused before the database: no server was started, none is left behind.
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    assert not (data_dir / "pgdata" / "PG_VERSION").exists()


@pytest.mark.parametrize("port", ["80800", "eighty"])
def test_bad_api_port_in_the_environment_is_a_clear_error(config_file: Path, data_dir: Path, port: str) -> None:
    proc = subprocess.run(
        ROUTEWATCH + ["run", "--config", str(config_file), "--data-dir", str(data_dir)],
        env=_env(ROUTEWATCH_API_PORT=port),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"routewatch: ROUTEWATCH_API_PORT: {port!r} is not a port number (0-65535)"
    assert not (data_dir / "pgdata").exists()  # refused before anything started


@pytest.mark.timeout(120)
def test_runs_started_together_on_an_empty_data_dir(config_file: Path, data_dir: Path) -> None:
    """Two runs and a serve at once: one run works, the other is refused clearly, the serve shares the server."""
    args = ["--config", str(config_file), "--data-dir", str(data_dir)]
    procs = [Run(["run", *args], _env()), Run(["run", *args], _env()), Run(["serve", *args], _env())]
    refused: Run | None = None
    try:
        first, second, serve = procs
        ended: list[Run] = []
        running: list[Run] = []
        for run in (first, second):
            try:
                run.wait_for(r"API:\s+http://")
                running.append(run)
            except AssertionError:  # exited before its banner
                ended.append(run)
        serve.wait_for(r"API:\s+http://")
        assert len(running) == 1 and len(ended) == 1, [r.lines for r in procs]
        refused = ended[0]
        assert refused.proc.wait(timeout=10) == 1
        out = refused.output()
        assert re.search(
            rf"routewatch: another `routewatch run` \(pid {running[0].proc.pid}\) uses the data directory {data_dir};"
            r" give each run its own --data-dir",
            out,
        ), out
        assert "Traceback" not in out
        # One server on the data directory, which the serve and the run share.
        banners = "".join(running[0].lines) + "".join(serve.lines)
        assert banners.count("(run by another routewatch)") == 1, banners
    finally:
        for run in procs:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
        # Wait only: a second Ctrl-C while one is stopping ends it at once (exit 130).
        ends = [(run.proc.wait(timeout=60), run.output()) for run in procs if run is not refused]
    for code, out in ends:
        assert code == 0, out
        assert "Traceback" not in out


@pytest.mark.timeout(90)
def test_slow_clients_are_cut_off_and_the_api_keeps_answering(config_file: Path, data_dir: Path, db_dsn: str) -> None:
    """200 connections trickling a request head byte by byte are closed after HEAD_TIMEOUT_S."""
    run = Run(
        ["serve", "--config", str(config_file), "--data-dir", str(data_dir)], _env(ROUTEWATCH_DATABASE_URL=db_dsn)
    )
    socks: list[socket.socket] = []
    try:
        api = run.wait_for(r"API:\s+(http://\S+)").group(1)
        host, port = urlsplit(api).hostname, urlsplit(api).port
        started = time.monotonic()
        for _ in range(200):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        open_socks = {sock.fileno(): sock for sock in socks}
        closed_after: list[float] = []
        slowest_healthz = 0.0
        while open_socks and time.monotonic() - started < HEAD_TIMEOUT_S + 5:
            for sock in list(open_socks.values()):
                with contextlib.suppress(OSError):
                    sock.send(b"X")  # one more byte of a header line that never ends
            readable, _, _ = select.select(list(open_socks.values()), [], [], 0.5)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                assert data == b"", data  # closed, never answered
                closed_after.append(time.monotonic() - started)
                del open_socks[sock.fileno()]
            t0 = time.monotonic()
            assert _get(api + "/healthz")["status"] == "ok"
            slowest_healthz = max(slowest_healthz, time.monotonic() - t0)
        assert not open_socks, f"{len(open_socks)} slow connections still open after {HEAD_TIMEOUT_S + 5}s"
        assert min(closed_after) >= HEAD_TIMEOUT_S - 1, closed_after  # not cut before their time
        assert slowest_healthz < 1.0, slowest_healthz
    finally:
        for sock in socks:
            sock.close()
        code, out = _interrupt(run)
    assert code == 0, out
