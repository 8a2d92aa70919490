"""Several ``routewatch probe`` processes sharing the series through shard leases: real processes, the
test database and the simulator in its own process, whose log of served requests is the ground truth.

Every series has a fixed slot in each interval; whichever process holds its
shard at a slot probes it. The simulator records when each request arrived
(``time.perf_counter_ns``, the same monotonic clock this process reads), so
gaps between one series' requests show a doubled probe (a gap near zero) or
a skipped one (a gap of two intervals or more) whichever process sent it.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile.harness import ROUTEWATCH, Process, clean_env, fetch_rows, strict_json

from routewatch.simulator.process import SimulatorProcess
from routewatch.storage.shard_leases import HEARTBEAT_S, LEASE_TTL_S, SHARDS, TAKEOVER_S

pytestmark = pytest.mark.system

INTERVAL_S = 2.0
MODELS = 50
PROMPTS = 3  # 150 series
REGION = "shards"
TOLERANCE_S = 0.5  # a probe's own lateness; a doubled probe makes a gap near 0, a skipped one near 2 intervals
# After SIGKILL: the dead member's shards are claimed within TAKEOVER_S; each series then waits
# for its next slot. The slots it missed are whole intervals.
GAP_BOUND_S = INTERVAL_S + math.ceil(TAKEOVER_S / INTERVAL_S) * INTERVAL_S


@dataclass(frozen=True)
class Served:
    series: tuple[str, str]  # (model, prompt text)
    at_s: float  # perf_counter seconds


@dataclass
class Member:
    process: Process
    member: str
    pid: int


class Cluster:
    """The simulator, and ``routewatch probe`` processes on the test database."""

    def __init__(self, dsn: str, work: Path) -> None:
        self.dsn = dsn
        self.work = work
        profiles = work / "profiles.yaml"
        profiles.write_text(yaml.safe_dump(_profiles(), sort_keys=False))
        self.sim = SimulatorProcess(profiles)
        self.sim.start()
        self.config = work / "probes.yaml"
        self.config.write_text(yaml.safe_dump(_config(), sort_keys=False))
        self.members: list[Member] = []

    def start(self, n: int) -> list[Member]:
        """``n`` more probe processes, started together; returned once each has joined."""
        started = []
        for _ in range(n):
            i = len(self.members) + len(started)
            argv = [
                *ROUTEWATCH,
                "probe",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.work / f"p{i}"),
                "--simulator-url",
                self.sim.base_url,
            ]
            proc = Process(argv, clean_env(ROUTEWATCH_DATABASE_URL=self.dsn), self.work / f"p{i}.log")
            started.append(proc)
        members = []
        for proc in started:
            m = proc.wait_for(r"member ([0-9a-f]{32}) \(pid (\d+)\)", timeout=60)
            members.append(Member(proc, m.group(1), int(m.group(2))))
        self.members += members
        return members

    def live(self) -> list[Member]:
        return [m for m in self.members if m.process.proc.poll() is None]

    def shares(self) -> dict[str, set[int]]:
        """Live leases by member, as the database has them now."""
        rows = fetch_rows(
            self.dsn,
            "SELECT owner, shard FROM shard_leases WHERE region = $1 AND owner IS NOT NULL AND expires_at > now()",
            REGION,
        )
        out: dict[str, set[int]] = defaultdict(set)
        for row in rows:
            out[row["owner"]].add(row["shard"])
        return dict(out)

    def wait_even(self, timeout: float = 40.0) -> dict[str, set[int]]:
        """Wait until the live members hold every shard, each its fair share (within one)."""
        expected = {m.member for m in self.live()}
        deadline = time.monotonic() + timeout
        while True:
            shares = self.shares()
            counts = sorted(len(s) for s in shares.values())
            if set(shares) == expected and sum(counts) == SHARDS and counts[-1] - counts[0] <= 1:
                offered = fetch_rows(
                    self.dsn,
                    "SELECT count(*) AS n FROM shard_leases WHERE region = $1 AND handover_at IS NOT NULL",
                    REGION,
                )
                if offered[0]["n"] == 0:  # and no hand-over still pending
                    return shares
            if time.monotonic() > deadline:
                raise AssertionError(f"shares did not even out among {len(expected)} members: {shares}")
            time.sleep(0.1)

    def truth_seq(self) -> int:
        """The simulator's latest request number so far."""
        records = self.truth(0)
        return max((r["seq"] for r in records), default=0)

    def truth(self, since: int) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.sim.root}/v1/ground-truth?since={since}", timeout=60) as resp:
            records: list[dict[str, Any]] = strict_json(resp.read())
        return records

    def served(self, since: int) -> dict[tuple[str, str], list[float]]:
        """Arrival times of every request since request ``since``, by series, in order."""
        by_series: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in self.truth(since):
            prompt = r["nonce_prompt"].split("] ", 1)[-1]
            by_series[(r["model"], prompt)].append(r["received_ns"] / 1e9)
        for times in by_series.values():
            times.sort()
        return dict(by_series)

    def close(self) -> list[int]:
        for m in self.live():  # all at once: each hands its shards over for a lead, in parallel
            m.process.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            with contextlib.suppress(subprocess.TimeoutExpired):  # then stop() kills it
                m.process.proc.wait(timeout=60)
        codes = [m.process.stop(signal.SIGKILL) for m in self.members]
        self.sim.stop()
        return codes


