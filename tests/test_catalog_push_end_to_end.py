"""A pushing prober's model list reaches the central catalog, with real processes.

The simulator in its own process (its list changed at run time), a central
``routewatch serve`` on the test database with the eu region's token, and a
``routewatch probe`` with ``ingest:`` (no database) whose router has
``discover:``. The central server's catalog gets the models the prober read, a
model the simulator stops listing is retired there and shown so by the
central API, and the listed price is what central ``/v1/costs`` uses.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import LOOPBACK_API, config_text, prompt_entry, router_entry
from ground_truth import simulator_process
from hostile.harness import ROUTEWATCH, Process, clean_env, fetch_rows, free_port, strict_json, wait_until

from routewatch.simulator.process import SimulatorProcess

pytestmark = pytest.mark.system

EU_TOKEN = secrets.token_hex(24)
CONFIGURED = "fixed/one"
DISCOVERED = ["disc/m0", "disc/m1", "disc/m2"]
PROFILES = "".join(
    f"- {{model: {m}, provider: P, ttft_median_ms: 10, tokens_per_s: 400, output_tokens: 4}}\n"
    for m in [CONFIGURED, *DISCOVERED]
)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    with simulator_process(tmp_path, PROFILES) as sim:
        yield sim


def _control(sim: SimulatorProcess, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(sim.root + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def _get(api: str, path: str) -> Any:
    with urllib.request.urlopen(api + path, timeout=30) as resp:
        return strict_json(resp.read())


def test_a_pushing_probers_list_is_recorded_retired_and_priced_centrally(
    simulator: SimulatorProcess, db_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    prompts = [prompt_entry(max_tokens=8, min_output_tokens=1)]
    central_config = tmp_path / "central.yaml"
    central_config.write_text(
        config_text(
            [router_entry("sim", simulator.base_url, [CONFIGURED])],
            prompts,
            api=LOOPBACK_API | {"ingest_tokens": [{"region": "eu", "token_env": "EU_INGEST_TOKEN"}]},
            aggregator={"refresh": "0.5s", "windows": ["1h"]},
        )
    )
    remote_config = tmp_path / "remote.yaml"
    discover = {"include": ["disc/*"], "refresh": "1s"}
    remote_config.write_text(
        config_text(
            [router_entry("sim", simulator.base_url, [CONFIGURED], discover=discover)],
            prompts,
            region="eu",
            schedule={"interval": "2s", "jitter": "0s"},
            timeouts={"connect": "1s", "headers": "2s", "first_token": "2s", "idle": "1s", "total": "3s"},
            ingest={"url": f"{api}/v1/ingest", "token_env": "EU_INGEST_TOKEN"},
        )
    )
    # The list publishes disc/m0's price, USD per token as OpenRouter does: 2.5 and 10 per 1M.
    _control(simulator, "PUT", "/v1/simulator/listing", {"prices": {"disc/m0": ["0.0000025", "0.00001"]}})
    central_argv = [*ROUTEWATCH, "serve", "--config", str(central_config), "--data-dir", str(tmp_path / "central")]
    central = Process(
        [*central_argv, "--port", str(port)],
        clean_env(ROUTEWATCH_DATABASE_URL=db_dsn, EU_INGEST_TOKEN=EU_TOKEN),
        tmp_path / "central.log",
    )
    prober = None
    try:
        central.wait_for(r"API:", timeout=60)
        prober = Process(
            [*ROUTEWATCH, "probe", "--config", str(remote_config), "--data-dir", str(tmp_path / "remote")],
            clean_env(EU_INGEST_TOKEN=EU_TOKEN),
            tmp_path / "prober.log",
        )
        prober.wait_for(r"routewatch probe is running", timeout=60)
        prober_metrics = prober.wait_for(r"metrics:\s+(http://\S+/metrics)", timeout=10).group(1)

        def catalog() -> dict[str, dict[str, Any]]:
            rows = fetch_rows(db_dsn, "SELECT * FROM model_catalog WHERE router = 'sim'")
            return {r["model"]: r for r in rows}

        wait_until(lambda: set(catalog()) == {CONFIGURED, *DISCOVERED}, 30, "the central catalog has the list")
        m0 = catalog()["disc/m0"]
        assert (m0["input_usd_per_mtok"], m0["output_usd_per_mtok"]) == (2.5, 10.0)

        def model(name: str) -> dict[str, Any] | None:
            found = [e for e in _get(api, "/v1/models")["models"] if (e["router"], e["id"]) == ("sim", name)]
            return found[0] if found else None

        # The pushed results make the models published; the catalog says they are listed. Each
        # series has its own phase in the 2 s interval, so each is waited for: one published
        # says nothing about when another's first probe arrives.
        for name in DISCOVERED:
            wait_until(lambda name=name: model(name) is not None, 30, f"the central API publishes {name}")
            assert model(name)["retired"] is False  # type: ignore[index]

        # The simulator stops listing disc/m2: retired in the central catalog and API.
        _control(simulator, "DELETE", "/v1/simulator/models/disc/m2")
        wait_until(lambda: catalog()["disc/m2"]["retired_at"] is not None, 30, "disc/m2 is retired centrally")
        wait_until(lambda: (e := model("disc/m2")) and e["retired"], 30, "the central API marks disc/m2 retired")
        assert catalog()[CONFIGURED]["retired_at"] is None and catalog()["disc/m0"]["retired_at"] is None
        assert model("disc/m0")["retired"] is False  # type: ignore[index]

        # The listed price is the central cost figures' price.
        def m0_cost() -> dict[str, Any] | None:
            entries = [e for e in _get(api, "/v1/costs")["models"] if e["model"] == "disc/m0"]
            return entries[0] if entries and entries[0]["price"] else None

        wait_until(lambda: m0_cost() is not None, 30, "/v1/costs prices disc/m0")
        entry = m0_cost()
        assert entry is not None
        assert entry["price"]["source"] == "listing"
        assert (entry["price"]["input_usd_per_mtok"], entry["price"]["output_usd_per_mtok"]) == (2.5, 10.0)

        # The prober's /metrics counts the reads the central catalog recorded, and no failure.
        with urllib.request.urlopen(prober_metrics, timeout=10) as resp:
            text = resp.read().decode()
        recorded = re.search(
            r'routewatch_discovery_catalog_pushes_total\{outcome="recorded",router="sim"\} (\S+)', text
        )
        assert recorded and float(recorded.group(1)) >= 2, text[-2000:]
        assert 'routewatch_discovery_catalog_pushes_total{outcome="failed"' not in text
    finally:
        codes = []
        if prober is not None:
            codes.append(prober.stop(signal.SIGTERM, timeout=60))
        codes.append(central.stop(signal.SIGTERM, timeout=60))
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert codes == [0] * len(codes), logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    assert EU_TOKEN not in logs and EU_TOKEN[:12] not in logs and EU_TOKEN[-12:] not in logs
    assert "not recorded by the central catalog" not in logs, logs[-3000:]
