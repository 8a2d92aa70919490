"""How large is the status page, how long does it take to render, and where do its bytes go?

The page is rendered from a generated :class:`~routewatch.aggregator.publish.status_view.StatusView`
(no database: the page's cost is its render and its bytes; its data is read
once per refresh, see bench/model_page.py): ``--models`` models, each on one
router with figures, 90 days of uptime; most operational, a few degraded,
down or unknown, days mostly up with scattered bad and unknown days, new
models with only some days of data, open and closed incidents. Measured per
size: the HTML's bytes, gzip bytes (level 6, as the server sends it), the
render time (median of the repeats), the gzip time, where the bytes go
(the uptime bars, the figure lines, the rest) and the ``/status.json`` body.

The same view is rendered by the page of the base commit too (``--base``,
default the commit the redesign started from): its ``status_page.py`` is
taken from a ``git archive`` of that commit into a temporary directory and
imported from there, so both are measured in the same run and the table
gives ratios.

With ``--browser``, each page is also loaded twice from a file into
headless chromium (tests/browser.py: scripts off, a 360 px phone viewport)
and its DOM node count, layout and style time and the time to its load
event and first screenshot are read from the DevTools Performance domain.

    python bench/status_page.py --quick   # 100 and 1,250 models, 3 repeats
    python bench/status_page.py           # 100, 1,250 and 2,500 models, 7 repeats
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import importlib.util
import io
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from machine import describe_machine, print_table, result_header, write_results

from routewatch.aggregator.model_state import UPTIME_DAYS, DayUptime, Incident, State
from routewatch.aggregator.publish import status_page
from routewatch.aggregator.publish.public_status import json_bytes
from routewatch.aggregator.publish.status_view import (
    DayBar,
    ModelRow,
    RouteFigures,
    StatusView,
    view_json,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "status_page.json"
DEFAULT_JSON_QUICK = HERE / "results" / "status_page-quick.json"
BASE = "d687723"  # the page before the redesign: 90 <li> bars per model, each with its title
PAGE_PATH = "routewatch/aggregator/publish/status_page.py"
NOW = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
DAY = 86400.0

# Where the bytes go: the uptime bars (old: <ol class="bars">, new: the <svg> strip), the figure lines.
PARTS = {
    "bars": re.compile(r'<ol class="bars".*?</ol>|<svg class="strip".*?</svg>', re.S),
    "figures": re.compile(r'<p class="figures">.*?</p>', re.S),
}


def model_id(i: int) -> str:
    """Generated model ``i``'s id, slash included like real ids."""
    return f"vendor{i % 7}/model-{i:04d}"


def _day(rng: random.Random) -> DayUptime:
    """One day: mostly all up, sometimes a few minutes degraded or down, rarely unknown."""
    roll = rng.random()
    if roll < 0.90:
        return DayUptime(operational=DAY)
    if roll < 0.95:
        bad = rng.uniform(60, 800)
        return DayUptime(operational=DAY - bad, degraded=bad)
    if roll < 0.98:
        bad = rng.uniform(600, 6000)
        return DayUptime(operational=DAY - bad, down=bad)
    return DayUptime(operational=DAY * 0.3, unknown=DAY * 0.7)


