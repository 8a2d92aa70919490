"""The compose stack (deploy/compose.yaml) as real processes on this machine, where no container engine runs.

One PostgreSQL with TimescaleDB; ``routewatch db migrate`` as the one-shot
migration; the router simulator in its own process; a ``routewatch probe``
per region with ``deploy/config/probes.yaml`` and its ``ROUTEWATCH_REGION`` (intervals shortened),
writing to the database as the stack's probers do; two ``routewatch serve``
replicas reading the eu-west file, as in the stack. Then what an operator
checks: the API's per-region figures against the probes the simulator
served to each region (its ground truth), ``routewatch db status`` naming
the leader and the prober members, a SIGKILL of the leading ``serve`` moving
leadership to the other within one refresh, the survivor publishing new
probes, the killed one restarted (the stack's ``restart: unless-stopped``)
and both replicas answering the same figures.

The simulator cannot see which region sent a request, so each region's
prompt ends with its region's name: its log of served requests then counts
each region's probes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from db_status_text import status_lines
from hostile.harness import REPO, ROUTEWATCH, Process, clean_env, fetch_rows, fetch_value, strict_json, wait_until
from rollup_diagnosis import rollup_diagnosis

from routewatch.postgres.local_server import LocalPostgres, LocalPostgresError
from routewatch.simulator.process import SimulatorProcess
from routewatch.storage.shard_leases import HEARTBEAT_S, SHARDS

pytestmark = pytest.mark.system

REGIONS = ("eu-west", "us-east")
INTERVAL_S = 1.0  # production: 30 s; shortened so the test takes about a minute
REFRESH_S = 1.0
# The documented bound: a standby takes the refresher lock at its next refresh after the leader's
# session ends, so within one refresh interval, plus that refresh's own time on a loaded machine.
TAKEOVER_BOUND_S = REFRESH_S + 1.0
# Fields that say when a replica refreshed, not what it counted: the replicas differ there.
WHEN_FIELDS = {"updated_at", "window_start", "window_end"}


def region_config(region: str) -> dict[str, Any]:
    """The stack's configuration (one file; each prober is told its region by ROUTEWATCH_REGION)
    with the test's intervals, its prompt marked with ``region``."""
    config: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "config" / "probes.yaml").read_text())
    assert "region" not in config, "the stack's file names no region"
    config["schedule"] = {"interval": f"{INTERVAL_S:g}s", "jitter": "0s", "concurrency": 16}
    config["timeouts"] = {"connect": "2s", "headers": "2s", "first_token": "2s", "idle": "2s", "total": "4s"}
    config["api"] = {"host": "127.0.0.1", "port": 0}
    config["aggregator"] = {"refresh": f"{REFRESH_S:g}s"}
    for prompt in config["prompts"]:
        prompt["messages"][-1]["content"] += f" [{region}]"
    return config


def models_of(config: dict[str, Any]) -> list[str]:
    return [model for router in config["routers"] for model in router["models"]]


def profiles(models: list[str]) -> list[dict[str, Any]]:
    """Fast, reliable models: every probe ends within a few tens of milliseconds."""
    common = {"provider": "P", "ttft_median_ms": 20, "ttft_sigma": 0.1, "tokens_per_s": 2000, "output_tokens": 40}
    return [{"model": m, **common, "error_rate": 0.0} for m in models]


@pytest.fixture
def timescaledb_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database with TimescaleDB: on the suite's server in its TimescaleDB mode, else on a server of
    the test's own with the extension preloaded; skipped only where the extension is not installed."""
    if request.getfixturevalue("db_mode") == "timescaledb":
        yield request.getfixturevalue("db_dsn")
        return
    base = Path(tempfile.mkdtemp(prefix="rw-topology-", dir="/tmp"))
    base.chmod(0o711)  # as root the server runs as another user, which must reach its data directory
    try:
        try:
            env_bin = os.environ.get("ROUTEWATCH_TEST_PG_BIN")  # the suite's binaries, as its own server's
            server = LocalPostgres(base / "data", bin_dir=Path(env_bin) if env_bin else None, timescaledb=True)
        except LocalPostgresError as exc:
            pytest.skip(
                f"TimescaleDB is not installed in this PostgreSQL ({exc}); build it with"
                " ../shared/timescaledb/build.sh (README, TimescaleDB mode)"
            )
        server.start()
        try:
            yield server.dsn
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Serve:
    """A ``routewatch serve`` replica: its process and its API."""

    name: str
    process: Process
    api: str = ""

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.api + path, timeout=5) as resp:
            return strict_json(resp.read())

    def role(self) -> str:
        return str(self.get("/healthz")["role"])

    def probes(self, models: list[str]) -> int:
        """Probes published over the last hour, every model summed (see :func:`probes_of`)."""
        return sum(probes_of(self.get(f"/v1/models/{quote(m)}/stats?window=1h")) for m in models)

    def by_region(self, models: list[str]) -> dict[tuple[str, str], int]:
        """Probes published over the last hour per (model, region): the API's by=region breakdown."""
        out = {}
        for m in models:
            cells = self.get(f"/v1/models/{quote(m)}/stats?window=1h&by=region")["breakdown"]["region"]
            out.update({(m, region): probes_of(cell) for region, cell in cells.items()})
        return out

    def figures(self, models: list[str]) -> dict[str, Any]:
        """Every figure a user reads (the catalog, each model's regions), without the refresh times."""
        bodies = {"/v1/models": self.get("/v1/models")}
        for m in models:
            path = f"/v1/models/{quote(m)}/stats?window=1h&by=region"
            bodies[path] = self.get(path)
        return without_times(bodies)


