"""``routewatch run --workers N``: the probes run in N ``routewatch probe`` children, supervised.

Real processes throughout: ``routewatch run`` on the test database with its
built-in simulator, its prober workers as the children it starts. What a user
checks: the banner, the workers' shares of the shard leases in the database,
``run``'s ``/metrics`` (each worker's samples with a ``worker`` label) and
each worker's own ``/metrics``, a killed worker restarted and logged, a
worker that keeps dying stopping ``run`` with exit code 1, and nothing left
running afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import LOOPBACK_API, config_text, probe_result, prompt_entry, router_entry
from hostile.harness import ROUTEWATCH, Process, alive, clean_env, fetch_rows, fetch_value, wait_until

from routewatch.cli import main
from routewatch.delivery.spool import Spool
from routewatch.runner import orphan_spools
from routewatch.storage.shard_leases import SHARDS

REGION = "workers"
MODELS = ["openai/gpt-4.1-nano", "anthropic/claude-haiku-4.5", "google/gemini-2.5-flash", "deepseek/deepseek-r1"]


def _config() -> str:
    return config_text(
        [router_entry(models=MODELS)],
        [prompt_entry(content="Count from 1 to 10.", max_tokens=16)],
        region=REGION,
        schedule={"interval": "1s", "jitter": "100ms", "concurrency": 8},
        timeouts={"connect": "2s", "headers": "5s", "first_token": "5s", "idle": "2s", "total": "10s"},
        api=LOOPBACK_API,
        aggregator={"refresh": "500ms"},
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp, world-traversable: as root the embedded server runs as another user.
    path = Path(tempfile.mkdtemp(prefix="routewatch-workers-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


class Run:
    """``routewatch run --workers N`` on the test database, its output in a file."""

    def __init__(self, work: Path, data_dir: Path, dsn: str, workers: int) -> None:
        config = work / "probes.yaml"
        config.write_text(_config())
        argv = [*ROUTEWATCH, "run", "--config", str(config), "--data-dir", str(data_dir), "--workers", str(workers)]
        self.process = Process(argv, clean_env(ROUTEWATCH_DATABASE_URL=dsn), work / "run.log")
        self.api = self.process.wait_for(r"API:\s+(http://\S+)", timeout=90).group(1)
        banner = self.process.wait_for(r"by (\d+) prober process(?:es)? \(pid ([\d, ]+);")
        assert int(banner.group(1)) == workers
        self.pids = [int(p) for p in banner.group(2).split(", ")]
        self.urls = {
            int(m.group(1)): m.group(2)
            for m in re.finditer(r"prober worker (\d+) is running \(pid \d+, metrics (\S+)\)", self.process.output())
        }

    def metric(self, line_prefix: str) -> float | None:
        """The value of the sample of run's /metrics whose line starts with ``line_prefix``."""
        for line in _get(self.api + "/metrics").splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


def _shares(dsn: str) -> dict[str, int]:
    rows = fetch_rows(
        dsn,
        "SELECT owner, count(*) AS n FROM shard_leases WHERE region = $1 AND owner IS NOT NULL"
        " AND expires_at > now() AND (handover_at IS NULL OR handover_at > now()) GROUP BY owner",
        REGION,
    )
    return {row["owner"]: int(row["n"]) for row in rows}


def _spool_results(directory: Path, n: int, model: str) -> set[str]:
    """``n`` results in a spool at ``directory``, as a run that stopped with the database down leaves them."""
    results = [probe_result(model=model, request_id=f"{model}-{i}") for i in range(n)]
    with Spool(directory) as spool:
        spool.append(results)
    return {str(r.id) for r in results}