def _profiles() -> list[dict[str, Any]]:
    return [
        {
            "model": f"shard/model-{i:02d}",
            "provider": "P",
            "ttft_median_ms": 30,
            "ttft_sigma": 0.1,
            "tokens_per_s": 400,
            "output_tokens": 4,
            "error_rate": 0.0,
        }
        for i in range(MODELS)
    ]


def _config() -> dict[str, Any]:
    # The router is the simulator another process runs (--simulator-url): no key needed for it.
    router = {
        "name": "sim",
        "base_url": "simulator",
        "api_key_env": "ROUTEWATCH_API_KEY",
        "models": [f"shard/model-{i:02d}" for i in range(MODELS)],
    }
    return {
        "region": REGION,
        "routers": [router],
        "prompts": [
            {
                "name": f"p{p}",
                "messages": [{"role": "user", "content": f"prompt {p}"}],
                "max_tokens": 8,
                "min_output_tokens": 1,
            }
            for p in range(PROMPTS)
        ],
        "schedule": {"interval": f"{INTERVAL_S:g}s", "jitter": "0s", "concurrency": 64},
        "timeouts": {"connect": "2s", "headers": "2s", "first_token": "2s", "idle": "2s", "total": "4s"},
    }


def all_series() -> set[tuple[str, str]]:
    return {(f"shard/model-{i:02d}", f"prompt {p}") for i in range(MODELS) for p in range(PROMPTS)}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


@pytest.fixture
def cluster(db_dsn: str) -> Iterator[Cluster]:
    work = Path(tempfile.mkdtemp(prefix="routewatch-shards-"))
    made = Cluster(db_dsn, work)
    try:
        yield made
    finally:
        codes = made.close()
        logs = {m.process.log_path.name: m.process.output() for m in made.members}
        shutil.rmtree(work, ignore_errors=True)
    for code, (name, text) in zip(codes, logs.items()):
        # Killed on purpose, or stopped cleanly: never a traceback.
        assert code in (0, -signal.SIGKILL), f"{name} exited with {code}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"


def test_three_probers_probe_every_series_once_per_interval_and_hand_over_on_a_clean_stop(
    cluster: Cluster,
) -> None:
    cluster.start(3)
    cluster.wait_even()
    time.sleep(INTERVAL_S)  # hand-over points of the start-up lie a lead ahead
    mark = cluster.truth_seq()
    time.sleep(4 * INTERVAL_S)
    steady = cluster.served(mark)
    assert set(steady) == all_series()
    for series, times in steady.items():
        # over 4 intervals: 4 probes (3 or 5 where the window cuts a slot at its edges), one an interval
        assert 3 <= len(times) <= 5, (series, times)
        assert all(abs(g - INTERVAL_S) <= TOLERANCE_S for g in gaps(times)), (series, gaps(times))

    # A clean stop hands the shards over at one point: no series misses its slot.
    leaving = cluster.members[0]
    mark = cluster.truth_seq()
    before_stop = time.perf_counter()
    assert leaving.process.stop(signal.SIGTERM, timeout=30) == 0
    stop_took = time.perf_counter() - before_stop
    cluster.wait_even()
    time.sleep(2 * INTERVAL_S)
    after = cluster.served(mark)
    assert set(after) == all_series()
    worst = max(g for times in after.values() for g in gaps(times))
    least = min(g for times in after.values() for g in gaps(times))
    print(f"\nclean stop: took {stop_took:.1f} s; gaps across the hand-over {least:.3f}–{worst:.3f} s")
    assert least >= INTERVAL_S - TOLERANCE_S and worst <= INTERVAL_S + TOLERANCE_S
    assert len(cluster.shares()) == 2


