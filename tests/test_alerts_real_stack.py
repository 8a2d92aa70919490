"""The shipped rules on the real stack: routewatch run on the simulator, Prometheus, Alertmanager, a webhook.

The rules come from the same generator as deploy/'s, for this test's
probes.yaml (one probe a second) and with the burn windows divided by 240
(the 1h/5m page becomes 15s/6s: 1.25 s stretched to hold enough probes for
its guards), so that what they promise fits in a test.
One model goes down: RoutewatchModelDown must reach the webhook within the
time the plan promises, with the model's router, region, severity and
drill-down link, the fast burn must page too, the healthy model must stay
quiet, and both must resolve after recovery. Then every PromQL expression
of the recording rules and of every panel in dashboards/*.json is evaluated
against that Prometheus and must return series.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from hostile.harness import free_port
from prometheus_tools import tool
from promql_panels import dashboard_files, load, panel_queries, substitute

from routewatch.alerting import RULES_FILE, Deployment, plan_alerts, render_files
from routewatch.alerting.rules import recordings
from routewatch.config import parse_config
from routewatch.simulator import ModelProfile
from routewatch.simulator.server import create_app

pytestmark = [pytest.mark.system, pytest.mark.alone]

REPO = Path(__file__).resolve().parent.parent
UP, DOWN = "test/up", "test/down"
PROFILES = tuple(
    ModelProfile(model=m, provider="P", ttft_median_ms=30, ttft_sigma=0.1, tokens_per_s=400, output_tokens=20)
    for m in (UP, DOWN)
)
GRAFANA = "http://grafana.test"
SCRAPE_S = 1.0


# max_loop_lag is loose: on a shared machine a probe flagged overloaded turns the model's state to
# unknown (prober trouble, by design), which resolves and re-arms RoutewatchModelDown; the alerting
# pipeline is what is judged here, not the prober's precision.
def _config(base_url: str, port: int) -> str:
    return f"""
region: test
routers:
  - name: sim
    base_url: {base_url}
    models: [{UP}, {DOWN}]
prompts:
  - name: short
    messages: [{{role: user, content: "Count from 1 to 20."}}]
    max_tokens: 64
    min_output_tokens: 8
