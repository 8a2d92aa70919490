"""Generated probe results for bench/aggregate.py: series, rows, loading them as the writer stores them.

Series ``i`` is the same in every case: router ``i % 4``, model ``i // 8``
(so each model is probed through 4 routers with 2 prompts), one provider per
model, one prober region. Rows are drawn with numpy: one probe per series per
``step_s`` with jitter inside the step, lognormal TTFT around a per-series
median, 5% failures, 0.5% ``prober_overloaded``.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from routewatch.aggregator.rollup import HOUR, floor_hour, refresh_hist
from routewatch.results.probe_result import METHODOLOGY_VERSION

COPY_BATCH = 250_000  # rows per copy_records_to_table call
FAILURE_RATE = 0.05
OVERLOADED_RATE = 0.005

LOAD_COLUMNS = (
    "id",
    "started_at",
    "region",
    "router",
    "model",
    "prompt",
    "methodology",
    "ok",
    "error_class",
    "error_detail",
    "http_status",
    "provider",
    "ttfb_ms",
    "ttft_ms",
    "ttfat_ms",
    "e2e_ms",
    "output_tps",
    "input_tokens",
    "output_tokens",
    "chunks",
    "prober_overloaded",
)
_ERRORS = ("http_5xx", "http_429", "timeout_ttft", "stream_error", "connect_error")
_ERROR_P = (0.35, 0.3, 0.15, 0.1, 0.1)
_ROUTERS = ("orcarouter", "openrouter", "requesty", "litellm-prod")
_PROVIDERS = ("OpenAI", "Anthropic", "Google", "Together", "DeepSeek")


@dataclass(frozen=True, slots=True)
class SeriesSet:
    """Per-series constants for series 0..n-1 (series i is the same in every case)."""

    router: list[str]
    model: list[str]
    prompt: list[str]
    provider: list[str]
    ttft_median: np.ndarray
    tps_median: np.ndarray
    reasoning: np.ndarray


def make_series(n: int) -> SeriesSet:
    """``n`` distinct (router, model, prompt) series: 4 routers x n/8 models x 2 prompts."""
    rng = np.random.default_rng(5)
    idx = np.arange(n)
    return SeriesSet(
        router=[_ROUTERS[i % 4] for i in idx],
        model=[f"vendor{(i // 8) % 5}/model-{i // 8:04d}" for i in idx],
        prompt=["short" if (i // 4) % 2 == 0 else "long-context" for i in idx],
        provider=[_PROVIDERS[(i // 8) % 5] for i in idx],
        ttft_median=rng.uniform(250, 1500, n) * np.where((idx // 4) % 2 == 1, 2.0, 1.0),
        tps_median=rng.uniform(40, 200, n),
        reasoning=rng.random(n) < 0.1,
    )


def generate(
    series: SeriesSet, lo: int, hi: int, start: datetime, end: datetime, step_s: float, rng: np.random.Generator
) -> list[tuple[Any, ...]]:
    """Rows (LOAD_COLUMNS order) of series lo..hi-1, one probe per ``step_s`` in [start, end), time-major."""
    ticks = np.arange(start.timestamp(), end.timestamp(), step_s)
    ns = hi - lo
    shape = (len(ticks), ns)
    n = shape[0] * ns
    ts = (ticks[:, None] + rng.uniform(0, step_s, shape)).ravel()
    ts = np.minimum(ts, end.timestamp() - 1e-3)
    sid = np.broadcast_to(np.arange(lo, hi), shape).ravel()
    ttft = series.ttft_median[sid] * rng.lognormal(0.0, 0.45, n)
    ttfb = np.minimum(ttft * 0.6, rng.lognormal(5.3, 0.5, n))
    ttfat = ttft + np.where(series.reasoning[sid], rng.uniform(300, 4000, n), 0.0)
    tps = np.maximum(5.0, rng.normal(series.tps_median[sid], series.tps_median[sid] * 0.15))
    out_tok = rng.integers(32, 129, n)
    in_tok = rng.integers(18, 41, n)
    e2e = ttfat + (out_tok - 1) / tps * 1000.0
    failed = rng.random(n) < FAILURE_RATE
    overloaded = rng.random(n) < OVERLOADED_RATE
    err = rng.choice(len(_ERRORS), n, p=_ERROR_P)
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    ids = [uuid.UUID(bytes=b) for b in map(bytes, raw)]
    started = [datetime.fromtimestamp(t, UTC) for t in ts.tolist()]
    rows = []
    routers, models, prompts, providers = series.router, series.model, series.prompt, series.provider
    for i, (s, f, o, e, t0, t1, t2, t3, t4, t5, ti, to) in enumerate(
        zip(
            sid.tolist(),
            failed.tolist(),
            overloaded.tolist(),
            err.tolist(),
            ttfb.tolist(),
            ttft.tolist(),
            ttfat.tolist(),
            e2e.tolist(),
            tps.tolist(),
            out_tok.tolist(),
            in_tok.tolist(),
            out_tok.tolist(),
        )
    ):
        del t5
        head = (ids[i], started[i], "eu-central", routers[s], models[s], prompts[s], METHODOLOGY_VERSION)
        if f:
            cls = _ERRORS[e]
            detail = (False, cls, f"generated {cls}", 503 if cls == "http_5xx" else None, providers[s])
            measured = (t0 if cls != "connect_error" else None, None, None, None, None, ti, None, 0, o)
        else:
            detail = (True, None, None, 200, providers[s])
            measured = (t0, t1, t2, t3, t4, ti, to, to, o)
        rows.append(head + detail + measured)
    return rows


async def load_hours(
    conn: asyncpg.Connection,
    series: SeriesSet,
    lo: int,
    hi: int,
    start: datetime,
    end: datetime,
    step_s: float,
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> tuple[int, float, float, float]:
    """Store series lo..hi-1 from ``start`` to ``end`` and build their hourly rollups, one UTC hour
    at a time (so that memory stays bounded whatever the case): each hour is one transaction with
    its ``probe_ingest_log`` row, as ``write_batch`` stores a batch, then ``refresh_hist`` takes it
    in. Returns (rows, generate s, load s, rollup build s)."""
    rows = 0
    gen_s = load_s = build_s = 0.0
    at = floor_hour(start)
    while at < end:
        h_start, h_end = max(at, start), min(at + HOUR, end)
        at += HOUR
        t0 = time.perf_counter()
        data = generate(series, lo, hi, h_start, h_end, step_s, rng)
        gen_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        async with conn.transaction():
            for i in range(0, len(data), COPY_BATCH):
                await conn.copy_records_to_table(
                    "probe_results", records=data[i : i + COPY_BATCH], columns=LOAD_COLUMNS
                )
            await conn.execute(
                "INSERT INTO probe_ingest_log (first_started, last_started, rows) VALUES ($1, $2, $3)",
                h_start,
                h_end - timedelta(microseconds=1),
                len(data),
            )
        load_s += time.perf_counter() - t0
        rows += len(data)
        del data
        gc.collect()
        t0 = time.perf_counter()
        await refresh_hist(conn, now=end)
        build_s += time.perf_counter() - t0
    log(
        f"  stored {rows:,} rows (series {lo}..{hi - 1}) in {load_s:.1f} s (+{gen_s:.1f} s generating),"
        f" rollups built in {build_s:.1f} s"
    )
    return rows, gen_s, load_s, build_s


async def add_arrivals(
    conn: asyncpg.Connection,
    series: SeriesSet,
    n_series: int,
    end: datetime,
    step_s: float,
    every_s: float,
    rng: np.random.Generator,
) -> int:
    """Store what arrives between two refreshes (``every_s`` of probes of every series, just before
    ``end``) the way the writer does: rows plus their probe_ingest_log row. Returns the rows."""
    rows = generate(series, 0, n_series, end - timedelta(seconds=every_s), end, step_s, rng)
    started = [r[1] for r in rows]
    # One transaction, like write_batch: refresh_hist finds a batch's rows by its transaction id.
    async with conn.transaction():
        await conn.copy_records_to_table("probe_results", records=rows, columns=LOAD_COLUMNS)
        await conn.execute(
            "INSERT INTO probe_ingest_log (first_started, last_started, rows) VALUES ($1, $2, $3)",
            min(started),
            max(started),
            len(rows),
        )
    return len(rows)