def probes_of(stats: dict[str, Any]) -> int:
    """Every probe a stats object counts: those in the figures, and those left out of them because the
    prober's own event loop lagged (``prober_overloaded``, which a loaded test machine produces)."""
    samples = stats["samples"]
    return int(samples["attempted"]) + int(samples["excluded_prober_overloaded"])


def without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in WHEN_FIELDS}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


class Stack:
    """The processes of the compose stack, their logs under one directory."""

    def __init__(self, dsn: str, work: Path) -> None:
        self.dsn = dsn
        self.work = work
        self.env = clean_env(ROUTEWATCH_DATABASE_URL=dsn)
        self.configs = {}
        for region in REGIONS:
            path = work / f"probes-{region}.yaml"
            path.write_text(yaml.safe_dump(region_config(region), sort_keys=False))
            self.configs[region] = path
        self.models = models_of(region_config(REGIONS[0]))
        profiles_file = work / "profiles.yaml"
        profiles_file.write_text(yaml.safe_dump(profiles(self.models)))
        self.sim = SimulatorProcess(profiles_file)
        self.processes: list[Process] = []

    def cli(self, *args: str) -> str:
        """A one-shot ``routewatch`` command (``db migrate``, ``db status``): its output; exit 0 asserted."""
        done = subprocess.run(
            [*ROUTEWATCH, *args, "--data-dir", str(self.work / "db")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done
        return done.stdout

    def prober(self, region: str) -> Process:
        argv = [*ROUTEWATCH, "probe", "--config", str(self.configs[region]), "--data-dir", str(self.work / region)]
        env = {**self.env, "ROUTEWATCH_REGION": region}  # as compose.yaml sets it
        return self._start([*argv, "--simulator-url", self.sim.base_url], f"probe-{region}", env)

    def serve(self, name: str) -> Serve:
        """A replica as the stack runs it: the eu-west file, a data directory of its own."""
        argv = [*ROUTEWATCH, "serve", "--config", str(self.configs["eu-west"]), "--data-dir", str(self.work / name)]
        return Serve(name, self._start(argv, name))

    def _start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Process:
        n = sum(p.log_path.stem.startswith(name) for p in self.processes)
        process = Process(argv, env or self.env, self.work / f"{name}{'-' + str(n) if n else ''}.log")
        self.processes.append(process)
        return process

    def stored(self) -> dict[tuple[str, str], int]:
        """Probes stored per (model, region)."""
        rows = fetch_rows(self.dsn, "SELECT model, region, count(*) AS n FROM probe_results GROUP BY 1, 2")
        return {(r["model"], r["region"]): r["n"] for r in rows}

    def served(self) -> Counter[tuple[str, str]]:
        """Requests the simulator served, per (model, region): the ground truth."""
        with urllib.request.urlopen(f"{self.sim.root}/v1/ground-truth?since=0", timeout=60) as resp:
            records = strict_json(resp.read())
        out: Counter[tuple[str, str]] = Counter()
        for r in records:
            region = re.search(r"\[([a-z-]+)\]$", r["nonce_prompt"])
            assert region and region.group(1) in REGIONS, r["nonce_prompt"]
            out[(r["model"], region.group(1))] += 1
        return out


def assert_describes(
    status: str, leader: Serve, others: list[Serve], members: dict[str, tuple[str, int]], gone: int | None = None
) -> None:
    """``db status`` names ``leader`` as the lock's holder, every process as connected, each region's member."""
    lines = status_lines(status)
    assert lines["stats leader"][0].startswith(f"routewatch serve {leader.process.pid}@"), status
    connected = " ".join(lines["connected"])
    for serve in [leader, *others]:
        assert f"routewatch serve {serve.process.pid}@" in connected, status
    for region, (member, pid) in members.items():
        assert lines[f"probers {region}"] == [f"1 live member, {SHARDS} of {SHARDS} shards held"], status
        assert f"routewatch probe {pid}@" in connected, status
        line = lines[f"member {member[:8]}"][0]
        assert line.startswith(f"pid {pid} on "), status
        assert f", {SHARDS} shards, renewed " in line, status
        renewed = float(re.search(r"renewed ([\d.]+) s ago", line).group(1))  # type: ignore[union-attr]
        assert renewed <= 2 * HEARTBEAT_S + 1, status
    if gone is not None:
        assert f" {gone}@" not in status, f"the killed serve (pid {gone}) is still listed:\n{status}"


@pytest.mark.timeout(300)
def test_the_compose_topology_as_processes(timescaledb_dsn: str) -> None:
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rw-topology-"))
    stack = Stack(timescaledb_dsn, work)
    try:
        migrated = stack.cli("db", "migrate")
        assert "storage mode: timescaledb (TimescaleDB " in migrated, migrated
        stack.sim.start()
        probers = {region: stack.prober(region) for region in REGIONS}
        serves = [stack.serve("serve-1"), stack.serve("serve-2")]
        members = {}
        for region, prober in probers.items():
            m = prober.wait_for(r"member ([0-9a-f]{32}) \(pid (\d+)\)")
            members[region] = (m.group(1), int(m.group(2)))
        for serve in serves:
            serve.api = serve.process.wait_for(r"API:\s+(http://\S+)").group(1)
        models = stack.models

        def published_regions() -> bool:
            return all(serve.by_region(models).get((models[-1], r), 0) > 0 for serve in serves for r in REGIONS)

        wait_until(published_regions, 60, "both replicas publishing probes of both regions")
        roles = {serve.name: serve.role() for serve in serves}
        assert sorted(roles.values()) == ["leader", "standby"], roles
        leader, standby = sorted(serves, key=lambda s: roles[s.name] != "leader")
        status_before = stack.cli("db", "status")
        assert_describes(status_before, leader, [standby], members)

        # SIGKILL the leader: its session ends, PostgreSQL drops the lock, the standby takes it.
        leader.process.proc.kill()
        killed = time.perf_counter()
        killed_utc = datetime.now(UTC)
        wait_until(lambda: standby.role() == "leader", 10 * TAKEOVER_BOUND_S, "the standby to take the lead")
        takeover_s = time.perf_counter() - killed
        before = standby.probes(models)
        wait_until(lambda: standby.probes(models) > before + len(models), 10 * REFRESH_S, "the new leader publishing")
        gone = leader.process.pid
        wait_until(
            lambda: (
                not fetch_value(
                    timescaledb_dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                    f"routewatch serve {gone}@%",
                )
            ),
            5,
            "the killed serve's sessions to end",
        )
        status_after = stack.cli("db", "status")
        assert_describes(status_after, standby, [], members, gone=gone)

        # The stack restarts a killed container: the new replica stands by.
        restarted = stack.serve("serve-1")
        restarted.api = restarted.process.wait_for(r"API:\s+(http://\S+)").group(1)
        serves = [standby, restarted]
        assert [s.role() for s in serves] == ["leader", "standby"]

        for prober in probers.values():
            assert prober.stop() == 0, prober.output()[-3000:]
        truth = stack.served()
        assert set(truth) == {(m, r) for m in models for r in REGIONS}, truth
        wait_until(
            lambda: all(serve.by_region(models) == dict(truth) for serve in serves),
            10 * REFRESH_S,
            lambda: (
                f"per-region figures of every probe served: {dict(truth)}, published"
                f" {[serve.by_region(models) for serve in serves]}, stored {stack.stored()}; leader killed at"
                f" {killed_utc.isoformat()}" + rollup_diagnosis(timescaledb_dsn)
            ),
        )
        wait_until(
            lambda: serves[0].figures(models) == serves[1].figures(models),
            10 * REFRESH_S,
            lambda: (
                "the same figures on both replicas:\n"
                + "\n".join(json.dumps(s.figures(models), sort_keys=True) for s in serves)
            ),
        )
        wall_s = time.perf_counter() - began
        per_region = {r: sum(n for (_, region), n in truth.items() if region == r) for r in REGIONS}
        flagged = fetch_value(timescaledb_dsn, "SELECT count(*) FROM probe_results WHERE prober_overloaded")
        print(
            f"\ntopology: {per_region} probes per region ({flagged} flagged prober_overloaded, left out of the"
            " figures and counted apart), published alike by both replicas;"
            f" leadership moved {takeover_s:.2f} s after the SIGKILL (bound {TAKEOVER_BOUND_S:g} s,"
            f" refresh {REFRESH_S:g} s); wall time {wall_s:.1f} s"
            f"\ndb status before the SIGKILL:\n{status_before}\ndb status after it:\n{status_after}"
        )
        assert takeover_s <= TAKEOVER_BOUND_S
    finally:
        for process in stack.processes:
            process.stop()
        stack.sim.stop()
        logs = {p.log_path.name: p.output() for p in stack.processes}
        shutil.rmtree(work, ignore_errors=True)
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
