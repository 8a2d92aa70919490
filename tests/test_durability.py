"""Nothing measured is lost: database outages and a SIGKILLed ``routewatch run`` (and its prober workers).

Real processes throughout: a PostgreSQL this module starts and stops, the
router simulator in its own process (its ground truth says what was served)
and ``routewatch run`` as a user runs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from factories import LOOPBACK_API, config_text, prompt_entry, router_entry
from ground_truth import served, simulator_process
from hostile.harness import free_port

from routewatch.postgres.local_server import LocalPostgres
from routewatch.simulator.process import SimulatorProcess
from routewatch.storage.shard_leases import LEASE_TTL_S

pytestmark = pytest.mark.system

OUTAGE_S = 30.0  # the issue asks for an outage of 30 s or more

PROFILES = """
- model: dur/fast
  provider: Fast
  ttft_median_ms: 30
  tokens_per_s: 200
  output_tokens: 16
- model: dur/flaky
  provider: Flaky
  ttft_median_ms: 50
  tokens_per_s: 200
  output_tokens: 16
  error_rate: 0.2
  faults: {http_500: 1, http_429: 1}
"""


def config(base_url: str) -> str:
    return config_text(
        [router_entry("sim", base_url, ["dur/fast", "dur/flaky"])],
        [prompt_entry(max_tokens=32, min_output_tokens=8)],
        region="test",
        schedule={"interval": "300ms", "jitter": "100ms", "concurrency": 8},
        timeouts={"connect": "1s", "headers": "2s", "first_token": "2s", "idle": "1s", "total": "3s"},
        api=LOOPBACK_API,
        aggregator={"refresh": "1s"},
    )


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Under /tmp and world-traversable: as root the server runs as another user.
    path = Path(tempfile.mkdtemp(prefix="routewatch-dur-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def database(workdir: Path) -> Iterator[LocalPostgres]:
    bin_dir = os.environ.get("ROUTEWATCH_TEST_PG_BIN")
    pg = LocalPostgres(workdir / "db", bin_dir=Path(bin_dir) if bin_dir else None, port=free_port())
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
def simulator(workdir: Path) -> Iterator[SimulatorProcess]:
    with simulator_process(workdir, PROFILES) as sim:
        yield sim


class Routewatch:
    """``routewatch run`` against ``dsn``, its output collected in a file."""

    def __init__(self, workdir: Path, dsn: str, base_url: str, name: str) -> None:
        cfg = workdir / "probes.yaml"
        cfg.write_text(config(base_url))
        self.log = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env["ROUTEWATCH_DATABASE_URL"] = dsn
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "routewatch.cli", "run", "--config", str(cfg), "--data-dir", str(workdir / "data")],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while "API:" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._out.close()
        return code

    def output(self) -> str:
        return self.log.read_text()


async def stored(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["request_id"] for r in await conn.fetch("SELECT request_id FROM probe_results")]
    finally:
        await conn.close()


def stored_ids(dsn: str) -> list[str]:
    """Stored request ids; waits up to 30 s for a server that is (re)starting."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return asyncio.run(stored(dsn))
        except (OSError, asyncpg.CannotConnectNowError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.timeout(240)
def test_database_outage_loses_nothing_and_duplicates_nothing(
    workdir: Path, database: LocalPostgres, simulator: SimulatorProcess
) -> None:
    """The prober workers share the series through leases in the database, so they stop probing
    once they cannot renew them (docs/scale-out.md); what they measured until then is stored once
    the database is back, and probing resumes."""
    rw = Routewatch(workdir, database.dsn, simulator.base_url, "run")
    try:
        time.sleep(3)
        outage_ns = time.perf_counter_ns()  # CLOCK_MONOTONIC, as the simulator's marks
        database.stop()
        time.sleep(OUTAGE_S)
        # The outage ends when the restart begins: the server takes connections before start()
        # returns, and a worker that renews its leases then rightly probes again.
        back_ns = time.perf_counter_ns()
        database.start()
        time.sleep(10)  # the workers claim their shards afresh at their next heartbeat
    finally:
        code = rw.stop(signal.SIGTERM)  # SIGTERM: finish probes in flight, store everything
    out = rw.output()
    assert code == 0, out
    assert "database unavailable" in out  # the outage was noticed, loudly
    assert "cannot renew the shard leases" in out
    truth = served(simulator)
    ids = stored_ids(database.dsn)
    during = [r for r in truth if outage_ns < r["received_ns"] < back_ns]
    # Probed in the outage's first seconds (in the spool until the database came back), then nothing:
    # a worker stops at the latest when the lease it last renewed runs out.
    assert during, "no probe in the outage's first seconds"
    assert max(r["received_ns"] for r in during) < outage_ns + (LEASE_TTL_S + 1) * 1e9
    assert sum(r["received_ns"] > back_ns for r in truth) >= 10, "probing did not resume after the outage"
    assert len(ids) == len(set(ids)), "a probe was stored twice"
    assert set(ids) == {r["request_id"] for r in truth}


@pytest.mark.timeout(240)
def test_sigkill_during_an_outage_keeps_the_spooled_results(
    workdir: Path, database: LocalPostgres, simulator: SimulatorProcess
) -> None:
    first = Routewatch(workdir, database.dsn, simulator.base_url, "first")
    time.sleep(2)
    outage_ns = time.perf_counter_ns()
    database.stop()
    time.sleep(5)
    kill_ns = time.perf_counter_ns()  # CLOCK_MONOTONIC, as the simulator's marks
    first.stop(signal.SIGKILL)
    before_kill = served(simulator)
    assert before_kill, "nothing was probed before the kill"
    database.start()

    second = Routewatch(workdir, database.dsn, simulator.base_url, "second")
    try:
        # Replay of the first run's spool happens at start; give it a moment.
        deadline = time.monotonic() + 30
        want = {r["request_id"] for r in before_kill if r["received_ns"] < kill_ns - 3.5e9}
        # Probes measured while the database was down exist only in the spool.
        assert sum(outage_ns < r["received_ns"] < kill_ns - 3.5e9 for r in before_kill) >= 5
        while not want <= set(stored_ids(database.dsn)) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.output()
    ids = stored_ids(database.dsn)
    all_served = {r["request_id"] for r in served(simulator)}
    assert len(ids) == len(set(ids)), "a probe was stored twice"
    assert set(ids) <= all_served
    # Every probe that had finished well before the kill (total timeout 3 s)
    # was in the spool and reached the database; only those in flight may be lost.
    missing = want - set(ids)
    assert not missing, f"{len(missing)} of {len(want)} spooled results never arrived"
    lost = {r["request_id"] for r in before_kill} - set(ids)
    assert len(lost) <= 8, f"{len(lost)} lost: more than the probes that can be in flight"
