"""200 concurrent probes against the simulator in its own process.

Each measured TTFT and tok/s is compared with what the simulator says it
sent. Both processes read the same monotonic clock (CLOCK_MONOTONIC), so
the simulator's send time of the first token and the probe's send time of
the request are directly comparable.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from routewatch.probe import chat_stream
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Canary, Target

N_PROBES = 200
PROFILES_YAML = """
- model: acc/steady
  provider: Steady
  ttft_median_ms: 300
  ttft_sigma: 0.3
  tokens_per_s: 60
  output_tokens: 48
"""


class Timeouts:
    connect = 5.0
    headers = 10.0
    first_token = 10.0
    idle = 5.0
    total = 20.0


@pytest.fixture(scope="module")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    profiles = tmp_path_factory.mktemp("sim") / "profiles.yaml"
    profiles.write_text(PROFILES_YAML)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "routewatch.cli", "simulate", "--port", str(port), "--profiles", str(profiles)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
    yield base + "/v1"
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def ground_truth(base_url: str) -> dict[str, dict]:  # type: ignore[type-arg]
    with urllib.request.urlopen(base_url + "/ground-truth", timeout=10) as resp:
        records = json.loads(resp.read())
    return {r["request_id"]: r for r in records}


async def test_200_concurrent_probes_match_the_injected_truth(simulator_url: str) -> None:
    canary = Canary("short", [{"role": "user", "content": "Count from 1 to 40 in words."}], 64, 16)
    target = Target("sim", simulator_url, "acc/steady")

    async with new_session(N_PROBES) as session:
        # Started within one second, as a scheduler with jitter would.
        async def staggered(i: int) -> tuple[int, chat_stream.ProbeResult]:
            await asyncio.sleep(i / N_PROBES)
            t = time.perf_counter_ns()  # the probe's own t0 follows within microseconds
            r = await chat_stream.run(session, target, canary, Timeouts(), region="test")
            return t, r

        runs = await asyncio.gather(*(staggered(i) for i in range(N_PROBES)))

    truth = await asyncio.to_thread(ground_truth, simulator_url)
    ttft_err, tps_err = [], []
    for t_before, r in runs:
        assert r.ok, r.error_detail
        sent = truth[r.request_id]
        true_ttft_ms = (sent["token_times_ns"][0] - t_before) / 1e6
        ttft_err.append(abs(r.ttft_ms - true_ttft_ms))
        times = sent["token_times_ns"]
        true_tps = (len(times) - 1) / ((times[-1] - times[0]) / 1e9)
        tps_err.append(abs(r.output_tps - true_tps) / true_tps)
        assert r.output_tokens == sent["output_tokens"] and r.chunks == len(times)
    ttft_err.sort()
    tps_err.sort()
    print(f"TTFT |error| ms: p50 {statistics.median(ttft_err):.3f} p99 {ttft_err[int(0.99 * len(ttft_err))]:.3f} "
          f"max {ttft_err[-1]:.3f}; tok/s |error|: p50 {statistics.median(tps_err):.4%} max {tps_err[-1]:.4%}")
    # The probe stamps a token when its bytes are read; the gap to the
    # simulator's send is loopback transit plus the prober's queueing.
    assert statistics.median(ttft_err) < 2.0, ttft_err[-10:]
    assert ttft_err[int(0.99 * len(ttft_err))] < 20.0, ttft_err[-10:]
    assert statistics.median(tps_err) < 0.01
    assert tps_err[-1] < 0.05, tps_err[-10:]
