"""GET /metrics on real parts: simulator → prober → writer → PostgreSQL → aggregator → scrape.

Every published stat must equal the snapshot's (milliseconds converted to
seconds), carry its labels, and the prober's own health must be there when a
prober runs in the process and absent (not zero) when none does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from factories import LOOPBACK_TIMEOUTS, config_text, outcome, probe_result, prompt_entry, router_entry
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.publish.metrics import ProberHealthSlot
from routewatch.aggregator.publish.metrics_snapshot import BREAKDOWNS, MetricsExport
from routewatch.aggregator.refresh import Aggregator, Snapshot
from routewatch.aggregator.stats import MIN_OK_SAMPLES, WindowCounts
from routewatch.config import SLOConfig, parse_config
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.scheduler import Prober, new_session
from routewatch.probe.targets import plan
from routewatch.results.probe_result import ERROR_CLASSES, ProbeResult
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator
from routewatch.storage.leadership import Leadership
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter, write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0, "24h": 86400.0}
REGION = "eu-test"
PROFILES = (
    ModelProfile(
        model="test/fast", provider="FastCo", ttft_median_ms=20, ttft_sigma=0.5, tokens_per_s=400, output_tokens=8
    ),
    ModelProfile(
        model="test/flaky",
        provider="FlakyCo",
        ttft_median_ms=30,
        ttft_sigma=0.5,
        tokens_per_s=400,
        output_tokens=8,
        error_rate=0.5,
        faults={"http_429": 1.0, "http_500": 1.0},
    ),
)
SILENT = "test/silent"  # configured, never probed
CONFIGURED = [("sim", p.model) for p in PROFILES] + [("sim", SILENT)]

# Families that only a prober in the same process can fill.
PROBER_FAMILIES = {
    "routewatch_probes",
    "routewatch_route_probes",
    "routewatch_route_probe_failures",
    "routewatch_probes_overloaded",
    "routewatch_probes_in_flight",
    "routewatch_probes_queued",
    "routewatch_probe_slots_skipped",
    "routewatch_probe_concurrency_limit",
    "routewatch_results_stored",
    "routewatch_results_pending",
    "routewatch_results_dropped",
    "routewatch_writer_failed_flushes",
    "routewatch_writer_database_up",
    "routewatch_spool_bytes",
    "routewatch_event_loop_lag_seconds",
    "routewatch_event_loop_lag_max_seconds",
    "routewatch_results_rejected",
    "routewatch_results_unspooled",
    "routewatch_spool_corrupt_records",
    "routewatch_writer_running",
    "routewatch_event_loop_tasks",
}
PERCENTILES = {  # family suffix -> WindowCounts field (ms)
    "ttft_p50_seconds": "ttft_p50_ms",
    "ttft_p95_seconds": "ttft_p95_ms",
    "ttfat_p50_seconds": "ttfat_p50_ms",
    "ttfat_p95_seconds": "ttfat_p95_ms",
}

Labels = frozenset[tuple[str, str]]

# Every window and breakdown, where a test checks them all (the default exports fewer).
EVERYTHING = MetricsExport(tuple(WINDOWS), BREAKDOWNS)


class Scrape:
    """One parsed /metrics response: families by name, sample values by (sample name, labels)."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.values: dict[tuple[str, Labels], float] = {
            (s.name, frozenset(s.labels.items())): s.value for f in self.families.values() for s in f.samples
        }

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())))

    def labelsets(self, name: str) -> set[Labels]:
        return {labels for (n, labels) in self.values if n == name}


async def scrape(client: TestClient, **headers: str) -> Scrape:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return Scrape(await resp.text())


def sim_config(base_url: str, models: Sequence[str] = tuple(p.model for p in PROFILES)) -> str:
    return config_text(
        [router_entry("sim", base_url, models)],
        [prompt_entry(content="Count from 1 to 10 in words.", max_tokens=16, min_output_tokens=4)],
        region=REGION,
        schedule={"interval": "1s", "jitter": "0s", "concurrency": 8},
        timeouts=LOOPBACK_TIMEOUTS,
    )


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(PROFILES, seed=77)
    yield sim
    await sim.close()


