"""Model discovery end to end: ``routewatch run --workers 2`` (real prober processes, the real
scheduler, the test database) against the simulator in its own process, whose model list a test
changes at run time and whose log of served requests and list pages is the ground truth.

One run goes through a router's life: its paged list is read and filtered, the new models are
probed (their first probes spread over the interval), prices come from the list, a model leaves
the list (its probes stop, it is retired in the API and on the status page with its history) and
comes back, and a malformed list keeps the models found before.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile.harness import ROUTEWATCH, Process, clean_env, fetch_rows, strict_json

from routewatch.simulator.process import SimulatorProcess

pytestmark = pytest.mark.system

INTERVAL_S = 4.0
REFRESH_S = 1.0
DISCOVERED = [f"disc/m{i}" for i in range(8)]
LEFT_OUT = ["disc/skip-x", "other/y"]  # excluded by a glob; not included by any
CONFIGURED = "fixed/one"
PAGE_SIZE = 3  # 11 models: 4 pages
KEY = f"sk-DISCOVERYSENTINEL{secrets.token_hex(12)}"
ADMIN_TOKEN = secrets.token_hex(16)


def _profile(model: str) -> dict[str, Any]:
    return {"model": model, "provider": "P", "ttft_median_ms": 20, "tokens_per_s": 400, "output_tokens": 4}


def _config() -> dict[str, Any]:
    return {
        "region": "disc",
        "routers": [
            {
                "name": "sim",
                "base_url": "simulator",  # served by the simulator process (ROUTEWATCH_ROUTER_URL)
                "api_key_env": "ROUTEWATCH_API_KEY",
                "models": [CONFIGURED],
                "prices": {"disc/m1": {"input": 7, "output": 8}},
                "discover": {"include": ["disc/*"], "exclude": ["disc/skip-*"], "refresh": f"{REFRESH_S:g}s"},
            }
        ],
        "prompts": [
            {"name": "p0", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "min_output_tokens": 1}
        ],
        "schedule": {"interval": f"{INTERVAL_S:g}s", "jitter": "0s"},
        "timeouts": {"connect": "2s", "headers": "2s", "first_token": "2s", "idle": "2s", "total": "3s"},
        "aggregator": {"refresh": "0.5s", "windows": ["1h"]},
    }


class Stack:
    """The simulator process and ``routewatch run`` on the test database."""

    def __init__(self, dsn: str, work: Path) -> None:
        self.dsn = dsn
        profiles = work / "profiles.yaml"
        profiles.write_text(yaml.safe_dump([_profile(m) for m in [CONFIGURED, *DISCOVERED, *LEFT_OUT]]))
        self.sim = SimulatorProcess(profiles)
        self.sim.start()
        self.config = config = work / "probes.yaml"
        config.write_text(yaml.safe_dump(_config(), sort_keys=False))
        self._argv = [*ROUTEWATCH, "run", "--config", str(config), "--data-dir", str(work / "data"), "--port", "0"]
        self._argv += ["--workers", "2"]
        self._env = clean_env(
            ROUTEWATCH_DATABASE_URL=dsn,
            ROUTEWATCH_ROUTER_URL=self.sim.base_url,
            ROUTEWATCH_API_KEY=KEY,
            ROUTEWATCH_ADMIN_TOKEN=ADMIN_TOKEN,
        )
        self._work = work
        self.control(
            "PUT", "/v1/simulator/listing", {"page_size": PAGE_SIZE, "prices": {"disc/m0": ["0.0000025", "0.00001"]}}
        )
        self.outputs: list[str] = []
        self._start()

    def _start(self) -> None:
        self.run = Process(self._argv, self._env, self._work / f"run{len(self.outputs)}.log")
        self.api = self.run.wait_for(r"API:\s+(http://\S+)", timeout=90).group(1)

    def reload(self, config: dict[str, Any]) -> Any:
        """Write ``config`` to the file and ask ``routewatch run`` to re-read it (its workers do, on SIGHUP)."""
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        request = urllib.request.Request(self.api + "/v1/config/reload", method="POST", headers=auth)
        with urllib.request.urlopen(request, timeout=60) as resp:
            return strict_json(resp.read())

    def restart(self) -> None:
        """Stop ``routewatch run`` cleanly and start it again on the same database."""
        code = self.run.stop(signal.SIGTERM, timeout=90)
        self.outputs.append(self.run.output())
        assert code == 0, self.outputs[-1][-3000:]
        self._start()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.sim.root + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def served(self) -> list[dict[str, Any]]:
        """Every chat request the simulator answered: model and arrival (perf_counter_ns, this machine's)."""
        with urllib.request.urlopen(f"{self.sim.root}/v1/ground-truth", timeout=60) as resp:
            records: list[dict[str, Any]] = strict_json(resp.read())
        return records

    def requests_of(self, model: str, after_ns: int = 0) -> list[int]:
        return sorted(r["received_ns"] for r in self.served() if r["model"] == model and r["received_ns"] > after_ns)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.api + path, timeout=30) as resp:
            body = resp.read()
        return strict_json(body) if path != "/status" else body.decode()

    def scheduled(self) -> int | None:
        """Series with a job in either worker (run's /metrics); None unless both workers answered its scrape."""
        metrics = _text(self.api + "/metrics")
        found = re.findall(r'routewatch_probe_series_scheduled\{[^}]*worker="(\d+)"[^}]*\} ([0-9.e+]+)', metrics)
        by_worker = {worker: float(n) for worker, n in found}
        return int(sum(by_worker.values())) if len(by_worker) == 2 else None

    def listed(self, model: str) -> dict[str, Any] | None:
        for entry in self.get("/v1/models")["models"]:
            if (entry["router"], entry["id"]) == ("sim", model):
                return dict(entry)
        return None

    def catalog(self, model: str) -> dict[str, Any] | None:
        rows = fetch_rows(self.dsn, "SELECT * FROM model_catalog WHERE router = 'sim' AND model = $1", model)
        return rows[0] if rows else None

    def close(self) -> tuple[int, str]:
        code = self.run.stop(signal.SIGTERM, timeout=90)
        self.sim.stop()
        return code, "\n".join([*self.outputs, self.run.output()])


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


