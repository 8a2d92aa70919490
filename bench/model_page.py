"""What does a model page cost with 1,000 models: its size, its first render after a refresh, a cached hit?

The model page benchmark, in one process on loopback:

* a throwaway PostgreSQL (``benchdb``), the schema in plain mode;
* ``--models`` models on one router, each probed once an hour over the
  last 7 days (``write_batch``, as the prober writes), so the snapshot, the
  status and the hourly rollup cover all of them;
* ``--sample`` of them probed as a real deployment probes one model (once a
  minute, 7 days: the served-model count reads these rows) and with
  ``stats_history`` as dense as the refreshing aggregator records it (every
  5 minutes, per window, for 90 days: the charts read these rows). The other
  models' history is not read by a sample model's page, so it is left out;
* ``create_app`` over an ``Aggregator`` (windows 1h / 24h / 7d, an SLO)
  refreshed once, served by aiohttp on 127.0.0.1.

Measured per sample model: the first GET of its page after the refresh
(the four reads per router and the render: what a refresh costs the first
reader), the render alone from the same data, then repeated GETs (the cached
body), and the page's size plain and gzip-compressed. Also the status page
at ``--models`` models, which now carries the error rate and a link per model.

Run ``python bench/model_page.py --quick`` (200 models, 3 sampled, 30 days of
history) or without ``--quick``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "model_page.json"
DEFAULT_JSON_QUICK = HERE / "results" / "model_page-quick.json"

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
ROUTER = "orcarouter"
PROVIDERS = ("OpenAI", "Azure", "Together")
SNAPSHOT_EVERY = timedelta(minutes=5)  # the aggregator's default stats_history interval
WRITE_BATCH = 5000
REPEATS = 200  # cached GETs per sample model


def model_id(i: int) -> str:
    """The id of generated model ``i``, slash included like real ids."""
    return f"vendor{i % 7}/model-{i:04d}"


def _result(model: str, at: datetime, i: int) -> Any:
    from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult

    ttft = 300.0 + 10.0 * at.hour + (i % 50)
    common: dict[str, Any] = {
        "id": uuid.uuid4(),
        "started_at": at,
        "region": "eu",
        "router": ROUTER,
        "model": model,
        "prompt": "short",
        "methodology": METHODOLOGY_VERSION,
        "provider": PROVIDERS[i % len(PROVIDERS)],
        "model_served": f"{model}-2025-0{1 + i % 3}-01",
        "input_tokens": 20,
    }
    if i % 40 == 0:
        return ProbeResult(ok=False, error_class="http_5xx", error_detail="generated", http_status=500, **common)
    return ProbeResult(
        ok=True,
        error_class=None,
        error_detail=None,
        http_status=200,
        ttft_ms=ttft,
        ttfat_ms=ttft,
        e2e_ms=ttft + 500.0,
        output_tps=80.0,
        output_tokens=40,
        **common,
    )


def _results(models: list[str], end: datetime, every: timedelta, days: int) -> Iterator[Any]:
    steps = int(timedelta(days=days) / every)
    for step in range(steps):
        at = end - (steps - step) * every
        for i, model in enumerate(models):
            yield _result(model, at + timedelta(seconds=i % 60), step + i)


def _history(model: str, end: datetime, days: int) -> Iterator[tuple[object, ...]]:
    """stats_history rows of ``model`` as the aggregator records them: every window, every 5 minutes."""
    steps = int(timedelta(days=days) / SNAPSHOT_EVERY)
    for step in range(steps):
        at = end - (steps - step) * SNAPSHOT_EVERY
        for window in WINDOWS:
            p50 = 300.0 + 10.0 * at.hour
            yield (at, ROUTER, model, window, 60, 59, 0, 1 / 60, 1 / 60, p50, p50 * 2, p50, p50 * 2, 80.0, 1200, 2400)


async def seed(dsn: str, models: list[str], sample: list[str], history_days: int, log: Callable[[str], None]) -> None:
    """Schema, hourly probes of every model, dense probes and history of the sample."""
    import asyncpg
    from benchdb import prepare_schema

    from routewatch.storage.history_queries import copy_history
    from routewatch.storage.writer import write_batch

    end = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_schema(conn, "plain", (end - timedelta(days=8)).date(), end.date() + timedelta(days=1))
        rows = 0
        for source in (
            _results(models, end, timedelta(hours=1), 7),
            _results(sample, end, timedelta(minutes=1), 7),
        ):
            batch: list[Any] = []
            for result in source:
                batch.append(result)
                if len(batch) == WRITE_BATCH:
                    rows += await write_batch(conn, batch)
                    batch = []
            rows += await write_batch(conn, batch)
        log(f"stored {rows:,} probe results ({len(models)} models hourly, {len(sample)} every minute)")
        history = 0
        for model in sample:
            records = list(_history(model, end, history_days))
            await copy_history(conn, records)
            history += len(records)
        log(f"stored {history:,} stats_history rows for the {len(sample)} sampled models ({history_days} days)")
    finally:
        await conn.close()


async def measure(dsn: str, models: list[str], sample: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Refresh once, serve, and time the pages."""
    import aiohttp
    import asyncpg
    from aiohttp import web

    from routewatch.aggregator.publish.api import create_app
    from routewatch.aggregator.publish.model_links import model_page_path
    from routewatch.aggregator.publish.model_page import render_model_page
    from routewatch.aggregator.publish.model_page_store import load_view
    from routewatch.aggregator.refresh import Aggregator
    from routewatch.config import SLOConfig
    from routewatch.storage.read_pools import ReadPools

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    runner: web.AppRunner | None = None
    try:
        slo = SLOConfig(window=900, down_after=3, up_after=2, min_samples=5)
        aggregator = Aggregator(pool, WINDOWS, [(ROUTER, m) for m in models], 15.0, slo=slo, probe_interval_s=3600.0)
        started = time.perf_counter()
        await aggregator.refresh()
        log(f"first refresh: {time.perf_counter() - started:.1f} s")
        runner = web.AppRunner(create_app(aggregator, public_url="https://status.example.org"), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        pages: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            for model in sample:
                url = base + model_page_path(model)
                t0 = time.perf_counter()
                async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                    body = await resp.read()
                    assert resp.status == 200, (url, resp.status)
                first_ms = (time.perf_counter() - t0) * 1e3
                hits = []
                for _ in range(REPEATS):
                    t0 = time.perf_counter()
                    async with http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
                        zipped = await resp.read()
                    hits.append((time.perf_counter() - t0) * 1e3)
                snapshot = aggregator.snapshot
                assert snapshot is not None
                t0 = time.perf_counter()
                view = await load_view(ReadPools(pool), aggregator, snapshot, None, model, {})
                read_ms = (time.perf_counter() - t0) * 1e3
                assert view is not None
                t0 = time.perf_counter()
                render_model_page(view)
                render_ms = (time.perf_counter() - t0) * 1e3
                each = await _time_reads(pool, model, snapshot.updated_at)
                pages.append(
                    {
                        "model": model,
                        "bytes": len(body),
                        "gzip_bytes": len(zipped),
                        "first_get_ms": round(first_ms, 1),
                        "reads_ms": round(read_ms, 1),
                        "render_ms": round(render_ms, 1),
                        "read_ms_each": each,
                        "cached_get_p50_ms": round(statistics.median(hits), 2),
                        "cached_get_max_ms": round(max(hits), 2),
                    }
                )
                log(f"{model}: {pages[-1]}")
            # The plain body, then the gzip one the server sends (not a gzip of the gzip).
            async with http.get(base + "/status", headers={"Accept-Encoding": "identity"}) as resp:
                status_page = await resp.read()
            async with http.get(base + "/status", headers={"Accept-Encoding": "gzip"}) as resp:
                status_gzip = await resp.read()
    finally:
        if runner is not None:
            await runner.cleanup()
        await pool.close()
    return {"pages": pages, "status_page_bytes": len(status_page), "status_page_gzip_bytes": len(status_gzip)}


async def _time_reads(pool: Any, model: str, end: datetime) -> dict[str, float]:
    """Each of the page's reads alone, in ms (the windows the page picks for 1h/24h/7d)."""
    from routewatch.storage.model_page_queries import history_buckets, model_hours, served_model_counts

    reads = {
        "history_hourly_7d": lambda c: history_buckets(c, ROUTER, model, "1h", "hour", end - timedelta(days=7), end),
        "history_daily_90d": lambda c: history_buckets(c, ROUTER, model, "24h", "day", end - timedelta(days=90), end),
        "hour_profile_7d": lambda c: model_hours(c, ROUTER, model, end - timedelta(days=7), end),
        "served_models_7d": lambda c: served_model_counts(c, ROUTER, model, end - timedelta(days=7), end, 8),
    }
    out = {}
    async with pool.acquire() as conn:
        for name, read in reads.items():
            t0 = time.perf_counter()
            await read(conn)
            out[name] = round((time.perf_counter() - t0) * 1e3, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Seed, measure, print and write the JSON."""
    # bench/ is on sys.path when this file runs as a script.
    from benchdb import add_pg_bin_argument, create_database, dsn_for, throwaway_server
    from machine import describe_machine, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200 models, 3 sampled, 30 days of history")
    parser.add_argument("--models", type=int, help="models (default 1,000; 200 with --quick)")
    parser.add_argument("--sample", type=int, help="models measured (default 5; 3 with --quick)")
    parser.add_argument("--json", type=Path, help="where to write results")
    add_pg_bin_argument(parser)
    args = parser.parse_args(argv)

    n_models = args.models or (200 if args.quick else 1000)
    n_sample = args.sample or (3 if args.quick else 5)
    history_days = 30 if args.quick else 90
    models = [model_id(i) for i in range(n_models)]
    sample = [models[(k + 1) * n_models // (n_sample + 1)] for k in range(n_sample)]
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with throwaway_server("model-page", args.pg_bin) as (work, pg):
        log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}")
        pg.start()
        asyncio.run(create_database(pg.dsn, "bench_model_page"))
        dsn = dsn_for(pg.dsn, "bench_model_page")
        asyncio.run(seed(dsn, models, sample, history_days, log))
        measured = asyncio.run(measure(dsn, models, sample, log))
        info = describe_machine(["aiohttp", "asyncpg"], postgresql=pg.version)
    pages = measured["pages"]
    print(f"{n_models} models; {n_sample} sampled with {history_days} days of 5-minute history and 1 probe/min")
    print("model                    KB  gzip KB  first GET ms  reads ms  render ms  cached p50 ms")
    for p in pages:
        print(
            f"{p['model']:<22} {p['bytes'] / 1024:5.1f}  {p['gzip_bytes'] / 1024:7.1f}  {p['first_get_ms']:12.1f}"
            f"  {p['reads_ms']:8.1f}  {p['render_ms']:9.1f}  {p['cached_get_p50_ms']:13.2f}"
        )
    print(
        f"status page at {n_models} models: {measured['status_page_bytes'] / 1024:.0f} KB, "
        f"{measured['status_page_gzip_bytes'] / 1024:.0f} KB gzip"
    )
    write_results(
        json_path,
        {
            "models": n_models,
            "sample": n_sample,
            "history_days": history_days,
            "machine": info,
            **measured,
        },
    )
    print(f"written to {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
