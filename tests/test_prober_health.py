"""``routewatch probe``'s ``/healthz`` and ``/readyz``: a real prober process, the test database reached
through a relay the test cuts, the simulator in its own process, and SIGSTOP for a stuck event loop.
The prober's region comes from ``ROUTEWATCH_REGION``, over the file's, as in the deploy files."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from hostile.harness import ROUTEWATCH, Process, clean_env, fetch_rows
from tcp_relay import TcpRelay

from routewatch.simulator.process import SimulatorProcess
from routewatch.storage.shard_leases import LEASE_TTL_S, SHARDS, TAKEOVER_S

pytestmark = pytest.mark.system

REGION = "health-test"
MODEL = "health/model"


def _config(**extra: Any) -> dict[str, Any]:
    return {
        "region": REGION,
        "routers": [{"name": "sim", "base_url": "simulator", "models": [MODEL]}],
        "prompts": [{"name": "p", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}],
        "schedule": {"interval": "2s", "jitter": "100ms"},
        **extra,
    }


def _get(url: str, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            assert resp.headers["Cache-Control"] == "no-store"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(url: str, status: int, within_s: float) -> tuple[float, dict[str, Any]]:
    """Poll ``url`` until it answers ``status``; the seconds it took and the body."""
    start = time.monotonic()
    while True:
        code, body = _get(url)
        if code == status:
            return time.monotonic() - start, body
        if time.monotonic() - start > within_s:
            raise AssertionError(f"{url} still answers {code} after {within_s:g} s: {body}")
        time.sleep(0.2)


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rw-prober-health-") as d:
        yield Path(d)


@pytest.fixture
def simulator(work: Path) -> Iterator[SimulatorProcess]:
    profiles = work / "profiles.yaml"
    profile = {"provider": "P", "ttft_median_ms": 20, "ttft_sigma": 0.1, "tokens_per_s": 400, "output_tokens": 4}
    profiles.write_text(yaml.safe_dump([{"model": MODEL, **profile, "error_rate": 0.0}]))
    sim = SimulatorProcess(profiles)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def _wait_rows(dsn: str, sql: str) -> list[Any]:
    deadline = time.monotonic() + 20
    while not (rows := fetch_rows(dsn, sql)):
        assert time.monotonic() < deadline, f"no rows for {sql}"
        time.sleep(0.3)
    return rows


def _start(work: Path, config: dict[str, Any], env: dict[str, str], sim: SimulatorProcess) -> tuple[Process, str]:
    path = work / "probes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [*ROUTEWATCH, "probe", "--config", str(path), "--data-dir", str(work / "data")]
    proc = Process([*argv, "--simulator-url", sim.base_url], env, work / "probe.log")
    metrics = proc.wait_for(r"metrics:\s+(http://\S+)/metrics", timeout=60).group(1)
    return proc, metrics


def _stop(proc: Process) -> None:
    if proc.proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def test_ready_while_it_holds_its_leases_not_ready_when_they_lapse_live_throughout(
    db_dsn: str, work: Path, simulator: SimulatorProcess
) -> None:
    url = urlsplit(db_dsn)
    relay = TcpRelay(url.hostname or "127.0.0.1", url.port or 5432)
    relayed = urlunsplit(url._replace(netloc=url.netloc.replace(f":{url.port}", f":{relay.port}")))
    # One probes.yaml for every region, the region from the environment (as the deploy files do).
    env = clean_env(ROUTEWATCH_DATABASE_URL=relayed, ROUTEWATCH_REGION=REGION)
    proc, root = _start(work, _config(region="from-the-file"), env, simulator)
    try:
        code, live = _get(f"{root}/healthz")
        assert code == 200
        assert live["status"] == "ok" and live["role"] == "prober" and live["region"] == REGION
        assert live["pid"] == proc.pid
        _, ready = _until(f"{root}/readyz", 200, 10)
        assert ready["status"] == "ready" and ready["reason"] is None
        assert ready["shards_held"] == SHARDS and ready["lease_left_s"] > 0
        assert ready["results_to"] == "database" and ready["destination_ok"] is True
        stored = _wait_rows(db_dsn, "SELECT DISTINCT region FROM probe_results")
        leases = fetch_rows(db_dsn, "SELECT DISTINCT region FROM shard_leases")
        assert [r["region"] for r in stored] == [r["region"] for r in leases] == [REGION]

        relay.cut()  # the database is unreachable: writes fail, heartbeats fail, the leases run out
        cut_at = time.monotonic()
        _, first = _until(f"{root}/readyz", 503, TAKEOVER_S + 5)
        assert first["reason"], first  # a failed write or the lapsed leases, whichever is noticed first
        while "shard leases have lapsed" not in (lapsed := _get(f"{root}/readyz")[1])["reason"]:
            assert lapsed["status"] == "not_ready", lapsed  # not ready all along until then
            assert time.monotonic() - cut_at < LEASE_TTL_S + 3, f"leases not lapsed; they last {LEASE_TTL_S:g} s"
            time.sleep(0.2)
        assert lapsed["lease_left_s"] == 0
        assert str(relay.port) not in json.dumps(lapsed) and (url.password or "\0") not in json.dumps(lapsed)
        code, live = _get(f"{root}/healthz")
        assert code == 200, "a database away is no reason to restart the prober"

        relay.restore()
        _, back = _until(f"{root}/readyz", 200, 30)
        assert back["shards_held"] == SHARDS and back["destination_ok"] is True

        # A stuck event loop: /healthz must not answer (it is answered on that loop).
        os.kill(proc.pid, signal.SIGSTOP)
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            _get(f"{root}/healthz", timeout=2.0)
        os.kill(proc.pid, signal.SIGCONT)
        assert _get(f"{root}/healthz")[0] == 200
    finally:
        _stop(proc)
        relay.close()
    assert proc.exit_code == 0, proc.output()[-3000:]


def test_a_pushing_prober_is_not_ready_while_its_central_server_is_unreachable(
    work: Path, simulator: SimulatorProcess
) -> None:
    # Nothing listens on this port: every push fails, results wait in the spool.
    closed = TcpRelay("127.0.0.1", 9)
    closed.cut()
    ingest = {"url": f"http://127.0.0.1:{closed.port}/v1/ingest", "token_env": "HEALTH_TEST_TOKEN"}
    env = clean_env(HEALTH_TEST_TOKEN="t" * 32)
    proc, root = _start(work, _config(ingest=ingest), env, simulator)
    try:
        assert _get(f"{root}/healthz")[0] == 200
        _, body = _until(f"{root}/readyz", 503, 30)
        assert body["results_to"] == f"ingest endpoint {ingest['url']}"
        assert body["destination_ok"] is False and "wait in the spool" in body["reason"]
        assert body["shards_held"] is None and body["lease_left_s"] is None  # no leases when pushing
        assert "t" * 16 not in json.dumps(body)
    finally:
        _stop(proc)
