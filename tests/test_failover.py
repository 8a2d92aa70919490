"""Two aggregator processes on one database: one refreshes, the other takes
over within one refresh interval when the first is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from factories import LOOPBACK_API, config_text, probe_result, router_entry

from routewatch.results.probe_result import ProbeResult
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.system

REFRESH_S = 2.0
CONFIG = config_text(
    [router_entry("sim", models=["ha/model"])], api=LOOPBACK_API, aggregator={"refresh": f"{REFRESH_S}s"}
)


def _result(ttft_ms: float) -> ProbeResult:
    return probe_result(
        started_at=datetime.now(UTC) - timedelta(seconds=5),
        router="sim",
        model="ha/model",
        ttft_ms=ttft_ms,
        output_tokens=10,
    )


def _failure() -> ProbeResult:
    return probe_result(
        started_at=datetime.now(UTC) - timedelta(seconds=1),
        router="sim",
        model="ha/model",
        error_class="http_5xx",
        error_detail="injected",
    )


async def _store(dsn: str, results: list[ProbeResult]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await write_batch(conn, results)
    finally:
        await conn.close()


async def _prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_schema(conn)
    finally:
        await conn.close()


class Serve:
    """A ``routewatch serve`` process and its API URL."""

    def __init__(self, dsn: str, workdir: Path, name: str) -> None:
        cfg = workdir / "probes.yaml"
        cfg.write_text(CONFIG)
        self.log = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env["ROUTEWATCH_DATABASE_URL"] = dsn
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "routewatch.cli", "serve", "--config", str(cfg), "--data-dir", str(workdir / name)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not (m := re.search(r"API:\s+(http://\S+)", self.log.read_text())):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        self.url = m.group(1)

    def get(self, path: str) -> dict:  # type: ignore[type-arg]
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def role(self) -> str:
        return str(self.get("/healthz")["role"])

    def attempted(self) -> int:
        return int(self.get("/v1/models/ha/model/stats?window=1h")["samples"]["attempted"])

    def state(self) -> str:
        status = self.get("/v1/status")
        return str(next(m["state"] for m in status["models"] if m["id"] == "ha/model"))

    def open_incidents(self) -> list[dict]:  # type: ignore[type-arg]
        return list(self.get("/v1/status")["incidents"]["open"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self._out.close()


def _wait_for(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(180)
def test_standby_takes_over_within_one_refresh_interval(db_dsn: str, tmp_path: Path) -> None:
    asyncio.run(_prepare(db_dsn))
    asyncio.run(_store(db_dsn, [_result(100.0 + i) for i in range(10)]))
    first = Serve(db_dsn, tmp_path, "a")
    second = Serve(db_dsn, tmp_path, "b")
    try:
        roles = {first.role(), second.role()}
        assert roles == {"leader", "standby"}, roles
        leader, standby = (first, second) if first.role() == "leader" else (second, first)
        # Both serve the leader's numbers: the standby reads the rollups it writes.
        assert _wait_for(lambda: leader.attempted() == 10 and standby.attempted() == 10, 3 * REFRESH_S)
        # And the leader's status evaluation, which the standby reads from the tables.
        assert _wait_for(lambda: leader.state() == standby.state() == "operational", 3 * REFRESH_S)

        leader.proc.kill()
        killed = time.monotonic()
        assert _wait_for(lambda: standby.role() == "leader", 3 * REFRESH_S), "no takeover"
        failover_s = time.monotonic() - killed
        print(f"failover took {failover_s:.2f} s (refresh interval {REFRESH_S} s)")
        # Within one refresh interval, plus the refresh that takes the lock.
        assert failover_s <= REFRESH_S + 0.5

        # The new leader refreshes: new probes show up in its stats.
        asyncio.run(_store(db_dsn, [_result(200.0) for _ in range(5)]))
        assert _wait_for(lambda: standby.attempted() == 15, 3 * REFRESH_S)

        # ... and it evaluates the status, carrying on from the tables: down_after (3)
        # failures make the model down and open an incident.
        assert standby.state() == "operational"
        asyncio.run(_store(db_dsn, [_failure() for _ in range(3)]))
        assert _wait_for(lambda: standby.state() == "down", 3 * REFRESH_S), standby.get("/v1/status")
        assert [i["models"] for i in standby.open_incidents()] == [["ha/model"]]
    finally:
        first.close()
        second.close()