def make_view(n_models: int, seed: int = 15) -> StatusView:
    """A status view of ``n_models`` models: ~94% operational, the rest degraded, down or unknown."""
    rng = random.Random(seed)
    today = NOW.date()
    first = today - timedelta(days=UPTIME_DAYS - 1)
    rows = []
    for i in range(n_models):
        model = model_id(i)
        roll = rng.random()
        state = (
            State.DOWN
            if roll < 0.02
            else State.DEGRADED
            if roll < 0.05
            else State.UNKNOWN
            if roll < 0.06
            else State.OPERATIONAL
        )
        # A quarter of the models are newer than 90 days: no data before their first day.
        age = UPTIME_DAYS if rng.random() < 0.75 else rng.randint(1, UPTIME_DAYS - 1)
        days = tuple(
            DayBar(first + timedelta(days=d), _day(rng) if d >= UPTIME_DAYS - age else None) for d in range(UPTIME_DAYS)
        )
        reason = {
            State.DOWN: "4 consecutive failed probes",
            State.DEGRADED: "p50 TTFT 2,310 ms above the SLO's 1,500 ms",
            State.UNKNOWN: "no probe in the last 15m",
        }.get(state, "")
        ok = state is not State.DOWN
        route = RouteFigures(
            "orcarouter",
            rng.uniform(200, 2000) if ok else None,
            rng.uniform(20, 200) if ok else None,
            rng.choice((0.1, 0.15, 2.5, None)),
            rng.choice((0.0, 0.0, 0.0012, 0.02)) if ok else 1.0,
            rng.uniform(200, 9000) if ok and i % 5 == 0 else None,
        )
        rows.append(ModelRow(model, state, NOW - timedelta(hours=rng.randint(1, 500)), reason, (route,), days))
    bad = [r.model for r in rows if r.state in (State.DOWN, State.DEGRADED)]
    open_ = tuple(
        Incident(100 + k, NOW - timedelta(minutes=30 + k), None, State.DOWN, frozenset(bad[k::4]), False)
        for k in range(min(4, len(bad)))
    )
    recent = tuple(
        Incident(
            k + 1,
            NOW - timedelta(days=k + 1),
            NOW - timedelta(days=k + 1) + timedelta(minutes=45),
            State.DEGRADED,
            frozenset(model_id(rng.randrange(n_models)) for _ in range(3)),
            k == 3,
        )
        for k in range(10)
    )
    found = {r.state for r in rows}
    overall = next((s for s in (State.DOWN, State.DEGRADED, State.UNKNOWN) if s in found), State.OPERATIONAL)
    return StatusView(NOW, NOW, "7d", overall, tuple(rows), open_, recent, tier="100")


