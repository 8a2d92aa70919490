"""The hostile sweep's scenario: the real ``routewatch run`` and ``once`` against the hostile router.

1. ``run`` probes every behaviour through two routers, one with an ``sk-`` key
   and one with a key without that prefix, every 0.5 s for PROBE_S seconds;
   the data directory is scanned for the keys every second while it runs (the
   spool drops confirmed segments), the control models' stored rows are
   counted every 2 s, every public API read is fetched, then SIGTERM.
2. ``once`` with the same configuration, 80 columns wide.
3. ``run`` again on the same database and data directory with a clean
   configuration (controls, plus two hostile models for the admin probe):
   it must store new probes; the admin probe is asked for there.
4. ``pg_dump`` of the database and a last scan of the data directory.

Nothing here asserts: every observation is recorded in :class:`Scenario` and
the tests judge it, so one failure does not hide the others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factories import LOOPBACK_API, config_text, prompt_entry, router_entry

from .harness import (
    ROUTEWATCH,
    Answer,
    LeakFinder,
    Process,
    Secrets,
    clean_env,
    dump_database,
    fetch_rows,
    fetch_value,
    http,
    scan_tree,
    start_router,
    sweep_api,
    sweep_paths,
    table_columns,
)
from .router import BEHAVIOURS, CONTROLS, model_id

PROBE_S = 14.0  # seconds of probing in the first run
INTERVAL = "500ms"
WINDOWS = ("1h", "24h", "7d")
ROUTER_SK = "hostile-sk"
ROUTER_BARE = "hostile-bare"
ENV_SK, ENV_BARE = "RW_HOSTILE_SK_KEY", "RW_HOSTILE_BARE_KEY"
# The second router repeats the behaviours that put router text somewhere,
# with the key that no "sk-" pattern can recognise.
BARE_BEHAVIOURS = (
    "echo_headers",
    "echo_body",
    "echo_error_straddle",
    "provider_per_response",
    "markup_escapes",
    "http_299",
    "negative_usage",
    "retry_after_nan",
)
ADMIN_PROBED = ("retry_after_nan", "echo_headers")
# A triage aid, not for CI: leave these behaviours out of the configuration,
# e.g. the poison values that stop today's writer, to see what else leaks.
ENV_EXCLUDE = "ROUTEWATCH_HOSTILE_EXCLUDE"

PROMPT = prompt_entry(content="Count from 1 to 10 in words.", max_tokens=32, min_output_tokens=4)
# max_loop_lag is loose: on a shared machine a lagging prober would flag probes
# overloaded and turn every model's state to unknown, which is not what is judged here.
SETTINGS: dict[str, Any] = {
    "schedule": {"interval": INTERVAL, "jitter": "100ms", "concurrency": 16, "max_loop_lag": "1s"},
    "timeouts": {"connect": "1s", "headers": "2s", "first_token": "2s", "idle": "2s", "total": "3s"},
    "slo": {"down_after": 3, "up_after": 2, "min_samples": 5},
    "api": LOOPBACK_API,
    "aggregator": {"refresh": "500ms", "windows": list(WINDOWS), "snapshot_every": "1s"},
}


def excluded() -> set[str]:
    """Behaviours left out through ROUTEWATCH_HOSTILE_EXCLUDE."""
    return {name.strip() for name in os.environ.get(ENV_EXCLUDE, "").split(",") if name.strip()}


def plan_series(behaviours_sk: list[str], behaviours_bare: list[str]) -> list[tuple[str, str]]:
    """(router, model) of every series: the controls and the given behaviours on each router."""
    out = [(ROUTER_SK, m) for m in (*CONTROLS, *map(model_id, behaviours_sk))]
    out += [(ROUTER_BARE, m) for m in (*CONTROLS, *map(model_id, behaviours_bare))]
    return out


def probes_yaml(router_url: str, series: list[tuple[str, str]]) -> str:
    """A probes.yaml for ``series`` on the two hostile routers."""
    routers = [
        router_entry(name, router_url, models, api_key_env=env)
        for name, env in ((ROUTER_SK, ENV_SK), (ROUTER_BARE, ENV_BARE))
        if (models := [m for r, m in series if r == name])
    ]
    return config_text(routers, [PROMPT], region="hostile-test", **SETTINGS)


@dataclass
class RunRecord:
    """One ``routewatch run``: what it printed and how it ended."""

    output: str = ""
    exit_code: int | None = None
    api: str | None = None
    started: datetime | None = None  # wall clock once the banner was printed
    failure: str | None = None  # why the scenario could not go on with this run
    memory_kb: dict[str, int] = field(default_factory=dict)  # VmRSS/VmHWM before SIGTERM
    rss_at_banner_kb: int | None = None


@dataclass
class Scenario:
    """Everything the sweep observed; the tests judge it."""

    keys: Secrets
    finder: LeakFinder
    series: list[tuple[str, str]]
    run1: RunRecord = field(default_factory=RunRecord)
    run2: RunRecord = field(default_factory=RunRecord)
    control_counts: list[tuple[float, int]] = field(default_factory=list)  # (seconds into run 1, rows)
    api: dict[str, Answer] = field(default_factory=dict)
    admin: dict[str, Answer] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)  # by "router|model", at the end of run 1
    rows: list[dict[str, Any]] = field(default_factory=list)  # probe_results after run 1
    rejected: list[str] = field(default_factory=list)  # lines of the rejected file(s) after run 1
    rows_after_restart: int | None = None
    once_code: int | None = None
    once_stdout: bytes = b""
    once_stderr: bytes = b""
    dump_source: str = ""
    data_files: list[str] = field(default_factory=list)

    def rows_of(self, router: str | None, model: str) -> list[dict[str, Any]]:
        """Stored rows of one series (any router when ``router`` is None)."""
        return [r for r in self.rows if r["model"] == model and (router is None or r["router"] == router)]

    def rejected_of(self, router: str, model: str) -> int:
        """How many rejected-file lines are results of one series."""
        count = 0
        for line in self.rejected:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            result = record.get("result", record) if isinstance(record, dict) else {}
            if isinstance(result, dict) and result.get("router") == router and result.get("model") == model:
                count += 1
        return count

    def api_json(self, path: str) -> Any:
        """A swept JSON body, parsed."""
        return json.loads(self.api[path].body)


class Sweep:
    """Runs the scenario in a work directory against one database."""

    def __init__(self, dsn: str, work: Path) -> None:
        self.dsn = dsn
        self.work = work
        self.keys = Secrets()
        self.finder = LeakFinder(self.keys)
        skip = excluded()
        self.sk_behaviours = [b for b in BEHAVIOURS if b not in skip]
        self.bare_behaviours = [b for b in BARE_BEHAVIOURS if b not in skip]
        self.series = plan_series(self.sk_behaviours, self.bare_behaviours)
        # Under /tmp and world-traversable, as tests/test_cli_run.py's data_dir: ours alone to read.
        self.data_dir = Path(tempfile.mkdtemp(prefix="routewatch-hostile-"))
        self.data_dir.chmod(0o755)
        self.env = clean_env(
            **{
                ENV_SK: self.keys.sk_key,
                ENV_BARE: self.keys.bare_key,
                "ROUTEWATCH_ADMIN_TOKEN": self.keys.admin_token,
                "ROUTEWATCH_DATABASE_URL": dsn,
                "COLUMNS": "80",
            }
        )

    def run(self) -> Scenario:
        """The whole scenario; the router process and the data directory are gone afterwards."""
        scenario = Scenario(self.keys, self.finder, self.series)
        router, router_url = start_router(self.work / "router.log")
        try:
            self._first_run(scenario, router_url)
            self._once(scenario, router_url)
            self._restart(scenario, router_url)
            dump, scenario.dump_source = dump_database(self.dsn)
            self.finder.scan("database", scenario.dump_source, dump)
            scenario.data_files = scan_tree(self.finder, "data dir", self.data_dir)
        finally:
            router.stop()
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return scenario

    def _launch(self, name: str, config: str, record: RunRecord) -> Process | None:
        """Start ``routewatch run`` and wait for its banner; None (and the reason in ``record``) when it dies first."""
        path = self.work / f"{name}.yaml"
        path.write_text(config)
        proc = Process(
            ROUTEWATCH + ["run", "--config", str(path), "--data-dir", str(self.data_dir), "--port", "0"],
            self.env,
            self.work / f"{name}.log",
        )
        try:
            record.api = proc.wait_for(r"API:\s+(http://\S+)").group(1)
        except AssertionError as exc:
            record.failure = str(exc)
            self._finish(proc, record)
            return None
        record.started = datetime.now(UTC)
        record.rss_at_banner_kb = proc.memory_kb().get("VmRSS")
        return proc

    def _finish(self, proc: Process, record: RunRecord) -> None:
        record.memory_kb = proc.memory_kb()
        record.exit_code = proc.stop()
        record.output = proc.output()
        self.finder.scan("logs", proc.log_path.name, record.output.encode("utf-8", "surrogateescape"))
        scan_tree(self.finder, "data dir", self.data_dir)

    def _first_run(self, scenario: Scenario, router_url: str) -> None:
        record = scenario.run1
        proc = self._launch("run1", probes_yaml(router_url, self.series), record)
        if proc is None:
            return
        assert record.api is not None
        controls = list(CONTROLS)
        t0 = time.monotonic()
        next_count = t0
        while (elapsed := time.monotonic() - t0) < PROBE_S and proc.proc.poll() is None:
            scan_tree(self.finder, "data dir", self.data_dir)
            if time.monotonic() >= next_count:
                rows = fetch_value(self.dsn, "SELECT count(*) FROM probe_results WHERE model = ANY($1)", controls)
                scenario.control_counts.append((round(elapsed, 1), int(rows or 0)))
                next_count += 2.0
            time.sleep(1.0)
        scenario.api = sweep_api(record.api, sweep_paths(self.series, WINDOWS))
        for path, answer in scenario.api.items():
            self.finder.scan("api", path, answer.body)
        self._finish(proc, record)
        served = json.loads(http(router_url.removesuffix("/v1") + "/served").body)
        by_key = {self.keys.sk_key: ROUTER_SK, self.keys.bare_key: ROUTER_BARE}
        for name, count in served.items():
            model, sep, key = name.partition("|")
            if sep and key in by_key:
                scenario.served[f"{by_key[key]}|{model}"] = count
        scenario.rows = fetch_rows(self.dsn, "SELECT * FROM probe_results ORDER BY started_at")
        scenario.rejected = [
            line
            for path in self.data_dir.rglob("rejected*.jsonl")
            for line in path.read_text("utf-8", "replace").splitlines()
        ]

    def _once(self, scenario: Scenario, router_url: str) -> None:
        path = self.work / "once.yaml"
        path.write_text(probes_yaml(router_url, self.series))
        proc = subprocess.run(
            ROUTEWATCH + ["once", "--config", str(path)], env=self.env, capture_output=True, timeout=120, cwd=self.work
        )
        scenario.once_code, scenario.once_stdout, scenario.once_stderr = proc.returncode, proc.stdout, proc.stderr
        self.finder.scan("once output", "stdout", proc.stdout)
        self.finder.scan("once output", "stderr", proc.stderr)
        # A key wrapped over several lines of a table cell is whole again in its column.
        columns = table_columns(proc.stdout.decode("utf-8", "replace"))
        self.finder.scan("once output", "stdout, table cells joined", columns.encode())

    def _restart(self, scenario: Scenario, router_url: str) -> None:
        series = plan_series([b for b in ADMIN_PROBED if b in self.sk_behaviours], [])
        record = scenario.run2
        proc = self._launch("run2", probes_yaml(router_url, series), record)
        if proc is None:
            return
        assert record.api is not None and record.started is not None
        deadline = time.monotonic() + 12
        fresh = 0
        while time.monotonic() < deadline and proc.proc.poll() is None:
            fresh = int(
                fetch_value(self.dsn, "SELECT count(*) FROM probe_results WHERE started_at > $1", record.started) or 0
            )
            if fresh >= 4:
                break
            time.sleep(0.5)
        auth = {"Authorization": f"Bearer {self.keys.admin_token}"}
        for behaviour in ADMIN_PROBED:
            if behaviour in self.sk_behaviours:
                path = f"/v1/models/{model_id(behaviour)}/probe"
                answer = http(record.api + path, method="POST", headers=auth, timeout=30)
                scenario.admin[path] = answer
                self.finder.scan("api", f"POST {path}", answer.body)
        self._finish(proc, record)
        scenario.rows_after_restart = int(
            fetch_value(self.dsn, "SELECT count(*) FROM probe_results WHERE started_at > $1", record.started) or 0
        )