schedule: {{interval: 1s, jitter: 200ms, concurrency: 8, max_loop_lag: 1s}}
timeouts: {{connect: 2s, headers: 3s, first_token: 3s, idle: 2s, total: 5s}}
slo: {{down_after: 3, up_after: 2, window: 10s, min_samples: 3}}
api: {{host: 127.0.0.1, port: {port}}}
aggregator: {{refresh: 500ms, windows: [1h], metrics: {{breakdowns: [provider, region]}}}}
"""


class Receiver:
    """A loopback webhook receiver for Alertmanager: every alert it is sent, with when it arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.monotonic()
        for alert in body["alerts"]:
            self.received.append((now, alert))
        return web.Response(text="ok")

    def first(
        self, name: str, model: str | None, status: str, after: float = 0.0
    ) -> tuple[float, dict[str, Any]] | None:
        for at, alert in self.received:
            labels = alert["labels"]
            if (
                at >= after
                and labels["alertname"] == name
                and alert["status"] == status
                and labels.get("model") == model
            ):
                return at, alert
        return None


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:.1f} s")


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready:\n{log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _switchable_simulator(down: set[str]) -> web.Application:
    """The simulator, answering 503 for every model in ``down`` (the test's fault switch)."""
    app = create_app(PROFILES, seed=7)

    @web.middleware
    async def switch(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.endswith("/chat/completions") and (await request.json()).get("model") in down:
            return web.json_response({"error": {"message": "model down (test)", "type": "server_error"}}, status=503)
        return await handler(request)

    app.middlewares.append(switch)
    return app


async def _query(session: aiohttp.ClientSession, prometheus: str, expr: str) -> list[dict[str, Any]]:
    async with session.get(f"{prometheus}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _variable_values(
    session: aiohttp.ClientSession, prometheus: str, dashboard: dict[str, Any]
) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name, kind = var["name"], var.get("type")
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if kind == "query":
            # label_values(…, label) against Prometheus; a variable filled by SQL names a column that is
            # also a label of routewatch's metrics (router, model, provider, region, window).
            found_label = re.search(r"label_values\((?:.*,\s*)?(\w+)\s*\)", query)
            label = found_label.group(1) if found_label else name
            async with session.get(f"{prometheus}/api/v1/label/{label}/values") as resp:
                values[name] = (await resp.json())["data"] or ["none"]
        elif kind in ("custom", "interval", "constant", "textbox"):
            current = var.get("current", {}).get("value")
            chosen = current if isinstance(current, list) else [current] if current else query.split(",")[:1]
            values[name] = [str(v).strip() for v in chosen if str(v) not in ("$__all", "All")] or ["1m"]
        if name in values and not (var.get("multi") or var.get("includeAll")):
            values[name] = values[name][:1]  # a single-value variable: Grafana sends the one selected
    return values


@pytest.mark.timeout(240)
async def test_a_model_going_down_pages_in_time_with_its_labels_and_link_and_resolves(
    db_dsn: str, tmp_path: Path
) -> None:
    down: set[str] = set()
    receiver = Receiver()
    hook = web.Application()
    hook.router.add_post("/hook", receiver.handle)
    api_port, prom_port, am_port = free_port(), free_port(), free_port()

    async with _serve(_switchable_simulator(down)) as sim_url, _serve(hook) as hook_url:
        config_text = _config(sim_url + "/v1", api_port)
        (tmp_path / "probes.yaml").write_text(config_text)
        deployment = Deployment(
            grafana_url=GRAFANA, scale=240, scrape_interval_s=SCRAPE_S, evaluation_interval_s=SCRAPE_S, group_wait_s=1
        )
        plan = plan_alerts(parse_config(config_text, "probes.yaml"), deployment)
        rules = render_files(plan)[RULES_FILE]
        (tmp_path / "rules.yml").write_text(rules)
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yml")],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                    "scrape_configs": [
                        {"job_name": "routewatch", "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}
                    ],
                }
            )
        )
        (tmp_path / "alertmanager.yml").write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "hook",
                        "group_by": ["alertname", "model"],
                        "group_wait": "1s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [
                        {"name": "hook", "webhook_configs": [{"url": f"{hook_url}/hook", "send_resolved": True}]}
                    ],
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env["ROUTEWATCH_DATABASE_URL"] = db_dsn
        run_args = [sys.executable, "-m", "routewatch.cli", "run", "--config", str(tmp_path / "probes.yaml")]
        run_args += ["--data-dir", str(tmp_path / "data")]
        am_args = [
            tool("alertmanager"),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ]
        prom_args = [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--rules.alert.resend-delay=1s",
        ]
        prometheus = f"http://127.0.0.1:{prom_port}"
        with (
            _process(run_args, tmp_path / "run.log", env) as run,
            _process(am_args, tmp_path / "am.log") as am,
            contextlib.ExitStack() as later,
        ):
            async with aiohttp.ClientSession() as session:
                await _ready(session, f"http://127.0.0.1:{api_port}/readyz", run, tmp_path / "run.log")
                await _ready(session, f"http://127.0.0.1:{am_port}/-/ready", am, tmp_path / "am.log")
                # Prometheus starts once routewatch answers: started beside it, it scraped a port nobody
                # listened on yet (seconds, on a loaded machine) and RoutewatchScrapeFailing rightly paged.
                prom = later.enter_context(_process(prom_args, tmp_path / "prom.log"))
                await _ready(session, f"{prometheus}/-/ready", prom, tmp_path / "prom.log")

                async def scraped() -> bool:
                    result = await _query(session, prometheus, "routewatch:route_probes:increase15s > 8")
                    return len(result) == 2

                deadline = time.monotonic() + 60
                while not await scraped():
                    assert time.monotonic() < deadline, "Prometheus never saw 8 probes of each model in 15 s"
                    await asyncio.sleep(0.5)

                # The model goes down now: its first failed probe is no earlier than this.
                down.add(DOWN)
                went_down = time.monotonic()
                promise = plan.model_down_promise_s()
                at, alert = await _until(
                    lambda: receiver.first("RoutewatchModelDown", DOWN, "firing"), promise + 30, "page for the model"
                )
                took = at - went_down
                print(f"RoutewatchModelDown: {took:.1f} s after the outage began (promised {promise:.1f} s)")
                assert took <= promise, (
                    f"RoutewatchModelDown arrived {took:.1f} s after the outage, promised {promise:.1f} s"
                )
                assert alert["labels"] == {
                    "alertname": "RoutewatchModelDown",
                    "severity": "page",
                    "router": "sim",
                    "model": DOWN,
                    "region": "test",
                }
                link = f"{GRAFANA}/d/routewatch-model?var-router=sim&var-model=test%2Fdown&var-region=test"
                assert alert["annotations"]["dashboard_url"] == link
                assert alert["annotations"]["summary"] == "test/down via sim (test) is down"

                # The fast burn (1h/5m, here 15s/6s) pages too once 72% of the long window failed.
                burn = await _until(
                    lambda: receiver.first("RoutewatchErrorBudgetBurn1h", DOWN, "firing"), 45, "fast-burn page"
                )
                assert burn[1]["labels"]["severity"] == "page" and burn[1]["labels"]["router"] == "sim"

                # Recover while both pages are firing, as Prometheus and the receiver last saw them: the
                # resolve promises are about firing pages. An unknown spell meanwhile (a prober late on a
                # loaded machine) resolves them and re-arms them; recovering before they fire again would
                # leave nothing to resolve.
                async def paging(name: str) -> bool:
                    sent = [a["status"] for _, a in receiver.received if a["labels"]["alertname"] == name]
                    firing = f'ALERTS{{alertname="{name}",alertstate="firing",model="{DOWN}"}}'
                    return bool(sent) and sent[-1] == "firing" and bool(await _query(session, prometheus, firing))

                deadline = time.monotonic() + promise + 30
                while not (await paging("RoutewatchModelDown") and await paging("RoutewatchErrorBudgetBurn1h")):
                    assert time.monotonic() < deadline, "the pages did not fire again after a pause"
                    await asyncio.sleep(0.1)
                down.clear()
                recovered = time.monotonic()
                resolve_promise = plan.model_down_resolve_s()
                at, _ = await _until(
                    lambda: receiver.first("RoutewatchModelDown", DOWN, "resolved", after=recovered),
                    resolve_promise + 30,
                    "resolved model-down",
                )
                print(f"resolved: {at - recovered:.1f} s after recovery (promised {resolve_promise:.1f} s)")
                assert at - recovered <= resolve_promise, (
                    f"resolved after {at - recovered:.1f} s, promised {resolve_promise:.1f} s"
                )
                await _until(
                    lambda: receiver.first("RoutewatchErrorBudgetBurn1h", DOWN, "resolved", after=recovered),
                    30,
                    "resolved fast burn",
                )

                # Nothing about the healthy model, nor about routewatch itself, ever fired.
                stray = {(a["labels"]["alertname"], a["labels"].get("model")) for _, a in receiver.received}
                assert stray <= {("RoutewatchModelDown", DOWN), ("RoutewatchErrorBudgetBurn1h", DOWN)}, stray

                # Every recording rule's expression, and every dashboard panel's, returns series here.
                empty = []
                for rule in recordings(plan):
                    if not await _query(session, prometheus, rule.expr):
                        empty.append(("recording rule " + rule.record, rule.expr))
                panels = 0
                for path in dashboard_files(REPO / "dashboards"):
                    dashboard = load(path)
                    values = await _variable_values(session, prometheus, dashboard)
                    for title, expr in panel_queries(dashboard):
                        panels += 1
                        if not await _query(session, prometheus, substitute(expr, values)):
                            empty.append((f"{path.name}: {title}", substitute(expr, values)))
                # A multi-value variable, expanded as Grafana does (regex metacharacters escaped), parses and matches
                # (summed over the prober workers, which label their samples with `worker`).
                chosen = {"model": [UP, DOWN, "no.such(model)"]}
                assert (
                    len(
                        await _query(
                            session,
                            prometheus,
                            substitute('sum by (model) (routewatch_route_probes_total{model=~"$model"})', chosen),
                        )
                    )
                    == 2
                )
                assert not empty, "expressions with no series:\n" + "\n".join(f"{w}: {e}" for w, e in empty)
                print(f"evaluated {len(recordings(plan))} recording rules and {panels} dashboard panel queries")