@pytest.fixture
def stack(db_dsn: str) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="routewatch-discovery-"))
    made = Stack(db_dsn, work)
    try:
        yield made
    finally:
        code, output = made.close()
        shutil.rmtree(work, ignore_errors=True)
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert KEY not in output and KEY[:16] not in output and KEY[-12:] not in output


def test_discovered_models_are_probed_retired_brought_back_and_survive_a_malformed_list(stack: Stack) -> None:
    # 1. The paged list is read (each prober reads it), filtered, and every discovered model probed.
    firsts = wait_until(
        "every discovered model has been probed",
        lambda: all(stack.requests_of(m) for m in DISCOVERED) and {m: stack.requests_of(m)[0] for m in DISCOVERED},
    )
    wait_until("the configured model has been probed", lambda: stack.requests_of(CONFIGURED))
    served = {r["model"] for r in stack.served()}
    assert not served & set(LEFT_OUT), "an excluded or not included model was probed"
    pages = stack.control("GET", "/v1/simulator/listing")["served"]
    ids = [CONFIGURED, *DISCOVERED, *LEFT_OUT]  # the simulator lists them in this order
    cursors = [None, ids[2], ids[5], ids[8]]
    for cursor in cursors:
        assert sum(1 for p in pages if p["after"] == cursor) >= 2, f"page after {cursor} not read by both probers"
    assert all(p["bearer"] for p in pages), "a list page was asked for without the router's key"

    # Spread, not a burst: the first probes of the 8 new models fall at their own phases in the interval.
    times = sorted(ns / 1e9 for ns in firsts.values())
    spread = times[-1] - times[0]
    in_one_instant = max(sum(1 for t in times if s <= t < s + 0.1) for s in times)
    print(
        f"\nfirst probes of {len(times)} discovered models spread over {spread:.2f} s; at most {in_one_instant} in 0.1 s"
    )
    assert spread >= INTERVAL_S / 4 and in_one_instant <= 3, times

    # 2. Prices: the list's where it publishes one, else probes.yaml's.
    row = wait_until("disc/m0 is in the catalog", lambda: stack.catalog("disc/m0"))
    assert (row["input_usd_per_mtok"], row["output_usd_per_mtok"]) == (2.5, 10.0)
    assert stack.catalog("disc/m1")["input_usd_per_mtok"] is None

    def route_price(model: str) -> float | None:
        for m in stack.get("/status.json")["models"]:
            if m["id"] == model:
                return m["routers"][0]["input_price_per_mtok"] if m["routers"] else None
        return None

    wait_until("the status page shows the listed price", lambda: route_price("disc/m0") == 2.5)
    wait_until("the status page shows the configured price", lambda: route_price("disc/m1") == 7)

    # 3. A model leaves the list: retired, no longer probed, its history kept in the API.
    gone = "disc/m7"
    stack.control("DELETE", f"/v1/simulator/models/{gone}")
    wait_until("disc/m7 is retired in the catalog", lambda: (stack.catalog(gone) or {}).get("retired_at"))
    # The prober that retired it may not be the one probing it: wait until neither schedules it.
    wait_until("no worker schedules disc/m7", lambda: stack.scheduled() == 1 + len(DISCOVERED) - 1)
    mark = time.perf_counter_ns()
    time.sleep(2 * INTERVAL_S)
    assert stack.requests_of(gone, after_ns=mark) == []
    assert all(stack.requests_of(m, after_ns=mark) for m in DISCOVERED[:-1]), "the models still listed stopped"
    entry = wait_until("the API marks disc/m7 retired", lambda: (e := stack.listed(gone)) and e["retired"] and e)
    assert entry["retired_at"] is not None and entry["stats"]["samples"]["attempted"] >= 1
    shown = {k: entry[k] for k in ("id", "router", "state", "retired", "retired_at")}
    print(f"/v1/models entry of the retired model: {json.dumps(shown)}, samples {entry['stats']['samples']}")
    assert stack.listed("disc/m0")["retired"] is False and stack.listed(CONFIGURED)["retired"] is False
    page = wait_until(
        "the status page marks disc/m7 retired", lambda: (p := stack.get("/status")) and _retired_on(p, gone) and p
    )
    assert not _retired_on(page, "disc/m0")
    assert any(m["id"] == gone and m["retired"] for m in stack.get("/status.json")["models"])

    # 4. It comes back: un-retired and probed again.
    stack.control("PUT", "/v1/simulator/models", _profile(gone))
    back = time.perf_counter_ns()
    wait_until("disc/m7 is listed again", lambda: (e := stack.listed(gone)) and e["retired"] is False)
    assert (stack.catalog(gone) or {}).get("retired_at") is None
    wait_until("disc/m7 is probed again", lambda: stack.requests_of(gone, after_ns=back), timeout=2 * INTERVAL_S + 5)

    # 5. A malformed list keeps the models found before: the probes go on, the failure is counted.
    stack.control("PUT", "/v1/simulator/listing", {"raw_body": '{"object": "list", "data": "garbage"'})
    time.sleep(2 * REFRESH_S + 0.5)
    mark = time.perf_counter_ns()
    time.sleep(INTERVAL_S + 1)
    assert all(stack.requests_of(m, after_ns=mark) for m in DISCOVERED), "a malformed list stopped probes"
    metrics = _text(stack.api + "/metrics")
    failed = re.findall(r'routewatch_discovery_listings_total\{[^}]*outcome="failed"[^}]*\} (\d+)', metrics)
    assert failed and sum(int(n) for n in failed) >= 2, metrics[-2000:]
    assert "model list of router sim not used: the model list is not JSON" in stack.run.output()
    assert all((stack.catalog(m) or {}).get("retired_at") is None for m in DISCOVERED)