def test_a_killed_prober_is_taken_over_within_the_stated_bound(cluster: Cluster) -> None:
    cluster.start(3)
    cluster.wait_even()
    time.sleep(INTERVAL_S)
    mark = cluster.truth_seq()
    time.sleep(2 * INTERVAL_S)
    victim = cluster.members[1]
    held = cluster.shares()[victim.member]
    victim.process.proc.kill()
    killed_at = time.perf_counter()
    # Takeover: until the survivors hold every shard the dead member held.
    while True:
        shares = cluster.shares()
        if victim.member not in shares and set().union(*shares.values()) >= held:
            takeover = time.perf_counter() - killed_at
            break
        assert time.perf_counter() - killed_at < TAKEOVER_S + 5, shares
        time.sleep(0.05)
    time.sleep(max(0.0, killed_at + TAKEOVER_S + 2 * INTERVAL_S - time.perf_counter()))
    served = cluster.served(mark)
    assert set(served) == all_series()
    worst: tuple[float, tuple[str, str]] = (0.0, ("", ""))
    resumed: list[float] = []
    for series, times in served.items():
        g = gaps(times)
        assert min(g) >= INTERVAL_S - TOLERANCE_S, (series, g)  # never two probes in one interval
        worst = max(worst, (max(g), series))
        after = [t for t in times if t > killed_at]
        assert after, series
        if after[0] - killed_at > INTERVAL_S + TOLERANCE_S:  # one of the dead member's series
            resumed.append(after[0] - killed_at)
    print(
        f"\nSIGKILL: takeover {takeover:.2f} s (bound {TAKEOVER_S:g} s: lease {LEASE_TTL_S:g} s +"
        f" heartbeat {HEARTBEAT_S:g} s); largest gap {worst[0]:.2f} s (bound {GAP_BOUND_S:g} s);"
        f" {len(resumed)} series resumed at most {max(resumed, default=0):.2f} s after the kill"
    )
    assert takeover <= TAKEOVER_S + TOLERANCE_S
    assert worst[0] <= GAP_BOUND_S + TOLERANCE_S, worst
    assert resumed  # the dead member's series did stop, and came back
    assert max(resumed) <= TAKEOVER_S + INTERVAL_S + TOLERANCE_S


def test_a_fourth_prober_evens_the_shares_out_moving_only_its_share_and_doubling_nothing(
    cluster: Cluster,
) -> None:
    cluster.start(3)
    before = cluster.wait_even()
    time.sleep(INTERVAL_S)
    mark = cluster.truth_seq()
    newcomer = cluster.start(1)[0]
    after = cluster.wait_even()
    time.sleep(2 * INTERVAL_S)
    assert sorted(len(s) for s in after.values()) == [SHARDS // 4] * 4
    for member, shards in before.items():
        assert after[member] <= shards  # an old member only gave shards away
    assert len(after[newcomer.member]) == SHARDS // 4  # and only the newcomer's share moved
    served = cluster.served(mark)
    assert set(served) == all_series()
    # Every series kept its slot through the rebalance: a quarter of them are the newcomer's
    # now (the old members no longer hold their shards), none was probed twice or skipped.
    for series, times in served.items():
        assert all(abs(g - INTERVAL_S) <= TOLERANCE_S for g in gaps(times)), (series, gaps(times))


# ---------------------------------------------------------------- refusals, before anything starts


CONFIG_WITH_SIMULATOR = """
region: r
routers:
  - name: sim
    base_url: simulator
    api_key_env: ROUTEWATCH_API_KEY
    models: [m/a]
prompts:
  - {name: p, messages: [{role: user, content: hi}]}
"""


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--simulator-url", "http://127.0.0.1:9/v1"],
            {},
            "routewatch probe needs a database: set ROUTEWATCH_DATABASE_URL, or start `routewatch run`",
        ),
        (
            ["--simulator-url", "ftp://127.0.0.1:9/v1"],
            {},
            "--simulator-url must be an http(s) URL, like http://127.0.0.1:8400/v1, not 'ftp://127.0.0.1:9/v1'",
        ),
        (
            [],
            {"ROUTEWATCH_DATABASE_URL": "postgresql://u:SECRETPW@127.0.0.1:9/db"},
            "router 'sim' uses the simulator, which is not running",
        ),
    ],
)
def test_probe_refuses_what_it_cannot_run_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    config = tmp_path / "probes.yaml"
    config.write_text(CONFIG_WITH_SIMULATOR)
    argv = [*ROUTEWATCH, "probe", "--config", str(config), "--data-dir", str(tmp_path / "data"), *args]
    done = subprocess.run(argv, env=clean_env(**env), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done
    assert done.stderr.startswith(f"routewatch: {message}") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "SECRETPW" not in done.stderr + done.stdout