def expected_cell(counts: WindowCounts, prefix: str, per_slice: bool) -> dict[str, float]:
    """What /metrics must publish for one cell, computed here from the snapshot's counts."""
    out: dict[str, float] = {}
    for suffix, field in PERCENTILES.items():
        ms = getattr(counts, field)
        if ms is not None:
            out[prefix + suffix] = ms / 1000
    if counts.tps_p50 is not None:
        out[prefix + "output_tokens_per_second_p50"] = counts.tps_p50
    if counts.attempts:
        out[prefix + "error_ratio"] = (counts.attempts - counts.ok) / counts.attempts
    if counts.attempts - counts.rate_limited:
        out[prefix + "error_excl_429_ratio"] = (counts.attempts - counts.rate_limited - counts.ok) / (
            counts.attempts - counts.rate_limited
        )
    out[prefix + "window_probes_attempted"] = counts.attempts
    out[prefix + "window_probes_ok"] = counts.ok
    if not per_slice:
        out[prefix + "window_input_tokens"] = counts.input_tokens
        out[prefix + "window_output_tokens"] = counts.output_tokens
        out[prefix + "window_samples_sufficient"] = 1.0 if counts.ok >= MIN_OK_SAMPLES else 0.0
    return out


def expected_stats(snap: Snapshot) -> dict[tuple[str, Labels], float]:
    """Every stats sample of ``snap``, per model and per provider / region / tier slice, in every window."""
    out: dict[tuple[str, Labels], float] = {}
    for window, per_model in snap.stats.items():
        for (router, model), stats in per_model.items():
            base = {"router": router, "model": model, "window": window}
            for name, value in expected_cell(stats.counts, "routewatch_", per_slice=False).items():
                out[(name, frozenset(base.items()))] = value
            for dim, cells in stats.breakdown.items():
                for label, cell in cells.items():
                    labels = frozenset({**base, dim: label}.items())
                    for name, value in expected_cell(cell.counts, f"routewatch_{dim}_", per_slice=True).items():
                        out[(name, labels)] = value
    return out


def published_stats(s: Scrape) -> dict[tuple[str, Labels], float]:
    names = {n for n in s.families if n.startswith(("routewatch_provider_", "routewatch_region_", "routewatch_tier_"))}
    names |= {
        f"routewatch_{suffix}"
        for suffix in (
            *PERCENTILES,
            "output_tokens_per_second_p50",
            "error_ratio",
            "error_excl_429_ratio",
            "window_probes_attempted",
            "window_probes_ok",
            "window_input_tokens",
            "window_output_tokens",
            "window_samples_sufficient",
        )
    }
    return {k: v for k, v in s.values.items() if k[0] in names}


async def wait_stored(writer: BatchWriter, n: int) -> None:
    for _ in range(200):
        if writer.written >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"writer stored {writer.written} of {n} results")


