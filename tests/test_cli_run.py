"""``routewatch run`` and ``routewatch once`` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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
api: {host: 127.0.0.1, port: 0}
aggregator: {refresh: 500ms}
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
    env.update(extra)
    return env


class Run:
    """A ``routewatch run`` child process and the lines it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(ROUTEWATCH + args, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=REPO)
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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


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
        # Wait until every model has probes in its 7-day stats.
        deadline = time.monotonic() + 30
        while True:
            models = _get(api + "/v1/models")["models"]
            if all(m["stats"]["samples"]["attempted"] >= 2 for m in models) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(models) == 4
        assert all(m["stats"]["samples"]["attempted"] >= 2 for m in models), models
        stats = _get(api + "/v1/models/openai/gpt-4.1-nano/stats?window=7d")
        assert stats["model"] == "openai/gpt-4.1-nano" and stats["ttft_p50_ms"] > 0
        # The banner's other addresses answer: the status page and the prober's metrics.
        status_url = run.wait_for(r"status:\s+(http://\S+)").group(1)
        with urllib.request.urlopen(status_url, timeout=10) as resp:
            assert "openai/gpt-4.1-nano" in resp.read().decode()
        with urllib.request.urlopen(api + "/metrics", timeout=10) as resp:
            assert 'routewatch_probes_total{result="ok"}' in resp.read().decode()
    finally:
        run.proc.send_signal(signal.SIGINT)
        code = run.proc.wait(timeout=60)
    out = run.output()
    assert code == 0, out
    assert "Traceback" not in out
    assert re.search(r"stored \d+ probe results", out)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the embedded PostgreSQL outlived routewatch"


@pytest.mark.timeout(180)
def test_embedded_postgres_dies_with_a_killed_routewatch(config_file: Path, data_dir: Path) -> None:
    run = Run(["run", "--config", str(config_file), "--data-dir", str(data_dir)], _env())
    try:
        run.wait_for(r"API:\s+http://")
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert _alive(pid)
    finally:
        run.proc.kill()
        run.proc.wait(timeout=30)
        run.output()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the embedded PostgreSQL outlived a SIGKILLed routewatch"


def test_once_prints_a_table_of_every_model(config_file: Path) -> None:
    proc = subprocess.run(ROUTEWATCH + ["once", "--config", str(config_file)], env=_env(COLUMNS="200"),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr
    for model in ("openai/gpt-4.1-nano", "anthropic/claude-haiku-4.5", "google/gemini-2.5-flash",
                  "deepseek/deepseek-r1"):
        assert model in proc.stdout
    m = re.search(r"(\d+) of (\d+) probes ok", proc.stdout)
    assert m and int(m.group(2)) == 4, proc.stdout
    assert proc.returncode == (0 if m.group(1) == m.group(2) else 2)  # 2: some probe failed


def test_real_router_without_its_key_is_a_clear_error(config_file: Path) -> None:
    proc = subprocess.run(ROUTEWATCH + ["once", "--config", str(config_file)],
                          env=_env(ROUTEWATCH_ROUTER_URL="http://127.0.0.1:9/v1"),
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "routewatch: router 'orcarouter': environment variable ROUTEWATCH_API_KEY is not set "
        "(probes.yaml names it in api_key_env)"
    )


def test_real_router_url_from_the_environment_is_probed(config_file: Path) -> None:
    """ROUTEWATCH_ROUTER_URL replaces the simulator; here a closed loopback port refuses."""
    proc = subprocess.run(ROUTEWATCH + ["once", "--config", str(config_file)],
                          env=_env(ROUTEWATCH_ROUTER_URL="http://127.0.0.1:9/v1", ROUTEWATCH_API_KEY="sk-test-secret-123456",
                                   COLUMNS="200"),
                          capture_output=True, text=True, timeout=60, cwd=REPO)
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
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"routewatch: cannot reach the database, PostgreSQL at postgresql://rw:***@127.0.0.1:{port}/rw"
    ), proc.stderr
    assert "hunter2secret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
