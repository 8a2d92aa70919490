"""Notifications survive a SIGKILL of ``routewatch serve`` in the middle of a delivery.

A real ``serve`` evaluates real probes into a real incident; its webhook
request is held by the receiver while the process is killed. The next
process to lead sends it again, with the same idempotency key and body, and
the incident's resolve after it: every transition is acknowledged exactly
once per key, and the one request repeated is the one whose answer the
killed process never read.
"""

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
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from factories import LOOPBACK_API, config_text, probe_result, router_entry
from notify_support import Receiver, ReceiverThread

from routewatch.notify import signing
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.system

SECRET = "kill-test-signing-secret-0123456789"
MODEL = "kill/model"
CONFIG = config_text(
    [router_entry("sim", models=[MODEL])],
    api=LOOPBACK_API,
    aggregator={"refresh": "1s"},
    notifications={
        "targets": [{"name": "hook", "kind": "webhook", "url_env": "HOOK_URL", "secret_env": "HOOK_SECRET"}],
        "timeout": "60s",
        "backoff_initial": "1s",
        "backoff_max": "2s",
    },
)


def _probe(at: datetime, ok: bool = True) -> ProbeResult:
    if ok:
        return probe_result(started_at=at, router="sim", model=MODEL, ttft_ms=100.0, output_tokens=10)
    return probe_result(started_at=at, router="sim", model=MODEL, error_class="http_5xx", error_detail="injected")


async def _db(dsn: str, results: list[ProbeResult] | None = None, sql: str | None = None) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        if results is None and sql is None:
            await ensure_schema(conn)
        if results:
            await write_batch(conn, results)
        return await conn.fetch(sql) if sql else []
    finally:
        await conn.close()


class Serve:
    """A ``routewatch serve`` posting to ``hook_url``."""

    def __init__(self, dsn: str, workdir: Path, name: str, hook_url: str) -> None:
        cfg = workdir / "probes.yaml"
        cfg.write_text(CONFIG)
        self.log = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env.update(ROUTEWATCH_DATABASE_URL=dsn, HOOK_URL=hook_url, HOOK_SECRET=SECRET)
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "routewatch.cli", "serve", "--config", str(cfg), "--data-dir", str(workdir / name)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        assert _wait_for(lambda: re.search(r"API:\s+(http://\S+)", self.log.read_text()), 60), self.log.read_text()
        m = re.search(r"API:\s+(http://\S+)", self.log.read_text())
        assert m is not None
        self.url = m.group(1)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return bytes(resp.read())

    def state(self) -> str:
        status = json.loads(self.get("/v1/status"))
        return str(next((m["state"] for m in status["models"] if m["id"] == MODEL), "none"))

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
def test_sigkill_mid_delivery_loses_nothing_and_acknowledges_each_key_once(db_dsn: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    asyncio.run(_db(db_dsn))
    asyncio.run(_db(db_dsn, [_probe(now - timedelta(seconds=60 - i)) for i in range(10)]))
    receiver = Receiver(scripts={"/hook": ["hold", "ok"]})
    hook = ReceiverThread(receiver)
    first = second = None
    try:
        first = Serve(db_dsn, tmp_path, "a", f"{hook.url}/hook")
        assert _wait_for(lambda: first.state() == "operational", 10), first.log.read_text()
        # down_after (3) failures: down, an incident opens, its notification is queued and posted.
        asyncio.run(_db(db_dsn, [_probe(datetime.now(UTC) - timedelta(seconds=1), ok=False) for _ in range(3)]))
        assert _wait_for(lambda: len(receiver.seen) == 1, 20), first.log.read_text()
        first.proc.kill()  # with the request in flight: its answer is never read
        first.proc.wait(10)
        hook.release()  # the receiver finishes its work after the sender is gone

        second = Serve(db_dsn, tmp_path, "b", f"{hook.url}/hook")
        assert _wait_for(lambda: len(receiver.acked()) == 1, 20), second.log.read_text()
        # Recovery: up_after (2) successes and the error rate back under the SLO close the incident.
        later = datetime.now(UTC) - timedelta(seconds=1)
        asyncio.run(_db(db_dsn, [_probe(later + timedelta(milliseconds=i)) for i in range(100)]))
        assert _wait_for(lambda: len(receiver.acked()) == 2, 20), second.log.read_text()
        # /metrics reads the outbox at each refresh: the resolve shows as sent at the next one.
        sent = 'routewatch_notifications{state="sent"} 2'
        assert _wait_for(lambda: sent in second.get("/metrics").decode(), 5)
        logs = first.log.read_text() + second.log.read_text()
    finally:
        for serve in (first, second):
            if serve is not None:
                serve.close()
        hook.stop()

    acked = receiver.acked()
    assert [r.json()["type"] for r in acked] == ["incident.opened", "incident.resolved"]
    assert set(Counter(r.key for r in acked).values()) == {1}
    # The request the killed process sent was received (late), and repeated with the same key and body.
    opened = [r for r in receiver.seen if r.key == acked[0].key]
    assert [(r.late, r.acked) for r in opened] == [(True, False), (False, True)]
    assert opened[0].body == opened[1].body
    assert len(receiver.seen) == 3
    for r in receiver.seen:
        h = r.headers
        assert signing.verify(SECRET, h["X-Routewatch-Timestamp"], r.body, h["X-Routewatch-Signature"], time.time())

    rows = asyncio.run(_db(db_dsn, sql="SELECT * FROM notification_outbox ORDER BY id"))
    assert [(r["transition"], r["state"]) for r in rows] == [("open", "sent"), ("close", "sent")]
    assert [str(r["id"]) for r in rows] == [r.key for r in acked]
    assert SECRET not in logs and SECRET not in json.dumps([dict(r) for r in rows], default=str)


@pytest.mark.timeout(60)
def test_a_target_whose_variable_is_unset_stops_serve_at_start_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "probes.yaml"
    cfg.write_text(CONFIG)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_") and k not in ("HOOK_URL", "HOOK_SECRET")
    }
    env.update(ROUTEWATCH_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", HOOK_SECRET=SECRET)
    done = subprocess.run(
        [sys.executable, "-m", "routewatch.cli", "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == "routewatch: notification target 'hook': environment variable HOOK_URL is not set\n"
    assert SECRET not in done.stdout + done.stderr
