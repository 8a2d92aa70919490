"""Primary failover with routewatch on top: probers in two regions and two ``serve`` on a two-host URL.

A synchronous streaming replica of a primary of the test's own; the probers
and both ``serve`` reach the database through one URL listing both servers
with ``target_session_attrs=read-write``. The primary is SIGKILLed, the
replica promoted after a pause, and nothing is restarted: the probers and the
leader must find the new primary by themselves, every probe the simulator
served (its ground truth) must be stored exactly once, and the gap in
publishing is measured and printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile.harness import ROUTEWATCH, Process, clean_env, fetch_rows, run_async, strict_json, wait_until
from rollup_diagnosis import rollup_diagnosis
from streaming_replica import make_replica, multi_host_dsn, promote

from routewatch.postgres.local_server import LocalPostgres
from routewatch.simulator.process import SimulatorProcess

pytestmark = pytest.mark.system

INTERVAL_S = 1.0
REFRESH_S = 1.0
MODELS = [f"fo/model-{i}" for i in range(3)]
REGIONS = ("eu", "us")
OUTAGE_S = 3.0  # between the SIGKILL and the promotion: the spools hold what is probed meanwhile
TOTAL_TIMEOUT_S = 4.0  # a probe's total timeout: requests older than this when probers stop have ended


def _profiles() -> list[dict[str, Any]]:
    common = {"provider": "P", "ttft_median_ms": 20, "ttft_sigma": 0.1, "tokens_per_s": 400, "output_tokens": 4}
    return [{"model": m, **common, "error_rate": 0.0} for m in MODELS]


def _config(region: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "routers": [{"name": "sim", "base_url": "simulator", "api_key_env": "ROUTEWATCH_API_KEY", "models": MODELS}],
        "prompts": [
            {"name": "p", "messages": [{"role": "user", "content": "count"}], "max_tokens": 8, "min_output_tokens": 1}
        ],
        "schedule": {"interval": f"{INTERVAL_S:g}s", "jitter": "0s", "concurrency": 16},
        "timeouts": {"connect": "2s", "headers": "2s", "first_token": "2s", "idle": "2s", "total": "4s"},
        "api": {"host": "127.0.0.1", "port": 0},
        "aggregator": {"refresh": f"{REFRESH_S:g}s"},
    }
    if region is not None:
        config["region"] = region
    return config


class Watcher:
    """Polls a ``serve``'s published figures in a thread: when each new refresh appeared."""

    def __init__(self, api: str) -> None:
        self._url = f"{api}/v1/models/{MODELS[0]}/stats?window=1h"
        self.seen: list[tuple[float, str]] = []  # (perf_counter, updated_at) at each change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with urllib.request.urlopen(self._url, timeout=2) as resp:
                    updated = str(strict_json(resp.read())["updated_at"])
            except OSError:
                continue
            if not self.seen or self.seen[-1][1] != updated:
                self.seen.append((time.perf_counter(), updated))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def longest_gap_s(self, after: float) -> float:
        """The longest time between two new refreshes, among those around or after ``after``."""
        times = [t for t, _ in self.seen]
        start = max((i for i, t in enumerate(times) if t <= after), default=0)
        return max((b - a for a, b in zip(times[start:], times[start + 1 :])), default=float("inf"))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[LocalPostgres, Path]]:
    base = Path("/tmp") / f"rw-failover-{os.getpid()}-{tmp_path.name}"
    primary = LocalPostgres(base / "primary")  # TimescaleDB preloaded where installed, as in production
    try:
        primary.start()
        yield primary, base
    finally:
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(240)
def test_probers_and_leader_ride_a_primary_failover_losing_nothing(
    servers: tuple[LocalPostgres, Path], tmp_path: Path
) -> None:
    primary, base = servers
    replica = run_async(lambda: make_replica(primary, base / "replica"))
    processes: list[Process] = []
    watchers: list[Watcher] = []
    sim = None
    try:
        dsn = multi_host_dsn([primary, replica])
        profiles = tmp_path / "profiles.yaml"
        profiles.write_text(yaml.safe_dump(_profiles()))
        sim = SimulatorProcess(profiles)
        sim.start()
        env = clean_env(ROUTEWATCH_DATABASE_URL=dsn)
        probers = []
        for region in REGIONS:
            config = tmp_path / f"probes-{region}.yaml"
            config.write_text(yaml.safe_dump(_config(region)))
            argv = [*ROUTEWATCH, "probe", "--config", str(config), "--data-dir", str(tmp_path / region)]
            probers.append(Process([*argv, "--simulator-url", sim.base_url], env, tmp_path / f"probe-{region}.log"))
        processes += probers
        serve_config = tmp_path / "serve.yaml"
        serve_config.write_text(yaml.safe_dump(_config(None)))
        serves = []
        for name in ("a", "b"):
            argv = [*ROUTEWATCH, "serve", "--config", str(serve_config), "--data-dir", str(tmp_path / name)]
            serves.append(Process(argv, env, tmp_path / f"serve-{name}.log"))
        processes += serves
        apis = [s.wait_for(r"API:\s+(http://\S+)").group(1) for s in serves]
        watchers = [Watcher(api) for api in apis]

        def stored() -> int:
            return int(fetch_rows(dsn, "SELECT count(*) AS n FROM probe_results")[0]["n"])

        wait_until(lambda: stored() >= 2 * len(MODELS) * len(REGIONS), 60, "probes stored before the failover")
        time.sleep(2 * REFRESH_S)

        os.kill(primary.pid or 0, signal.SIGKILL)
        killed = time.perf_counter()
        time.sleep(OUTAGE_S)
        run_async(lambda: promote(replica))
        promoted = time.perf_counter()
        # Probes keep arriving on the new primary, and the figures are published again.
        after_promotion = stored()
        wait_until(lambda: stored() > after_promotion + len(MODELS) * len(REGIONS), 30, "probes stored after promotion")
        wait_until(lambda: all(w.seen and w.seen[-1][0] > promoted for w in watchers), 30, "publishing after promotion")
        time.sleep(2 * INTERVAL_S)

        stop_at = time.perf_counter()
        for prober in probers:
            assert prober.stop() == 0, prober.output()[-3000:]
        with urllib.request.urlopen(f"{sim.root}/v1/ground-truth?since=0", timeout=60) as resp:
            served = strict_json(resp.read())
        rows = fetch_rows(dsn, "SELECT request_id FROM probe_results WHERE request_id IS NOT NULL")
        copies = Counter(r["request_id"] for r in rows)
        ended = {r["request_id"] for r in served if r["received_ns"] / 1e9 < stop_at - TOTAL_TIMEOUT_S}
        during = {r["request_id"] for r in served if killed <= r["received_ns"] / 1e9 < promoted}

        assert during, "no probe was taken while there was no primary"
        assert [rid for rid, n in copies.items() if n > 1] == [], "stored twice"
        assert sorted(ended - set(copies)) == [], "served by the router, never stored"
        assert sorted(during - set(copies)) == [], "taken without a primary, never stored"
        # The leader refreshes on the new primary: both serve every stored probe.
        total = stored()
        flagged = int(fetch_rows(dsn, "SELECT count(*) AS n FROM probe_results WHERE prober_overloaded")[0]["n"])
        expected = (total - flagged, flagged)
        wait_until(
            lambda: [_published(api) for api in apis] == [expected, expected],
            10 * REFRESH_S,
            lambda: (
                f"figures of every probe: {total} stored ({flagged} flagged for loop lag),"
                f" published (attempted, excluded) {[_published(api) for api in apis]}" + rollup_diagnosis(dsn)
            ),
        )
        gaps = [w.longest_gap_s(killed) for w in watchers]
        print(
            f"failover: {len(during)} probes taken without a primary ({OUTAGE_S:g} s before promotion),"
            f" {len(ended)} checked, 0 lost, 0 doubled ({flagged} flagged for loop lag); publishing gap {max(gaps):.1f} s"
            f" (refresh {REFRESH_S:g} s, outage {OUTAGE_S:g} s)"
        )
        # Publishing resumes within a few refreshes of the promotion.
        assert max(gaps) <= OUTAGE_S + 5 * REFRESH_S
        roles = []
        for api in apis:
            with urllib.request.urlopen(f"{api}/healthz", timeout=5) as resp:
                roles.append(json.loads(resp.read())["role"])
        assert sorted(roles) == ["leader", "standby"]
    finally:
        for watcher in watchers:
            watcher.stop()
        for process in processes:
            process.stop()
            assert "Traceback" not in process.output(), process.output()[-3000:]
        if sim is not None:
            sim.stop()
        replica.stop()


def _published(api: str) -> tuple[int, int]:
    """Probes a ``serve`` publishes over the last hour, every model summed: those in its figures
    (``attempted``), and those it leaves out because the prober's loop lag was over its bound
    when they were taken (``excluded_prober_overloaded``; more of them on a loaded machine)."""
    attempted = excluded = 0
    for model in MODELS:
        with urllib.request.urlopen(f"{api}/v1/models/{model}/stats?window=1h", timeout=5) as resp:
            samples = strict_json(resp.read())["samples"]
        attempted += int(samples["attempted"])
        excluded += int(samples["excluded_prober_overloaded"])
    return attempted, excluded
