"""Listed prices and reported costs end to end: ``routewatch run`` discovers the simulator's models with
the prices its list publishes, probes them, and stores each probe's cost at the model's price
(probes.yaml's where it gives one, else the list's) beside the cost the router reported (the
OpenRouter dialect's ``usage.cost``). ``routewatch serve`` on the same database then publishes, in
``/v1/costs`` and ``/metrics``, figures the simulator's ground truth (tokens served, cost announced,
prices listed) reproduces exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile.harness import ROUTEWATCH, Process, clean_env, fetch_rows, strict_json

from routewatch.config import load_config
from routewatch.config.costs import format_usd, plan_costs, probe_cost_usd
from routewatch.config.model import Price
from routewatch.simulator.process import SimulatorProcess

pytestmark = pytest.mark.system

INTERVAL_S = 1.0
BUDGET = 12.0
# model -> (listed [prompt, completion, input_cache_read] per token, the router's real price per 1M in, out)
LISTED = {
    "lst/right": (["0.000002", "0.000008"], (2.0, 8.0)),  # the list is right: ratio 1
    "lst/wrong": (["0.000001", "0.000004"], (2.0, 8.0)),  # the list says half what the router bills: ratio 2
    "lst/cached": (["0.000002", "0.000008", "0.0000005"], (2.0, 8.0)),  # cached input at the listed cache price
    "lst/override": (["0.000009", "0.000009"], (3.0, 12.0)),  # probes.yaml's price wins over the list's
    "lst/hostile": (["NaN", "0.000001"], (1.0, 1.0)),  # rejected: no price; the router's figure still counts
}
CONFIGURED = {"lst/override": {"input": 3, "output": 12}}
EXPECTED_PRICE = {
    "lst/right": (Price(input=2, output=8), "listing"),
    "lst/wrong": (Price(input=1, output=4), "listing"),
    "lst/cached": (Price(input=2, output=8, cached_input=0.5), "listing"),
    "lst/override": (Price(input=3, output=12), "config"),
    "lst/hostile": (None, None),
}


def _profile(model: str) -> dict[str, Any]:
    _, (usd_in, usd_out) = LISTED[model]
    return {
        "model": model,
        "provider": "P",
        "ttft_median_ms": 10,
        "tokens_per_s": 800,
        "output_tokens": 6,
        "prompt_overhead_tokens": 1000,  # a cost far above float noise, far below the budget
        "cached_prompt_tokens": 400 if model == "lst/cached" else 0,
        "dialect": "openrouter",
        "input_usd_per_1m": usd_in,
        "output_usd_per_1m": usd_out,
    }


def _config() -> dict[str, Any]:
    return {
        "region": "cost",
        "routers": [
            {
                "name": "sim",
                "base_url": "simulator",
                "models": [],
                "prices": CONFIGURED,
                "discover": {"include": ["lst/*"], "refresh": "30s"},
            }
        ],
        "prompts": [
            {"name": "p0", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "min_output_tokens": 1}
        ],
        "schedule": {"interval": f"{INTERVAL_S:g}s", "jitter": "0s"},
        "timeouts": {"connect": "2s", "headers": "2s", "first_token": "2s", "idle": "2s", "total": "3s"},
        "aggregator": {"refresh": "0.5s", "windows": ["1h"]},
        # The file alone plans nothing (no model, no price): accepted. With the discovered models and
        # listed prices the plan is $26.27/day (max_tokens of output each probe); the spend stays far below.
        "budget": {"usd_per_day": BUDGET},
    }


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="routewatch-cost-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        body: bytes = resp.read()
    return body


def test_listed_prices_cost_discovered_probes_and_reported_costs_are_compared(db_dsn: str, work: Path) -> None:
    (work / "profiles.yaml").write_text(yaml.safe_dump([_profile(m) for m in LISTED]))
    sim = SimulatorProcess(work / "profiles.yaml")
    sim.start()
    try:
        prices = {m: listed for m, (listed, _) in LISTED.items()}
        body = json.dumps({"prices": prices}).encode()
        request = urllib.request.Request(sim.root + "/v1/simulator/listing", data=body, method="PUT")
        urllib.request.urlopen(request, timeout=30).close()
        config = work / "probes.yaml"
        config.write_text(yaml.safe_dump(_config(), sort_keys=False))
        env = clean_env(ROUTEWATCH_DATABASE_URL=db_dsn, ROUTEWATCH_ROUTER_URL=sim.base_url)
        common = ["--config", str(config), "--data-dir", str(work / "data"), "--port", "0"]

        # discover -> probe -> cost: every model probed a few times, then the run stops (its spool drained).
        run = Process([*ROUTEWATCH, "run", *common, "--workers", "1"], env, work / "run.log")
        run.wait_for(r"API:\s+(http://\S+)", timeout=90)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            truth = strict_json(_get(sim.root + "/v1/ground-truth"))
            if all(sum(1 for r in truth if r["model"] == m and r["usage_sent"]) >= 3 for m in LISTED):
                break
            time.sleep(0.3)
        assert run.stop(signal.SIGTERM, timeout=90) == 0, run.output()[-3000:]
        output = run.output()
        assert "Traceback" not in output, output[-3000:]
        assert "the listed prices of 1 models not used (lst/hostile: pricing.prompt 'NaN' is not a finite number)" in (
            output
        )
        assert (
            "with the models discovered and the prices the routers list, the planned cost is $26.27/day, "
            "$14.27 (119%) over the budget of $12.00/day" in output
        ), output[-3000:]
        # The same plan, from the file and what the catalog recorded of the simulator's list.
        planned = plan_costs(
            load_config(config), {"sim": {m: p for m, (p, _) in EXPECTED_PRICE.items() if p}}, {"sim": tuple(LISTED)}
        ).usd_per_day
        assert format_usd(planned or 0.0) == "$26.27"

        # The stored probes against the simulator's record of what it served and announced.
        truth = {r["request_id"]: r for r in strict_json(_get(sim.root + "/v1/ground-truth"))}
        rows = fetch_rows(db_dsn, "SELECT model, request_id, cost_usd, reported_cost_usd FROM probe_results")
        expected: dict[str, dict[str, float]] = {m: {"usd": 0.0, "reported": 0.0, "probes": 0} for m in LISTED}
        for row in rows:
            served = truth[row["request_id"]]
            price, _ = EXPECTED_PRICE[row["model"]]
            cost = probe_cost_usd(
                price, served["prompt_tokens"], served["output_tokens"], served["cached_prompt_tokens"]
            )
            assert row["cost_usd"] == (None if cost is None else pytest.approx(cost)), row
            assert row["reported_cost_usd"] == pytest.approx(served["cost_usd"]), row
            sums = expected[row["model"]]
            sums["usd"] += cost or 0.0
            sums["reported"] += served["cost_usd"]
            sums["probes"] += 1
        assert all(sums["probes"] >= 3 for sums in expected.values()), expected

        # serve: the same figures in /v1/costs and /metrics, nothing probing any more.
        serve = Process([*ROUTEWATCH, "serve", *common], env, work / "serve.log")
        try:
            api = serve.wait_for(r"API:\s+(http://\S+)", timeout=90).group(1)
            costs = _wait_for_costs(api, len(LISTED))
            by_model = {m["model"]: m for m in costs["models"]}
            for model, sums in expected.items():
                entry = by_model[model]
                price, source = EXPECTED_PRICE[model]
                assert entry["probes"] == sums["probes"], entry
                assert entry["reported_usd"] == pytest.approx(sums["reported"]), entry
                if price is None:
                    assert (entry["price"], entry["priced_probes"], entry["reported_vs_computed"]) == (None, 0, None)
                    assert entry["billed_usd"] == pytest.approx(sums["reported"]), "the router's figure counts"
                    continue
                assert entry["price"] == {
                    "input_usd_per_mtok": price.input,
                    "output_usd_per_mtok": price.output,
                    "cached_input_usd_per_mtok": price.cached_input,
                    "source": source,
                }
                assert entry["usd"] == pytest.approx(sums["usd"]), entry
                assert entry["reported_vs_computed"] == pytest.approx(sums["reported"] / sums["usd"]), entry
                assert entry["billed_usd"] == pytest.approx(sums["reported"]), "the router's figure counts"
            assert by_model["lst/right"]["reported_vs_computed"] == pytest.approx(1.0, rel=1e-9)
            assert by_model["lst/wrong"]["reported_vs_computed"] == pytest.approx(2.0, rel=1e-9)
            assert costs["budget"]["spent_today_usd"] == pytest.approx(sum(s["reported"] for s in expected.values()))
            # The plan the prober logged, published by the aggregator for operators (not only in a log).
            assert costs["budget"]["planned_usd_per_day"] == pytest.approx(planned, rel=1e-9), costs["budget"]
            shown = {k: by_model["lst/wrong"][k] for k in ("usd", "reported_usd", "reported_vs_computed", "price")}
            print(f"\n/v1/costs of the model whose listed price is half the billed one: {json.dumps(shown)}")

            metrics = _get(api + "/metrics").decode()
            for model, sums in expected.items():
                reported = _sample(metrics, "routewatch_cost_reported_today_usd", model)
                assert reported == pytest.approx(sums["reported"]), model
                computed = _sample(metrics, "routewatch_cost_today_usd", model)
                assert computed == (None if EXPECTED_PRICE[model][0] is None else pytest.approx(sums["usd"])), model
            assert _sample(metrics, "routewatch_cost_reported_ratio", "lst/wrong") == pytest.approx(2.0, rel=1e-9)
            gauge = re.search(r"^routewatch_budget_planned_usd_per_day (\S+)$", metrics, re.MULTILINE)
            assert gauge and float(gauge.group(1)) == pytest.approx(planned, rel=1e-9), metrics[-2000:]
            listing = {m["id"]: m for m in strict_json(_get(api + "/v1/models"))["models"]}
            assert listing["lst/override"]["price"]["source"] == "config"
            assert listing["lst/cached"]["price"]["cached_input_usd_per_mtok"] == 0.5
            # The model page, the badge and the status page show the input price by the same rule.
            assert "$1 per 1M input tokens" in _get(api + "/status/models/lst/wrong").decode()
            assert "$3 per 1M input tokens" in _get(api + "/status/models/lst/override").decode()
            assert "$3/M in" in _get(api + "/badge/lst/override.svg").decode()
        finally:
            assert serve.stop(signal.SIGTERM, timeout=90) == 0, serve.output()[-3000:]
    finally:
        sim.stop()


def _wait_for_costs(api: str, models: int) -> Any:
    deadline = time.monotonic() + 30
    while True:
        try:
            costs = strict_json(_get(api + "/v1/costs"))
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
        else:
            if len(costs["models"]) >= models:
                return costs
        if time.monotonic() > deadline:
            raise AssertionError("/v1/costs never listed every model")
        time.sleep(0.2)


def _sample(metrics: str, family: str, model: str) -> float | None:
    found = re.search(rf'^{family}\{{model="{re.escape(model)}",router="sim"\}} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else None