async def test_metrics_publish_the_snapshot_and_the_probers_health(
    db_dsn: str, simulator: RunningSimulator, aiohttp_client, tmp_path: Path
) -> None:
    config = parse_config(sim_config(simulator.base_url), "metrics.yaml")
    series, _ = plan(config, {})
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    writer = BatchWriter(pool, tmp_path / "spool", flush_s=0.05)
    lag = LoopLagMonitor()
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
        await writer.start()
        lag.start()
        aggregator = Aggregator(pool, WINDOWS, CONFIGURED, 10.0)
        slot = ProberHealthSlot()
        app = create_app(aggregator, prober_health=slot, metrics=EVERYTHING)
        client = await aiohttp_client(app)

        # Before the first refresh and before any prober: no stats, no prober health.
        first = await scrape(client)
        assert not any(n.startswith(("routewatch_ttft", "routewatch_provider_")) for n in first.families)
        assert "routewatch_stats_age_seconds" not in first.families
        assert "routewatch_stats_refresh_duration_seconds" not in first.families
        assert PROBER_FAMILIES.isdisjoint(first.families)
        assert first.get("routewatch_refreshes_total") == 0
        assert first.get("routewatch_aggregator_role", role="leader") == 1

        async with new_session(8) as session:
            prober = Prober(session, config.timeouts, REGION, 8, sink=writer.submit, lag=lag)
            slot.attach(prober, writer, lag)
            # One probe at a time: the simulator's seeded draws then go to the
            # same requests on every run, so the mix of failures is fixed.
            results = [await prober.probe(s) for _ in range(8) for s in series]
            await wait_stored(writer, len(results))
            await aggregator.refresh()
            assert aggregator.snapshot is not None

            s = await scrape(client)
            # The stats: exactly the snapshot's figures, every one, with their labels.
            want = expected_stats(aggregator.snapshot)
            assert published_stats(s) == want
            assert s.labelsets("routewatch_provider_ttft_p50_seconds") == {
                frozenset({"router": "sim", "model": p.model, "window": w, "provider": p.provider}.items())
                for p in PROFILES
                for w in WINDOWS
            }
            assert {dict(ls)["region"] for ls in s.labelsets("routewatch_region_window_probes_attempted")} == {REGION}
            assert s.get("routewatch_window_probes_attempted", router="sim", model=SILENT, window="1h") == 0
            assert s.get("routewatch_ttft_p50_seconds", router="sim", model=SILENT, window="1h") is None
            assert s.get("routewatch_error_ratio", router="sim", model=SILENT, window="1h") is None
            flaky = aggregator.snapshot.stats["1h"][("sim", "test/flaky")].counts
            assert 0 < flaky.rate_limited < flaky.attempts - flaky.ok, "the seed should give 429s and other failures"
            excl_429 = s.get("routewatch_error_excl_429_ratio", router="sim", model="test/flaky", window="1h")
            all_errors = s.get("routewatch_error_ratio", router="sim", model="test/flaky", window="1h")
            assert excl_429 is not None and all_errors is not None and excl_429 < all_errors

            # The prober's health, against what the probes returned and the writer did.
            outcomes = Counter("ok" if r.ok else r.error_class for r in results)
            assert outcomes["ok"] and len(outcomes) >= 3
            for result in ("ok", *ERROR_CLASSES):
                assert s.get("routewatch_probes_total", result=result) == outcomes.get(result, 0), result
            assert s.get("routewatch_probes_overloaded_total") == sum(r.prober_overloaded for r in results)
            # Per route, the counters the alert rules' burn rates read.
            for p in PROFILES:
                mine = [r for r in results if r.model == p.model and not r.prober_overloaded]
                labels = {"router": "sim", "model": p.model, "region": REGION}
                assert s.get("routewatch_route_probes_total", **labels) == len(mine), p.model
                assert s.get("routewatch_route_probe_failures_total", **labels) == sum(not r.ok for r in mine)
            assert s.get("routewatch_route_probe_failures_total", router="sim", model="test/flaky", region=REGION)
            assert s.get("routewatch_probes_in_flight") == 0 and s.get("routewatch_probes_queued") == 0
            assert s.get("routewatch_probe_concurrency_limit") == 8
            # Probed one by one here, not on a schedule: no slot skipped, for either reason.
            for reason in ("budget_paused", "previous_probe_running"):
                assert s.get("routewatch_probe_slots_skipped_total", reason=reason) == 0, reason
            assert s.get("routewatch_results_stored_total") == len(results)
            assert s.get("routewatch_results_pending") == writer.backlog
            assert s.get("routewatch_results_dropped_total") == 0
            assert s.get("routewatch_results_rejected_total") == 0
            assert s.get("routewatch_results_unspooled_total") == 0
            assert s.get("routewatch_spool_corrupt_records_total") == 0
            assert s.get("routewatch_writer_running") == 1
            tasks = s.get("routewatch_event_loop_tasks")
            assert tasks is not None and tasks >= 1  # at least the writer's flush task
            assert s.get("routewatch_writer_database_up") == 1
            assert s.get("routewatch_spool_bytes") == writer.spool_bytes > 0
            last, worst = s.get("routewatch_event_loop_lag_seconds"), s.get("routewatch_event_loop_lag_max_seconds")
            assert last is not None and worst is not None and 0 <= last <= worst < 5
            assert s.get("routewatch_refreshes_total") == 1
            assert s.get("routewatch_stats_refresh_duration_seconds") == aggregator.last_refresh_s > 0
            age = s.get("routewatch_stats_age_seconds")
            assert age is not None and 0 <= age < 30
            assert s.get("routewatch_stats_refresh_interval_seconds") == 10
            body = await (await client.get("/metrics")).text()
            assert "://" not in body, "a URL in a label"

            # A new snapshot is published, not the exposition of the previous one.
            more = [await prober.probe(s) for s in series]
            await wait_stored(writer, len(results) + len(more))
            await aggregator.refresh()
            again = await scrape(client)
            assert published_stats(again) == expected_stats(aggregator.snapshot)
            before = s.get("routewatch_window_probes_attempted", router="sim", model="test/fast", window="1h")
            after = again.get("routewatch_window_probes_attempted", router="sim", model="test/fast", window="1h")
            assert before is not None and after == before + 1
            assert again.get("routewatch_probes_total", result="ok") == outcomes["ok"] + sum(r.ok for r in more)

            # Uncompressed, for a client that does not take gzip: the same figures.
            plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
            assert "Content-Encoding" not in plain.headers
            assert published_stats(Scrape(await plain.text())) == published_stats(again)
            gz = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
            assert gz.headers["Content-Encoding"] == "gzip"

            slot.detach()
            gone = await scrape(client)
            assert PROBER_FAMILIES.isdisjoint(gone.families)
            assert published_stats(gone) == published_stats(again)
    finally:
        await lag.stop()
        await writer.close()
        await pool.close()