def _retired_on(page: str, model: str) -> bool:
    """Whether the status page's entry for ``model`` carries the retired mark."""
    for item in page.split('<li class="model">')[1:]:
        if re.search(rf'class="name"[^>]*>{re.escape(model)}<', item):  # the name links to the model's page
            return 'class="retired"' in item.split("</div>", 1)[0]
    return False


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def test_a_restart_while_the_list_is_malformed_keeps_probing_the_models_found_before(stack: Stack) -> None:
    wait_until("every discovered model has been probed", lambda: all(stack.requests_of(m) for m in DISCOVERED))
    stack.control("PUT", "/v1/simulator/listing", {"raw_body": "<html>502 Bad Gateway</html>"})
    stack.restart()
    restarted = time.perf_counter_ns()
    # From the catalog, before (and without) any good list.
    wait_until(
        "every discovered model is probed after the restart",
        lambda: all(stack.requests_of(m, after_ns=restarted) for m in DISCOVERED),
        timeout=2 * INTERVAL_S + 10,
    )
    assert "model list of router sim not used: the model list is not JSON" in stack.run.output()
    assert not any(stack.requests_of(m, after_ns=restarted) for m in LEFT_OUT)

    # A reload with narrower globs: the models they leave out stop being probed (the list is fine again).
    stack.control("PUT", "/v1/simulator/listing", {"raw_body": None})
    narrower = _config()
    narrower["routers"][0]["discover"]["exclude"] = ["disc/skip-*", "disc/m[0-3]"]
    answer = stack.reload(narrower)
    assert answer["applied"] and "routers[].discover: changed" in answer["changes"], answer
    wait_until(
        "both workers applied the reload",
        lambda: len(re.findall(r"worker-\d INFO routewatch: config reload of", stack.run.output())) >= 2,
    )
    # The reload re-plans with the models found so far; the excluded ones go at the list read it asks for.
    wait_until("no worker schedules the excluded models", lambda: stack.scheduled() == 1 + len(DISCOVERED[4:]))
    mark = time.perf_counter_ns()
    time.sleep(INTERVAL_S + 1)
    assert not any(stack.requests_of(m, after_ns=mark) for m in DISCOVERED[:4]), "excluded models still probed"
    assert all(stack.requests_of(m, after_ns=mark) for m in DISCOVERED[4:]), "included models stopped"