@pytest.mark.system
@pytest.mark.timeout(180)
def test_two_workers_share_the_leases_report_through_run_and_store_every_spool(
    tmp_path: Path, data_dir: Path, db_dsn: str
) -> None:
    # Left by earlier runs: a run before workers (spool/), a run with three workers, and worker 1's own.
    spooled = _spool_results(data_dir / "spool", 5, "left/legacy")
    spooled |= _spool_results(data_dir / "spool-worker-3", 5, "left/worker-3")
    spooled |= _spool_results(data_dir / "spool-worker-1", 5, "left/worker-1")
    run = Run(tmp_path, data_dir, db_dsn, workers=2)
    try:
        # The workers are run's children, each with its own metrics address.
        assert all(_parent_of(pid) == run.process.pid for pid in run.pids)
        assert sorted(run.urls) == [1, 2]
        # They split the shards evenly between them (after the second one's claim).
        wait_until(lambda: sorted(_shares(db_dsn).values()) == [SHARDS // 2, SHARDS // 2], 30, "an even split")
        # One scrape of run answers for both (once each has heard at a heartbeat what it holds).
        wait_until(lambda: (run.metric('routewatch_results_stored_total{worker="2"}') or 0) > 0, 30, "worker 2 storing")
        held = ('routewatch_shards_held{worker="1"}', 'routewatch_shards_held{worker="2"}')
        wait_until(lambda: [run.metric(sample) for sample in held] == [64.0, 64.0], 10, "64 shards held by each")
        metrics = _get(run.api + "/metrics")
        assert "routewatch_prober_workers 2.0" in metrics
        for worker in ("1", "2"):
            assert f'routewatch_prober_worker_up{{worker="{worker}"}} 1.0' in metrics
            assert re.search(rf'routewatch_event_loop_lag_max_seconds{{worker="{worker}"}} \d', metrics)
            assert re.search(rf'process_cpu_seconds_total{{worker="{worker}"}} \d', metrics)
        # run's own process probes nothing: no prober sample without a worker label.
        assert not re.search(r"^routewatch_probes_total\{result=\"ok\"\}", metrics, re.MULTILINE)
        # Each worker's own /metrics (a scrape target of its own) has the same families, unlabelled.
        own = _get(run.urls[1])
        assert re.search(r'^routewatch_probes_total\{result="ok"\} \d', own, re.MULTILINE)
        assert "routewatch_shard_members 2.0" in own
        # Every spool was stored: worker 1's by worker 1, the others by run at start.
        wait_until(
            lambda: (
                {r["id"] for r in fetch_rows(db_dsn, "SELECT id::text FROM probe_results WHERE model LIKE 'left/%'")}
                == spooled
            ),
            30,
            "the spooled results",
        )
    finally:
        code = run.process.stop(signal.SIGTERM)
    out = run.process.output()
    assert code == 0, out[-3000:]
    assert "Traceback" not in out
    for orphan in ("spool", "spool-worker-3"):  # worker 1's spool is its own to store
        assert f"stored 5 probe results left in {data_dir / orphan} by an earlier run" in out, out[-3000:]
    stored = int(re.search(r"stored (\d+) probe results this run; bye", out).group(1))  # type: ignore[union-attr]
    assert stored == fetch_value(db_dsn, "SELECT count(*) FROM probe_results WHERE model NOT LIKE 'left/%'") + 5
    assert not any(alive(pid) for pid in run.pids)
    assert not fetch_rows(db_dsn, "SELECT member FROM shard_members WHERE region = $1", REGION)


@pytest.mark.system
@pytest.mark.timeout(180)
def test_a_killed_worker_is_restarted_and_logged(tmp_path: Path, data_dir: Path, db_dsn: str) -> None:
    run = Run(tmp_path, data_dir, db_dsn, workers=2)
    try:
        killed = run.pids[0]
        os.kill(killed, signal.SIGKILL)
        # Between its death and its restart, run's /metrics says it is down.
        wait_until(lambda: run.metric('routewatch_prober_worker_up{worker="1"}') == 0.0, 5, "worker 1 reported down")
        run.process.wait_for(rf"ERROR routewatch: prober worker 1 \(pid {killed}\) was killed by signal 9 \(SIGKILL\)")
        run.process.wait_for(r"restarting prober worker 1 in 1 s \(try 1 of 5 within 600 s\)")
        again = run.process.wait_for(
            r"prober worker 1 is running again \(pid (\d+)\) after it was killed by signal 9", timeout=30
        )
        new_pid = int(again.group(1))
        assert new_pid != killed and _parent_of(new_pid) == run.process.pid
        assert run.metric('routewatch_prober_worker_restarts_total{worker="1"}') == 1.0
        # The restarted worker takes its share again and stores probes.
        wait_until(lambda: sorted(_shares(db_dsn).values()) == [SHARDS // 2, SHARDS // 2], 40, "an even split again")
        wait_until(lambda: run.metric('routewatch_prober_worker_up{worker="1"}') == 1.0, 10, "worker 1 reported up")
    finally:
        code = run.process.stop(signal.SIGTERM)
    out = run.process.output()
    assert code == 0, out[-3000:]
    assert "Traceback" not in out


@pytest.mark.system
@pytest.mark.timeout(180)
def test_a_worker_that_keeps_dying_stops_run_loudly(tmp_path: Path, data_dir: Path, db_dsn: str) -> None:
    """Worker 1 killed, and its spool held by another process: every restart fails, run gives up (exit 1)."""
    run = Run(tmp_path, data_dir, db_dsn, workers=2)
    with open(data_dir / "spool-worker-1" / "lock", "a") as lock:
        killed = run.pids[0]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: not alive(killed), 10, "worker 1 to die")
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another process's writer would
        code = run.process.proc.wait(timeout=90)  # restarts after 1 + 2 + 4 + 8 + 16 s, then it gives up
        out = run.process.output()
    run.process.stop()
    assert code == 1, out[-3000:]
    failed = re.findall(r"ERROR routewatch: prober worker 1 \(pid \d+\) exited with code 1 while starting", out)
    assert len(failed) == 5, out[-3000:]
    assert "is in use by another routewatch process" in out  # the worker's own line, saying why
    assert re.search(
        r"routewatch: stopped because the prober workers task failed: WorkersGaveUp: prober worker 1 could not be"
        r" kept running: 5 restarts within 600 s; last: prober worker 1 \(pid \d+\) exited with code 1 while",
        out,
    ), out[-3000:]
    assert "Traceback" not in out
    assert not any(alive(pid) for pid in run.pids)


@pytest.mark.unit
@pytest.mark.parametrize("value", ["0", "-1", "129", "two"])
def test_workers_must_be_a_count_of_processes(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--workers", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --workers: {value!r}: give a number of prober processes from 1 to {SHARDS}" in err


@pytest.mark.unit
def test_orphan_spools_are_those_no_worker_opens(tmp_path: Path) -> None:
    for name in ("spool", "spool-worker-1", "spool-worker-2", "spool-worker-3", "spool-worker-10", "spool-probe"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "00000001.spool").write_bytes(b"")
    (tmp_path / "spool-worker-4").mkdir()  # no segment: nothing to store
    assert orphan_spools(tmp_path, 2) == [tmp_path / "spool", tmp_path / "spool-worker-10", tmp_path / "spool-worker-3"]
    assert orphan_spools(tmp_path, 10) == [tmp_path / "spool"]


@contextlib.contextmanager
def _port_taken() -> Iterator[int]:
    """A port that a listening loopback socket holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.system
def test_a_probers_metrics_port_taken_is_a_clear_error(tmp_path: Path, db_dsn: str) -> None:
    config = tmp_path / "probes.yaml"
    config.write_text(_config())
    with _port_taken() as port:
        argv = [*ROUTEWATCH, "probe", "--config", str(config), "--data-dir", str(tmp_path / "data")]
        argv += ["--simulator-url", "http://127.0.0.1:9/v1", "--metrics-port", str(port)]
        proc = Process(argv, clean_env(ROUTEWATCH_DATABASE_URL=db_dsn), tmp_path / "probe.log")
        code = proc.proc.wait(timeout=60)
        out = proc.output()
        proc.stop()
    assert code == 1, out
    assert f"routewatch: the metrics address 127.0.0.1:{port} cannot be used: Address already in use" in out
    assert "Traceback" not in out