# ---------------------------------------------------------------- serve mode: no prober


BROKEN, FINE = "t/broken", "t/fine"
SLO = SLOConfig(window=900, down_after=3, up_after=2, min_samples=50)


def _probe(model: str, ok: bool, started_at: datetime) -> ProbeResult:
    return probe_result(
        started_at=started_at,
        region="r",
        router="sim",
        model=model,
        provider="P",
        **outcome(ok, ttft_ms=100.0 + 10 * started_at.second, output_tokens=10),
    )


async def test_serve_mode_has_status_and_role_but_no_prober_metrics(db_dsn: str, aiohttp_client) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    leader_lock, standby_lock = Leadership(db_dsn), Leadership(db_dsn)
    try:
        now = datetime.now(UTC)
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            earlier = [now - timedelta(seconds=s) for s in (50, 40, 30)]
            await write_batch(
                conn, [_probe(BROKEN, False, t) for t in earlier] + [_probe(FINE, True, t) for t in earlier]
            )
        configured = [("sim", BROKEN), ("sim", FINE), ("sim", SILENT)]
        leader = Aggregator(
            pool, {"1h": 3600.0}, configured, 10.0, leadership=leader_lock, slo=SLO, probe_interval_s=60.0
        )
        await leader.refresh()
        standby = Aggregator(
            pool, {"1h": 3600.0}, configured, 10.0, leadership=standby_lock, slo=SLO, probe_interval_s=60.0
        )
        await standby.refresh()
        assert (leader.role, standby.role) == ("leader", "standby")

        apps = {}
        for name, aggregator in (("leader", leader), ("standby", standby)):
            # `routewatch serve`: no prober health source
            app = create_app(aggregator, metrics=MetricsExport(("1h",), BREAKDOWNS))
            apps[name] = await scrape(await aiohttp_client(app))

        for role, s in apps.items():
            assert PROBER_FAMILIES.isdisjoint(s.families), role
            assert s.get("routewatch_aggregator_role", role=role) == 1
            assert s.get("routewatch_aggregator_role", role="standby" if role == "leader" else "leader") == 0
            assert s.get("routewatch_refreshes_total") == 1
            assert s.get("routewatch_stats_age_seconds") is not None
            states = {
                m: {
                    st: s.get("routewatch_model_state", model=m, state=st)
                    for st in ("operational", "degraded", "down", "unknown")
                }
                for m in (BROKEN, FINE, SILENT)
            }
            assert states[BROKEN] == {"operational": 0, "degraded": 0, "down": 1, "unknown": 0}, role
            assert states[FINE] == {"operational": 1, "degraded": 0, "down": 0, "unknown": 0}, role
            assert states[SILENT] == {"operational": 0, "degraded": 0, "down": 0, "unknown": 1}, role
            assert s.get("routewatch_incidents_open") == 1
            # The standby serves the figures the leader's rollups hold.
            assert s.get("routewatch_window_probes_attempted", router="sim", model=BROKEN, window="1h") == 3
            assert s.get("routewatch_error_ratio", router="sim", model=BROKEN, window="1h") == 1
            assert s.get("routewatch_provider_error_ratio", router="sim", model=FINE, window="1h", provider="P") == 0
            assert s.get("routewatch_ttft_p50_seconds", router="sim", model=BROKEN, window="1h") is None
        assert published_stats(apps["standby"]) == expected_stats(standby.snapshot)
    finally:
        await leader_lock.release()
        await standby_lock.release()
        await pool.close()


