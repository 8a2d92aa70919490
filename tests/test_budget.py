"""The daily budget at run time, end to end on real parts: the simulator reports usage, the real scheduler
probes, the writer stores cost per probe and per day, the aggregator's leader pauses the dearest series once
the day's spend crosses the budget, the prober skips it, and the API, /metrics and the status page say so.

Also the pause rule on its own (:func:`choose_pauses`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from factories import LOOPBACK_TIMEOUTS, config_text, prompt_entry, router_entry

from routewatch.aggregator.budget import BudgetKeeper, choose_pauses
from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.budget_follow import FOLLOW_EVERY_S, follow_pauses
from routewatch.config import parse_config
from routewatch.config.costs import plan_costs, probe_cost_usd
from routewatch.config.model import Price
from routewatch.model_discovery import catalog_cost_plan
from routewatch.probe.scheduler import Prober, new_session, schedule, stop
from routewatch.probe.targets import plan
from routewatch.simulator import ModelProfile, start_simulator
from routewatch.storage import catalog_queries
from routewatch.storage.cost_queries import SeriesSpend
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter

DAY = date(2026, 1, 2)


def _spend(model: str, probes: int, usd: float, priced: bool = True) -> SeriesSpend:
    return SeriesSpend(DAY, "r", model, "short", probes, probes if priced else 0, usd if priced else 0.0)


@pytest.mark.unit
def test_nothing_is_paused_below_the_budget() -> None:
    assert choose_pauses([_spend("a", 10, 4.0), _spend("b", 10, 5.0)], 10.0, 100, {}) == []


@pytest.mark.unit
def test_the_dearest_series_are_paused_until_the_rest_fits() -> None:
    # Today: a $6, b $4, c $0.50 over 10 probes each ($10.50 spent), d unpriced.
    spends = [_spend("c", 10, 0.5), _spend("a", 10, 6.0), _spend("b", 10, 4.0), _spend("d", 10, 0.0, priced=False)]
    # At 20 probes a day the rates are a $12, b $8, c $1: pausing a leaves $9, within $10.
    paused = choose_pauses(spends, 10.0, 20, {})
    assert [(p.model, p.usd_per_day) for p in paused] == [("a", pytest.approx(12.0))]
    # At 100 a day (a $60, b $40, c $5): a and b go, c fits; the unpriced d is never paused.
    assert [p.model for p in choose_pauses(spends, 10.0, 100, {})] == ["a", "b"]
    # Already paused series stay paused and are not chosen again.
    assert [p.model for p in choose_pauses(spends, 10.0, 100, {("r", "a", "short"): 60.0})] == ["b"]


@pytest.mark.unit
def test_the_routers_reported_cost_is_what_the_budget_counts_where_it_reports_one() -> None:
    # a: 10 priced probes computed at $4, of which the router reported 6 at $3.60 (computed $2.40 for them).
    a = SeriesSpend(DAY, "r", "a", "short", 10, 10, 4.0, 6, 3.6, 6, 3.6, 2.4)
    assert a.billed_usd == pytest.approx(4.0 - 2.4 + 3.6) and a.billed_probes == 10
    # u: no price at all, but the router reported $8 over 10 probes: it counts, and can be paused.
    u = SeriesSpend(DAY, "r", "u", "short", 10, 0, 0.0, 10, 8.0, 0, 0.0, 0.0)
    assert (u.billed_usd, u.billed_probes) == (8.0, 10)
    # $13.20 spent crosses $12; at 20 probes a day u runs at $16, a at $10.40: pausing u is enough.
    paused = choose_pauses([a, u], 12.0, 20, {})
    assert [(p.model, p.usd_per_day) for p in paused] == [("u", pytest.approx(16.0))]


# ---------------------------------------------------------------- end to end

DEAR = ModelProfile(
    model="test/dear",
    provider="DearCo",
    ttft_median_ms=20,
    ttft_sigma=0.1,
    tokens_per_s=500,
    output_tokens=8,
    # The router adds a huge prompt of its own and bills it: the plan cannot know, the usage tells.
    prompt_overhead_tokens=2_000_000,
    cached_prompt_tokens=500_000,
    dialect="plain",  # reports no cost: the budget counts the computed one (the reported case: test_cost_reported)
)
CHEAP = ModelProfile(
    model="test/cheap", provider="CheapCo", ttft_median_ms=20, tokens_per_s=500, output_tokens=8, dialect="plain"
)
FREE = ModelProfile(
    model="test/free", provider="FreeCo", ttft_median_ms=20, tokens_per_s=500, output_tokens=8, dialect="plain"
)
PRICES = {
    "test/dear": {"input": 1.0, "output": 1.0, "cached_input": 0.5},
    "test/cheap": {"input": 0.01, "output": 0.01},
}
BUDGET = 5.0  # the plan at one probe per 500 ms is $4.71/day; the dear model's usage spends $1.75 a probe


async def _until(what: str, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.mark.system
async def test_a_tiny_budget_pauses_the_dearest_series_and_says_so(db_dsn: str, aiohttp_client, tmp_path: Path) -> None:
    async with await start_simulator([DEAR, CHEAP, FREE], seed=7) as sim:
        text = config_text(
            [router_entry("sim", sim.base_url, [DEAR.model, CHEAP.model, FREE.model], prices=PRICES)],
            [prompt_entry(max_tokens=16, min_output_tokens=4)],
            region="test",
            schedule={"interval": "500ms", "jitter": "50ms", "concurrency": 8},
            timeouts=LOOPBACK_TIMEOUTS,
            budget={"usd_per_day": BUDGET},
        )
        config = parse_config(text, "budget.yaml")  # the plan fits the budget: accepted
        series, _ = plan(config, {})
        pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=6)
        try:
            async with pool.acquire() as conn:
                await ensure_schema(conn)
            keeper = BudgetKeeper(BUDGET, 86400 / config.schedule.interval)
            aggregator = Aggregator(
                pool,
                {"1h": 3600.0},
                [("sim", m) for m in (DEAR.model, CHEAP.model, FREE.model)],
                0.3,
                slo=config.slo,
                probe_interval_s=config.schedule.interval,
                budget=keeper,
            )
            writer = BatchWriter(pool, tmp_path / "spool", flush_s=0.1)
            await writer.start()
            async with new_session(8) as session:
                prober = Prober(session, config.timeouts, "test", 8, sink=writer.submit)
                scheduler = AsyncIOScheduler()
                schedule(scheduler, prober, series, 0.5, 0.05)
                scheduler.start()
                refreshing = asyncio.create_task(aggregator.run())
                following = asyncio.create_task(follow_pauses(pool, prober, every_s=0.1))
                dear_key = f"sim|{DEAR.model}|short"
                try:
                    await _until("the dear series paused", lambda: dear_key in prober.paused)
                    counts = _served(sim.ground_truth.records)
                    await asyncio.sleep(3.0)
                    after = _served(sim.ground_truth.records)
                finally:
                    await stop(scheduler, prober, limit_s=10)
                    for task in (refreshing, following):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            await writer.close()
            await aggregator.refresh()

            # Paused: at most the probe in flight when the pause arrived; the others went on.
            assert after[DEAR.model] - counts[DEAR.model] <= 1
            assert after[CHEAP.model] - counts[CHEAP.model] >= 4
            assert after[FREE.model] - counts[FREE.model] >= 4
            assert prober.paused == {dear_key}
            assert prober.budget_skipped >= 4

            # Each stored probe's cost is what the simulator's usage and the prices make it.
            truth = {r.request_id: r for r in sim.ground_truth.records}
            rows = await pool.fetch("SELECT model, request_id, cost_usd, cached_input_tokens FROM probe_results")
            assert len(rows) == len(truth)
            expected_total = 0.0
            for row in rows:
                served = truth[row["request_id"]]
                price = config.routers[0].prices.get(row["model"])
                expected = probe_cost_usd(
                    price, served.prompt_tokens, served.output_tokens, served.cached_prompt_tokens
                )
                assert row["cost_usd"] == (None if expected is None else pytest.approx(expected)), row
                expected_total += expected or 0.0
                if row["model"] == DEAR.model:
                    assert row["cached_input_tokens"] == 500_000
            daily = await pool.fetchval("SELECT sum(cost_usd) FROM probe_cost_daily")
            assert daily == pytest.approx(expected_total)
            unpriced = await pool.fetchrow(
                "SELECT probes, priced_probes FROM probe_cost_daily WHERE model = $1", FREE.model
            )
            assert unpriced["probes"] >= 4 and unpriced["priced_probes"] == 0

            client = await aiohttp_client(create_app(aggregator))
            resp = await client.get("/v1/costs")
            costs = await resp.json()
            # Read once per refresh: cached like the other aggregate bodies, revalidated by its ETag.
            assert resp.headers["Cache-Control"].startswith("public, max-age=")
            again = await client.get("/v1/costs", headers={"If-None-Match": resp.headers["ETag"]})
            assert again.status == 304
            assert costs["budget"]["usd_per_day"] == BUDGET
            assert costs["budget"]["spent_today_usd"] == pytest.approx(expected_total)
            assert [(p["model"], p["prompt"]) for p in costs["budget"]["paused"]] == [(DEAR.model, "short")]
            note = costs["budget"]["note"]
            assert note.startswith("Probing of 1 series is paused until the end of the day (UTC)")
            by_model = {m["model"]: m for m in costs["models"]}
            assert by_model[FREE.model]["priced_probes"] == 0 and by_model[FREE.model]["usd"] == 0
            assert sum(m["usd"] for m in costs["models"]) == pytest.approx(expected_total)

            listing = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["models"]}
            assert listing[FREE.model]["cost_today_usd"] is None
            assert listing[DEAR.model]["cost_today_usd"] == pytest.approx(by_model[DEAR.model]["usd"])

            metrics = await (await client.get("/metrics")).text()
            assert "routewatch_budget_series_paused 1.0" in metrics
            assert f"routewatch_budget_usd_per_day {BUDGET}" in metrics
            assert 'routewatch_cost_today_usd{model="test/dear",router="sim"}' in metrics
            assert 'model="test/free"' not in metrics.split("routewatch_cost_today_usd")[-1]

            status = await (await client.get("/status.json")).json()
            assert status["budget_note"] == note
            page = await (await client.get("/status")).text()
            assert "Probing of 1 series is paused" in page
        finally:
            await pool.close()


def _served(records: list) -> dict[str, int]:  # type: ignore[type-arg]
    counts = {DEAR.model: 0, CHEAP.model: 0, FREE.model: 0}
    for r in records:
        counts[r.model] += 1
    return counts


@pytest.mark.system
@pytest.mark.timeout(180)
async def test_routewatch_run_with_two_prober_processes_obeys_the_leaders_pauses(db_dsn: str, tmp_path: Path) -> None:
    """``routewatch run --workers 2``: two prober processes share the series through shard leases; the leader
    (the run process's aggregator) pauses the dear series, and whichever worker holds its shard stops probing it."""
    async with await start_simulator([DEAR, CHEAP, FREE], seed=11) as sim:
        config = tmp_path / "probes.yaml"
        config.write_text(
            config_text(
                [router_entry("sim", sim.base_url, [DEAR.model, CHEAP.model, FREE.model], prices=PRICES)],
                [prompt_entry(max_tokens=16, min_output_tokens=4)],
                region="test",
                schedule={"interval": "500ms", "jitter": "50ms", "concurrency": 8},
                timeouts=LOOPBACK_TIMEOUTS,
                api={"host": "127.0.0.1", "port": 0},
                aggregator={"refresh": "500ms"},
                budget={"usd_per_day": BUDGET},
            ),
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env["ROUTEWATCH_DATABASE_URL"] = db_dsn
        argv = ["run", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--workers", "2"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "routewatch.cli", *argv, env=env, stdout=PIPE, stderr=STDOUT
        )
        printed: list[str] = []
        try:
            api = await _line_matching(proc, printed, r"API:\s+(http://\S+)")
            async with aiohttp.ClientSession() as http:

                async def costs() -> dict[str, Any]:
                    async with http.get(api + "/v1/costs") as resp:
                        body: dict[str, Any] = await resp.json()
                        return body

                async with asyncio.timeout(60):
                    while not (await costs())["budget"]["paused"]:
                        await asyncio.sleep(0.2)
                # Each worker reads the pauses every FOLLOW_EVERY_S on its own: wait until both have.
                following = r"worker-(\d) WARNING \S+: budget: 1 series paused for the rest of the day"
                workers = {m.group(1) for line in printed if (m := re.search(following, line))}
                while len(workers) < 2:
                    workers.add(await _line_matching(proc, printed, following, 2 * FOLLOW_EVERY_S + 10))
                # A probe of the dear series its worker started just before taking the pause in sends its
                # request within timeouts.connect, or fails: let it arrive before the count begins.
                await asyncio.sleep(float(LOOPBACK_TIMEOUTS["connect"].removesuffix("s")))
                counts = _served(sim.ground_truth.records)
                await asyncio.sleep(4.0)
                after = _served(sim.ground_truth.records)
                body = await costs()
                async with http.get(api + "/metrics") as resp:
                    metrics = await resp.text()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                async with asyncio.timeout(60):
                    rest = await proc.communicate()
                printed.append(rest[0].decode(errors="replace"))
        assert proc.returncode == 0, "".join(printed)
    assert [p["model"] for p in body["budget"]["paused"]] == [DEAR.model]
    assert after[DEAR.model] == counts[DEAR.model], "no worker probed the paused series"
    assert after[CHEAP.model] - counts[CHEAP.model] >= 4
    assert after[FREE.model] - counts[FREE.model] >= 4
    assert "routewatch_budget_series_paused 1.0" in metrics
    # Two prober processes shared the series (shard leases), whichever held the dear one obeyed.
    assert "by 2 prober process" in "".join(printed)


async def _line_matching(
    proc: asyncio.subprocess.Process, printed: list[str], pattern: str, timeout_s: float = 90
) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            if not line:
                raise AssertionError("routewatch exited early:\n" + "".join(printed))
            printed.append(line)
            if m := re.search(pattern, line):
                return m.group(1)


@pytest.mark.db
async def test_the_cost_plan_is_made_from_the_catalog_and_remade_after_a_reload(pool: asyncpg.Pool) -> None:
    """The leader's plan: probes.yaml with the models the catalog has the router list (its discover globs)
    at their listed prices, as ``plan_costs`` makes it; a configuration reloaded is planned at the next check."""
    router = router_entry("r", models=["cfg/priced"], prices={"cfg/priced": {"input": 1, "output": 2}})
    text = config_text(
        [{**router, "discover": {"include": ["lst/*"]}}], [prompt_entry(max_tokens=16)], schedule={"interval": "60s"}
    )
    config = parse_config(text, "probes.yaml")
    async with pool.acquire() as conn:
        await ensure_schema(conn)
        listed = [("lst/a", 3.0, 6.0, None), ("lst/b", None, None, None), ("other/c", 9.0, 9.0, None)]
        await catalog_queries.record_listing(conn, "r", datetime.now(UTC), listed, complete=True)
        keeper = BudgetKeeper(None, 1440.0, config=config, planner=catalog_cost_plan)
        report = await keeper.check(conn, leader=True)
        # lst/b is discovered without a price; other/c is listed but not discovered.
        expected = plan_costs(config, {"r": {"lst/a": Price(input=3, output=6)}}, {"r": ("lst/a", "lst/b")})
        assert [m.model for m in expected.models] == ["cfg/priced", "lst/a", "lst/b"]
        assert report.planned_usd_per_day == pytest.approx(expected.usd_per_day)
        assert report.planned_usd_per_day > (plan_costs(config).usd_per_day or 0.0), "the listed model adds"

        # Twice the interval halves the plan, from the first check after the reload.
        slower = parse_config(text.replace("interval: 60s", "interval: 120s"), "probes.yaml")
        keeper.configure(None, 720.0, slower)
        again = await keeper.check(conn, leader=True)
        assert again.planned_usd_per_day == pytest.approx((expected.usd_per_day or 0.0) / 2)

        # Without a priced model there is no plan to publish: null, as the API says.
        unpriced = parse_config(config_text([router_entry("r", models=["cfg/free"])], [prompt_entry()]), "probes.yaml")
        keeper.configure(None, 1440.0, unpriced)
        assert (await keeper.check(conn, leader=True)).planned_usd_per_day is None
