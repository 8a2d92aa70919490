"""``POST /v1/config/reload`` applies the new probes.yaml live, on real parts.

A real AsyncIOScheduler runs a real Prober against the router simulator; the
config is a real file, rewritten between reloads. The simulator's ground
truth says which models were probed when; the sink (a list, or the batch
writer into PostgreSQL) says which results arrived. The last test reloads a
real ``routewatch run`` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from factories import LOOPBACK_API, LOOPBACK_TIMEOUTS, config_text, prompt_entry, router_entry
from pydantic import SecretStr

from routewatch.admin import LocalAdmin
from routewatch.aggregator.publish.api import ConfigRejected, create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import Config, load_config
from routewatch.config.settings import ENV_ADMIN_TOKEN
from routewatch.probe.scheduler import Prober, ProbeSchedule, new_session
from routewatch.probe.targets import plan
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter

KEEP, GONE, NEW = "test/keep", "test/gone", "test/new"
PROFILES = (
    ModelProfile(model=KEEP, provider="KeepCo", ttft_median_ms=10, ttft_sigma=0.0, tokens_per_s=1000, output_tokens=4),
    # Slow enough that a reload reliably finds one of its probes in flight.
    ModelProfile(model=GONE, provider="GoneCo", ttft_median_ms=500, ttft_sigma=0.0, tokens_per_s=1000, output_tokens=4),
    ModelProfile(model=NEW, provider="NewCo", ttft_median_ms=10, ttft_sigma=0.0, tokens_per_s=1000, output_tokens=4),
)
WINDOWS = {"1h": 3600.0, "7d": 7 * 86400.0}
TOKEN = "reload-token-" + uuid.uuid4().hex


def sim_config(
    base_url: str,
    models: list[str],
    interval: str,
    jitter: str,
    *,
    total: str = "5s",
    port: int = 8321,
    max_tokens: int | str = 16,
) -> str:
    return config_text(
        [router_entry("sim", base_url, models)],
        [prompt_entry(content="Count from 1 to 10.", max_tokens=max_tokens, min_output_tokens=4)],
        region="test",
        schedule={"interval": interval, "jitter": jitter, "concurrency": 8},
        timeouts=LOOPBACK_TIMEOUTS | {"total": total},
        api={"host": "127.0.0.1", "port": port},
    )


def key(model: str) -> str:
    return f"sim|{model}|short"


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(PROFILES, seed=11)
    yield sim
    await sim.close()


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def served(sim: RunningSimulator, model: str) -> list:  # type: ignore[type-arg]
    return [r for r in sim.ground_truth.records if r.model == model]


def jobs(scheduler: AsyncIOScheduler) -> dict[str, float]:
    """Job id -> interval in seconds."""
    return {job.id: job.trigger.interval.total_seconds() for job in scheduler.get_jobs()}


class Probing:
    """A started schedule over the config in ``path``, results collected in ``results``."""

    def __init__(self, config: Config, path: Path, prober: Prober) -> None:
        series, _ = plan(config, {})
        self.scheduler = AsyncIOScheduler()
        self.schedule = ProbeSchedule(self.scheduler, prober, series, config.schedule.interval, config.schedule.jitter)
        self.scheduler.start()
        self.admin = LocalAdmin(config, path, series, schedule=self.schedule)


@pytest.mark.system
async def test_reload_swaps_the_scheduled_series_and_interval(simulator: RunningSimulator, tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(sim_config(simulator.base_url, [KEEP, GONE], "5s", "100ms"))
    config = load_config(path)
    results: list[ProbeResult] = []

    async def sink(result: ProbeResult) -> None:
        results.append(result)

    async with new_session(8) as session:
        prober = Prober(session, config.timeouts, "test", 8, sink=sink)
        run = Probing(config, path, prober)
        try:
            assert jobs(run.scheduler) == {key(KEEP): 5.0, key(GONE): 5.0}
            # Reload while a probe of the model about to be removed is on the wire.
            await wait_until(lambda: any(not r.finished for r in served(simulator, GONE)), 3, "a probe of GONE")
            await wait_until(lambda: len(served(simulator, KEEP)) == 1, 3, "the first probe of KEEP")
            in_flight = next(r for r in served(simulator, GONE) if not r.finished)

            path.write_text(sim_config(simulator.base_url, [KEEP, NEW], "300ms", "50ms", total="4s"))
            reloaded_ns = time.perf_counter_ns()
            report = await run.admin.reload_config()

            assert report == {
                "file": str(path),
                "applied": True,
                "restart_required": False,
                "changes": [
                    f"probe series added: {key(NEW)}",
                    f"probe series removed: {key(GONE)}",
                    "schedule.interval: 5 s -> 0.3 s",
                    "schedule.jitter: 0.1 s -> 0.05 s",
                    "timeouts: changed",
                ],
                "message": "applied 5 change(s)",
            }
            assert jobs(run.scheduler) == {key(KEEP): 0.3, key(NEW): 0.3}
            assert prober.timeouts.total == 4.0

            await asyncio.sleep(1.5)
            # The new model is probed, on the new interval.
            assert len(served(simulator, NEW)) >= 3
            # KEEP's next run was 5 s away; the new interval brought it forward.
            assert sum(r.received_ns > reloaded_ns for r in served(simulator, KEEP)) >= 3
            # The removed model is probed no more, and its probe in flight was finished and kept.
            assert all(r.received_ns < reloaded_ns for r in served(simulator, GONE))
            assert in_flight.finished
            assert in_flight.request_id in {r.request_id for r in results if r.model == GONE}
            assert sum(r.model == GONE for r in results) == len(served(simulator, GONE))

            # A broken file is rejected line by line, and the running schedule stays as it was.
            path.write_text(sim_config(simulator.base_url, [KEEP], "1s", "0s", max_tokens="lots"))
            with pytest.raises(ConfigRejected) as rejected:
                await run.admin.reload_config()
            assert rejected.value.issues == [
                f"{path}:9: prompts[0].max_tokens: Input should be a valid integer, "
                "unable to parse string as an integer"
            ]
            assert jobs(run.scheduler) == {key(KEEP): 0.3, key(NEW): 0.3}
            before = len(served(simulator, NEW))
            await asyncio.sleep(0.7)
            assert len(served(simulator, NEW)) > before, "the kept schedule goes on probing"
        finally:
            await run.schedule.stop(limit_s=5)
    # Every request the simulator served reached the sink: no probe was cancelled.
    assert len(results) == len(simulator.ground_truth.records)


def tier_config(base_url: str, prompts: list[dict[str, object]], **aggregator: str) -> str:
    """One model probed with ``prompts``; ``aggregator`` e.g. ``headline_tier="100"``."""
    return config_text(
        [router_entry("sim", base_url, [KEEP])],
        prompts,
        region="test",
        schedule={"interval": "10s", "jitter": "1s", "concurrency": 8},
        timeouts=LOOPBACK_TIMEOUTS,
        api={"host": "127.0.0.1", "port": 8321},
        **({"aggregator": aggregator} if aggregator else {}),
    )


LONG = {"name": "long", "tier": "1k", "max_tokens": 16}


@pytest.mark.system
async def test_reload_names_the_headline_tier_when_it_moves(simulator: RunningSimulator, tmp_path: Path) -> None:
    """The aggregator keeps its headline tier until a restart: a reload says so when the effective tier
    changes, whether the file names it or a smaller prompt tier moved the default."""
    path = tmp_path / "probes.yaml"
    path.write_text(tier_config(simulator.base_url, [LONG]))
    config = load_config(path)
    assert config.headline_tier() == "1k"
    async with new_session(8) as session:
        run = Probing(config, path, Prober(session, config.timeouts, "test", 8))
        serving = LocalAdmin(config, path, plan(config, {})[0])  # routewatch serve: no probe schedule
        try:
            # Implicit: a short prompt (tier 100) moves the default headline tier from 1k to 100.
            path.write_text(tier_config(simulator.base_url, [prompt_entry(), LONG]))
            report = await run.admin.reload_config()
            assert report["applied"] is True and report["restart_required"] is True, report
            assert report["changes"][-1] == (
                "aggregator.headline_tier: 1k -> 100 (the prompts' smallest tier) (restart required)"
            )
            assert report["message"].endswith("; 1 take effect at the next restart")
            assert "aggregator: changed (restart required)" not in report["changes"]
            assert (await serving.reload_config())["changes"][-1] == (
                "aggregator.headline_tier: 1k -> 100 (the prompts' smallest tier)"
            )

            # Explicit, back to the tier it started with: nothing waits for a restart any more.
            path.write_text(tier_config(simulator.base_url, [prompt_entry(), LONG], headline_tier="1k"))
            report = await run.admin.reload_config()
            assert [c for c in report["changes"] if "restart" in c] == ["aggregator: changed (restart required)"]

            # Explicit, another tier than at start: the line names both.
            path.write_text(tier_config(simulator.base_url, [prompt_entry(), LONG], headline_tier="100"))
            report = await run.admin.reload_config()
            assert report["restart_required"] is True
            assert report["changes"][-2:] == [
                "aggregator: changed (restart required)",
                "aggregator.headline_tier: 1k -> 100 (restart required)",
            ]
        finally:
            await run.schedule.stop(limit_s=5)


@pytest.mark.system
async def test_two_reloads_at_once_apply_the_file_once(simulator: RunningSimulator, tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(sim_config(simulator.base_url, [KEEP], "10s", "1s"))
    config = load_config(path)
    async with new_session(8) as session:
        run = Probing(config, path, Prober(session, config.timeouts, "test", 8))
        try:
            path.write_text(sim_config(simulator.base_url, [KEEP, NEW], "10s", "1s"))
            first, second = await asyncio.gather(run.admin.reload_config(), run.admin.reload_config())
            assert first["applied"] is True and first["changes"] == [f"probe series added: {key(NEW)}"]
            # The second reload waited for the first, then found nothing left to do.
            assert second["applied"] is False and second["changes"] == []
            assert second["message"] == "valid; nothing changed"
            assert set(jobs(run.scheduler)) == {key(KEEP), key(NEW)}
        finally:
            await run.schedule.stop(limit_s=5)


@pytest.mark.system
async def test_reload_endpoint_applies_and_lists_the_changes(
    db_dsn: str,
    simulator: RunningSimulator,
    tmp_path: Path,
    aiohttp_client,
) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(sim_config(simulator.base_url, [KEEP, GONE], "300ms", "50ms"))
    config = load_config(path)
    series, _ = plan(config, {})
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    writer = BatchWriter(pool, tmp_path / "spool", flush_s=0.1)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
        await writer.start()
        aggregator = Aggregator(
            pool,
            WINDOWS,
            [("sim", KEEP), ("sim", GONE)],
            10.0,
            slo=config.slo,
            probe_interval_s=config.schedule.interval,
        )
        async with new_session(8) as session:
            prober = Prober(session, config.timeouts, "test", 8, sink=writer.submit)
            scheduler = AsyncIOScheduler()
            probes = ProbeSchedule(scheduler, prober, series, config.schedule.interval, config.schedule.jitter)
            scheduler.start()
            admin = LocalAdmin(config, path, series, aggregator=aggregator)
            admin.attach(probes)
            client = await aiohttp_client(create_app(aggregator, admin=admin, admin_token=SecretStr(TOKEN)))
            try:
                await wait_until(lambda: len(served(simulator, GONE)) >= 1, 3, "a probe of GONE")
                # NEW added, GONE removed, a new interval; the API port needs a restart.
                path.write_text(sim_config(simulator.base_url, [KEEP, NEW], "200ms", "50ms", port=9999))
                auth = {"Authorization": f"Bearer {TOKEN}"}
                resp = await client.post("/v1/config/reload", headers=auth)
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {
                    "file": str(path),
                    "applied": True,
                    "restart_required": True,
                    "changes": [
                        f"probe series added: {key(NEW)}",
                        f"probe series removed: {key(GONE)}",
                        "schedule.interval: 0.3 s -> 0.2 s",
                        "api: changed (restart required)",
                    ],
                    "message": "applied 3 change(s); 1 take effect at the next restart",
                }
                assert jobs(scheduler) == {key(KEEP): 0.2, key(NEW): 0.2}

                # The new model is probed and stored, and so is the removed one's probe in flight.
                await wait_until(lambda: len(served(simulator, NEW)) >= 2, 3, "probes of NEW")
                stored = "SELECT count(*) FROM probe_results WHERE model = $1"
                deadline = time.monotonic() + 3
                while await pool.fetchval(stored, NEW) == 0 or await pool.fetchval(stored, GONE) < len(
                    served(simulator, GONE)
                ):
                    assert time.monotonic() < deadline, "results of NEW and GONE were not all stored"
                    await asyncio.sleep(0.05)
                # The stats list NEW among the configured models.
                await aggregator.refresh()
                listing = await (await client.get("/v1/models")).json()
                ids = [m["id"] for m in listing["models"]]
                # Configured first, in file order; GONE stays listed after them while it has results.
                assert ids == [KEEP, NEW, GONE]
                new_stats = next(m for m in listing["models"] if m["id"] == NEW)["stats"]
                assert new_stats["samples"]["attempted"] >= 1

                # Asked again, the port still waits for a restart; nothing else is left to apply.
                again = await (await client.post("/v1/config/reload", headers=auth)).json()
                assert again["applied"] is False and again["restart_required"] is True
                assert again["changes"] == ["api: changed (restart required)"]
            finally:
                await probes.stop(limit_s=5)
    finally:
        await writer.close()
        await pool.close()


def run_config(models: list[str], interval: str) -> str:
    """For ``routewatch run`` with its own simulator."""
    return config_text(
        [router_entry(models=models)],
        [prompt_entry(content="Count from 1 to 10.", max_tokens=16)],
        region="test",
        schedule={"interval": interval, "jitter": "100ms", "concurrency": 4},
        timeouts={"connect": "2s", "headers": "5s", "first_token": "5s", "idle": "2s", "total": "10s"},
        api=LOOPBACK_API,
        aggregator={"refresh": "300ms"},
    )


@pytest.mark.system
@pytest.mark.timeout(60)
def test_routewatch_run_applies_a_reload(tmp_path: Path) -> None:
    """The runner applies a reload to its aggregator and its prober workers (which re-read the file)."""
    nano, gemini = "openai/gpt-4.1-nano", "google/gemini-2.5-flash"
    path = tmp_path / "probes.yaml"
    path.write_text(run_config([nano], "1s"))
    data_dir = Path(tempfile.mkdtemp(prefix="routewatch-reload-"))  # /tmp: the server user must reach it
    data_dir.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
    env[ENV_ADMIN_TOKEN] = TOKEN
    proc = subprocess.Popen(
        [sys.executable, "-m", "routewatch.cli", "run", "--config", str(path), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while not (m := re.search(r"API:\s+(http://\S+)", lines[-1] if lines else "")):
            line = proc.stdout.readline()
            assert line, "routewatch exited early:\n" + "".join(lines)
            lines.append(line)
        api = m.group(1)

        path.write_text(run_config([nano, gemini], "500ms"))
        request = urllib.request.Request(
            api + "/v1/config/reload", method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            report = json.loads(resp.read())
        assert report["applied"] is True and report["restart_required"] is False, report
        assert report["changes"] == [
            f"probe series added: orcarouter|{gemini}|short",
            "schedule.interval: 1 s -> 0.5 s",
        ]

        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(api + "/v1/models", timeout=5) as resp:
                models = {m["id"]: m for m in json.loads(resp.read())["models"]}
            if models.get(gemini, {}).get("stats", {}).get("samples", {}).get("attempted", 0) >= 1:
                break
            assert time.monotonic() < deadline, f"{gemini} was not probed after the reload: {models}"
            time.sleep(0.2)
        assert list(models) == [nano, gemini]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        out = "".join(lines) + (proc.stdout.read() if proc.stdout else "")
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert code == 0, out
    assert f"config reload of {path}: 2 change(s) applied, 0 need a restart" in out
    # The probes run in run's prober workers: each re-read the file (SIGHUP) and applied it.
    assert re.search(
        rf"worker-1 INFO routewatch: config reload of {re.escape(str(path))}: probing 2 series every 0.5 s", out
    )
    assert TOKEN not in out and "Traceback" not in out


TESTDATA = Path(__file__).parent / "testdata"


def _many_values(path: Path) -> None:
    """A file of 120,000 plain values: refused, but only after seconds of parsing."""
    path.write_text(sim_config("http://127.0.0.1:9/v1", [KEEP], "10s", "1s") + "extra:\n" + "  - x\n" * 120_000)


def _copy(name: str) -> Callable[[Path], None]:
    return lambda path: shutil.copyfile(TESTDATA / f"{name}.yaml", path)


@pytest.mark.db
@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (
            _copy("bad-yaml-alias-bomb"),
            ":14: (yaml): the file expands to more than 100,000 values "
            "(alias *d repeats 11,111 values): use aliases only for small repeated parts",
        ),
        (_copy("bad-yaml-deep-nesting"), ":9: (yaml): nested more than 64 levels deep"),
        # Its line is checked in test_config.py; here, the slow parse.
        (_many_values, ":{line}: (yaml): the file expands to more than 100,000 values"),
    ],
    ids=["alias-bomb", "deep-nesting", "many-values"],
)
async def test_reload_refuses_a_yaml_bomb_while_healthz_answers(
    db_dsn: str,
    tmp_path: Path,
    aiohttp_client,
    write: Callable[[Path], None],
    expected: str,
) -> None:
    """A real server: the bomb is a 400 naming the line, and the event loop is never held up by the parse."""
    path = tmp_path / "probes.yaml"
    path.write_text(sim_config("http://127.0.0.1:9/v1", [KEEP], "10s", "1s"))
    config = load_config(path)
    series, _ = plan(config, {})
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        aggregator = Aggregator(
            pool, WINDOWS, [("sim", KEEP)], 10.0, slo=config.slo, probe_interval_s=config.schedule.interval
        )
        admin = LocalAdmin(config, path, series)
        client = await aiohttp_client(create_app(aggregator, admin=admin, admin_token=SecretStr(TOKEN)))
        write(path)

        reload = asyncio.create_task(client.post("/v1/config/reload", headers={"Authorization": f"Bearer {TOKEN}"}))
        waits: list[float] = []
        while not reload.done():
            asked = time.monotonic()
            resp = await client.get("/healthz")
            assert resp.status == 200
            waits.append(time.monotonic() - asked)
            await asyncio.sleep(0.02)
        resp = await reload
        body = await resp.json()
        assert resp.status == 400, body
        pattern = re.escape(f"{path}{expected}").replace(re.escape("{line}"), r"\d+")
        assert len(body["error"]["issues"]) == 1 and re.fullmatch(pattern, body["error"]["issues"][0]), body
        assert max(waits, default=0) < 0.5, f"/healthz waited {max(waits):.2f} s during the reload"
        if write is _many_values:  # the slow one: /healthz was asked, and answered, while it parsed
            assert len(waits) >= 3, waits
        assert admin._config is config  # the running configuration is kept
    finally:
        await pool.close()