# ---------------------------------------------------------------- a router that names a new provider every time


HOSTILE = "test/hostile"
CAP = 3


async def _hostile_completions(request: web.Request) -> web.StreamResponse:
    """A streamed completion whose X-Provider is new on every answer; every 10th names none."""
    n = next(request.app[_COUNTER])
    headers = {"Content-Type": "text/event-stream"}
    if n % 10:
        headers["X-Provider"] = f"upstream-{n:04d}"
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    base = {"id": f"gen-{n}", "object": "chat.completion.chunk", "created": 0, "model": HOSTILE}
    for word in ("one", " two", " three", " four", " five"):
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


_COUNTER = web.AppKey("answers", itertools.count)


async def test_a_router_naming_a_new_provider_per_answer_adds_a_bounded_number_of_series(
    db_dsn: str, aiohttp_server, aiohttp_client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """200 probes through the real prober, writer and aggregator against a loopback router whose
    X-Provider is new on every answer: /metrics, ?by=provider and /v1/models list at most CAP
    providers, then "other" and "unknown"; the cells add up to the model; the cap is logged once."""
    router = web.Application()
    router[_COUNTER] = itertools.count()
    router.router.add_post("/v1/chat/completions", _hostile_completions)
    server = await aiohttp_server(router)
    config = parse_config(sim_config(str(server.make_url("/v1")), [HOSTILE]), "hostile.yaml")
    series, _ = plan(config, {})
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    writer = BatchWriter(pool, tmp_path / "spool", flush_s=0.05)
    caplog.set_level(logging.WARNING, logger="routewatch.aggregator.rollup")
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
        await writer.start()
        aggregator = Aggregator(pool, WINDOWS, [("sim", HOSTILE)], 10.0, max_providers=CAP)
        client = await aiohttp_client(create_app(aggregator, metrics=EVERYTHING))
        async with new_session(8) as session:
            prober = Prober(session, config.timeouts, REGION, 8, sink=writer.submit)
            results: list[ProbeResult] = []
            for _ in range(2):  # two refreshes: the cap holds across them, and is logged once
                results += await prober.round(series * 100)
                await wait_stored(writer, len(results))
                await aggregator.refresh()
        assert all(r.ok for r in results)
        reported = {r.provider for r in results}
        assert len(reported) == 181 and None in reported  # 180 names and "none"

        s = await scrape(client)
        for window in WINDOWS:
            labels = {
                dict(ls)["provider"]
                for ls in s.labelsets("routewatch_provider_window_probes_attempted")
                if dict(ls)["window"] == window
            }
            assert len(labels) <= CAP + 2 and {"other", "unknown"} <= labels, labels
            assert "" not in labels
            per_provider = {
                p: s.get(
                    "routewatch_provider_window_probes_attempted",
                    router="sim",
                    model=HOSTILE,
                    window=window,
                    provider=p,
                )
                for p in labels
            }
            assert (
                sum(per_provider.values())
                == s.get("routewatch_window_probes_attempted", router="sim", model=HOSTILE, window=window)
                == 200
            )
            assert per_provider["unknown"] == 20 and per_provider["other"] == 180 - CAP
        for family in s.families.values():
            for sample in family.samples:
                assert "" not in sample.labels.values(), (family.name, sample.labels)

        listing = await (await client.get("/v1/models")).json()
        (model,) = listing["models"]
        assert len(model["providers"]) == CAP + 2
        assert model["providers"][-2:] == ["other", None] and "" not in model["providers"]
        by = await (await client.get(f"/v1/models/{HOSTILE}/stats", params={"by": "provider"})).json()
        cells = by["breakdown"]["provider"]
        assert len(cells) == CAP + 2 and "" not in cells and cells["unknown"]["samples"]["attempted"] == 20
        assert sum(c["samples"]["attempted"] for c in cells.values()) == by["samples"]["attempted"] == 200
        assert sum(c["samples"]["ok"] for c in cells.values()) == by["samples"]["ok"]

        capped = [r for r in caplog.records if "distinct providers" in r.getMessage()]
        assert len(capped) == 1, [r.getMessage() for r in capped]
        assert HOSTILE in capped[0].getMessage() and "upstream-" not in capped[0].getMessage()
    finally:
        await writer.close()
        await pool.close()


# ---------------------------------------------------------------- how many series per model


TWO_PROVIDERS, ONE_PROVIDER = "t/two-providers", "t/one-provider"


def _series_per_model(s: Scrape) -> Counter[str]:
    """Samples per model id, over every family that carries a model label."""
    return Counter(dict(labels)["model"] for (_, labels) in s.values if "model" in dict(labels))


async def test_metrics_default_to_under_20_series_per_model_and_aggregator_metrics_adds_windows_and_breakdowns(
    db_dsn: str, aiohttp_client
) -> None:
    """At default settings a model has 12 stats series (the shortest window) and 4 state series;
    aggregator.metrics in probes.yaml adds windows and breakdowns, each sample equal to the snapshot's."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        now = datetime.now(UTC)
        probes = [
            probe_result(
                started_at=now - timedelta(seconds=60 + i),
                region="r",
                router="sim",
                model=model,
                provider=provider,
                **outcome(True, ttft_ms=100.0 + i, ttfat_ms=120.0 + i, output_tps=50.0 + i, output_tokens=10),
            )
            for i in range(30)
            for model, provider in ((TWO_PROVIDERS, f"P{i % 2}"), (ONE_PROVIDER, "P"))
        ]
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await write_batch(conn, probes)
        windows = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}  # the default aggregator.windows
        configured = [("sim", TWO_PROVIDERS), ("sim", ONE_PROVIDER)]
        aggregator = Aggregator(pool, windows, configured, 10.0, slo=SLO, probe_interval_s=60.0)
        await aggregator.refresh()
        assert aggregator.snapshot is not None

        async def scrape_with(aggregator_section: str) -> Scrape:
            config = parse_config(
                config_text([router_entry("sim", "simulator", [m for _, m in configured])], [prompt_entry()])
                + aggregator_section,
                "probes.yaml",
            )
            app = create_app(aggregator, metrics=MetricsExport.from_config(config.aggregator))
            return await scrape(await aiohttp_client(app))

        default = await scrape_with("")
        assert _series_per_model(default) == {TWO_PROVIDERS: 13 + 4, ONE_PROVIDER: 13 + 4}
        assert all(n < 20 for n in _series_per_model(default).values())
        assert {dict(ls)["window"] for ls in default.labelsets("routewatch_ttft_p50_seconds")} == {"1h"}
        assert not any(
            n.startswith(("routewatch_provider_", "routewatch_region_", "routewatch_tier_")) for n in default.families
        )

        longer = await scrape_with("aggregator:\n  metrics:\n    windows: [7d, 1h]\n")
        assert _series_per_model(longer) == {TWO_PROVIDERS: 2 * 13 + 4, ONE_PROVIDER: 2 * 13 + 4}

        everything = await scrape_with(
            "aggregator:\n  metrics:\n    windows: [1h, 24h, 7d]\n    breakdowns: [provider, region, tier]\n"
        )
        # Per window: 13 per model, 9 per provider (two, or one), 9 for the one region, 9 for the one tier.
        assert _series_per_model(everything) == {
            TWO_PROVIDERS: 3 * (13 + 9 * 2 + 9 + 9) + 4,
            ONE_PROVIDER: 3 * (13 + 9 + 9 + 9) + 4,
        }
        assert published_stats(everything) == expected_stats(aggregator.snapshot)
        # Fewer series, the same figures: the default is a subset of the whole.
        assert published_stats(default).items() <= published_stats(everything).items()
        assert published_stats(longer).items() <= published_stats(everything).items()
    finally:
        await pool.close()