def load_base_page(base: str, where: Path) -> ModuleType:
    """``status_page.py`` as it was at ``base``, extracted with ``git archive`` into ``where`` and imported."""
    archive = subprocess.run(["git", "archive", base, PAGE_PATH], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    spec = importlib.util.spec_from_file_location("status_page_base", where / PAGE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(render: Callable[[StatusView], str], view: StatusView, repeats: int) -> dict[str, Any]:
    """Bytes, gzip bytes, render and gzip time (medians) and the bytes of each part of one page."""
    times, gzip_times = [], []
    page = ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        page = render(view)
        body = page.encode()
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        zipped = gzip.compress(body, compresslevel=6, mtime=0)
        gzip_times.append(time.perf_counter() - t0)
    parts = {name: sum(len(m.group().encode()) for m in rx.finditer(page)) for name, rx in PARTS.items()}
    parts["rest"] = len(body) - sum(parts.values())
    return {
        "bytes": len(body),
        "gzip_bytes": len(zipped),
        "render_ms": round(statistics.median(times) * 1e3, 2),
        "gzip_ms": round(statistics.median(gzip_times) * 1e3, 2),
        "bytes_per_model": round(len(body) / len(view.models)),
        "parts": parts,
    }


def measure_json(view: StatusView, repeats: int) -> dict[str, Any]:
    """The /status.json body of ``view``: bytes, gzip bytes, build time."""
    times = []
    body = b""
    for _ in range(repeats):
        t0 = time.perf_counter()
        body = json_bytes(view_json(view))
        times.append(time.perf_counter() - t0)
    zipped = gzip.compress(body, compresslevel=6, mtime=0)
    uptime = sum(len(json_bytes(m["uptime"])) for m in view_json(view)["models"])
    return {
        "bytes": len(body),
        "gzip_bytes": len(zipped),
        "build_ms": round(statistics.median(times) * 1e3, 2),
        "uptime_lists_bytes": uptime,
    }


async def _browser_load(devtools: Any, url: str) -> dict[str, float]:
    """Load ``url`` in a 360 px phone viewport: wall time to the load event and a screenshot, DOM nodes,
    layout and style-recalculation time."""
    target = (await devtools.call("Target.createTarget", url="about:blank"))["targetId"]
    session = (await devtools.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
    await devtools.call(
        "Emulation.setDeviceMetricsOverride", session, width=360, height=740, deviceScaleFactor=1, mobile=True
    )
    await devtools.call("Page.enable", session)
    await devtools.call("Performance.enable", session)
    t0 = time.perf_counter()
    await devtools.call("Page.navigate", session, url=url)
    await devtools.event("Page.loadEventFired", session)
    await devtools.call("Page.captureScreenshot", session, format="png")
    wall = time.perf_counter() - t0
    metrics = {m["name"]: m["value"] for m in (await devtools.call("Performance.getMetrics", session))["metrics"]}
    await devtools.call("Target.closeTarget", targetId=target)
    return {
        "load_and_paint_ms": round(wall * 1e3),
        "dom_nodes": int(metrics["Nodes"]),
        "layout_ms": round(metrics["LayoutDuration"] * 1e3),
        "style_ms": round(metrics["RecalcStyleDuration"] * 1e3),
    }


def browser_loads(pages: dict[str, str], rounds: int = 2) -> dict[str, dict[str, float]]:
    """Each page (name -> HTML) loaded ``rounds`` times in headless chromium; the last round's figures."""
    sys.path.insert(0, str(REPO / "tests"))
    from browser import headless_chromium  # the tests' driver: scripts off, loopback only

    out: dict[str, dict[str, float]] = {}

    async def run(where: Path) -> None:
        async with headless_chromium("chromium") as devtools:
            for _ in range(rounds):  # the first round warms the browser up
                for name, html in pages.items():
                    path = where / f"{name}.html"
                    path.write_text(html, encoding="utf-8")
                    out[name] = await _browser_load(devtools, path.as_uri())

    with tempfile.TemporaryDirectory(prefix="status-page-browser-") as tmp:
        asyncio.run(run(Path(tmp)))
    return out


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f}"


def main(argv: list[str] | None = None) -> int:
    """Render both pages at each size, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 and 1,250 models, 3 repeats")
    parser.add_argument("--models", type=int, nargs="+", help="sizes (default 100 1250 2500; 100 1250 with --quick)")
    parser.add_argument("--base", default=BASE, help=f"the commit whose page is the baseline (default {BASE})")
    parser.add_argument("--json", type=Path, help="where to write results")
    parser.add_argument("--browser", action="store_true", help="also load each page in headless chromium")
    args = parser.parse_args(argv)
    sizes: list[int] = args.models or ([100, 1250] if args.quick else [100, 1250, 2500])
    repeats = 3 if args.quick else 7
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)
    info = describe_machine([])

    results = []
    with tempfile.TemporaryDirectory(prefix="status-page-base-") as tmp:
        base = load_base_page(args.base, Path(tmp))
        for n in sizes:
            view = make_view(n)
            old = measure(base.render_status_page, view, repeats)
            new = measure(status_page.render_status_page, view, repeats)
            result = {"models": n, "base": old, "new": new, "status_json": measure_json(view, repeats)}
            if args.browser:
                pages = {"base": base.render_status_page(view), "new": status_page.render_status_page(view)}
                result["browser"] = browser_loads(pages)
            results.append(result)
            print(f"measured {n} models", file=sys.stderr, flush=True)

    lines = [["models", "page", "KB", "gzip KB", "render ms", "gzip ms", "B/model", "bars KB", "figures KB", "rest KB"]]
    for r in results:
        for name in ("base", "new"):
            m = r[name]
            p = m["parts"]
            lines.append(
                [
                    f"{r['models']:,}",
                    name,
                    _kb(m["bytes"]),
                    _kb(m["gzip_bytes"]),
                    f"{m['render_ms']:.1f}",
                    f"{m['gzip_ms']:.1f}",
                    f"{m['bytes_per_model']:,}",
                    _kb(p["bars"]),
                    _kb(p["figures"]),
                    _kb(p["rest"]),
                ]
            )
    print(f"status page: base {args.base} against this tree; medians of {repeats} renders")
    print_table(lines, left=2)
    print()
    ratio_lines = [["models", "bytes new/base", "gzip new/base", "render new/base", "status.json KB", "json gzip KB"]]
    for r in results:
        b, n, j = r["base"], r["new"], r["status_json"]
        ratio_lines.append(
            [
                f"{r['models']:,}",
                f"{n['bytes'] / b['bytes']:.3f}",
                f"{n['gzip_bytes'] / b['gzip_bytes']:.3f}",
                f"{n['render_ms'] / b['render_ms']:.3f}",
                _kb(j["bytes"]),
                _kb(j["gzip_bytes"]),
            ]
        )
    print_table(ratio_lines, left=1)
    if args.browser:
        print()
        lines = [["models", "page", "DOM nodes", "load+paint ms", "layout ms", "style ms"]]
        for r in results:
            for name in ("base", "new"):
                b = r["browser"][name]
                lines.append(
                    [
                        f"{r['models']:,}",
                        name,
                        f"{b['dom_nodes']:,}",
                        f"{b['load_and_paint_ms']:,}",
                        f"{b['layout_ms']:,}",
                        f"{b['style_ms']:,}",
                    ]
                )
        print("headless chromium, 360 px viewport, scripts off (second load)")
        print_table(lines, left=2)
    write_results(
        json_path,
        {**result_header("status_page", args.quick, info), "base": args.base, "repeats": repeats, "sizes": results},
    )
    print(f"written to {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
