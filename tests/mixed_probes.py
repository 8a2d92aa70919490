"""Probe results as a router serves them, for the rollup and window tests: mostly ok, some failing.

:func:`mixed` makes one probe per time, taking the given series in turn:
about 10% fail (a few of them rate limited), 2% are flagged
``prober_overloaded``, latencies are log-normal. :func:`spread` draws the times.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
from factories import probe_result

from routewatch.results.probe_result import ProbeResult

Series = tuple[str, str, str | None, str]  # (router, model, provider or None, region)


def mixed(times: list[datetime], rng: np.random.Generator, series: Sequence[Series]) -> list[ProbeResult]:
    """One probe per time in ``times``, cycling through ``series``."""
    out = []
    for i, t in enumerate(times):
        router, model, provider, region = series[i % len(series)]
        roll = rng.random()
        error = "http_429" if roll < 0.04 else "http_5xx" if roll < 0.1 else None
        ttft = float(rng.lognormal(np.log(400), 0.7))
        out.append(
            probe_result(
                started_at=t,
                region=region,
                router=router,
                model=model,
                error_class=error,
                error_detail=error and "detail",
                provider=provider,
                ttft_ms=None if error else ttft,
                ttfat_ms=None if error else ttft * 1.2,
                output_tps=None if error else float(rng.lognormal(np.log(60), 0.3)),
                input_tokens=20,
                output_tokens=None if error else int(rng.integers(10, 200)),
                prober_overloaded=bool(rng.random() < 0.02),
                # Upstream calls as a router dialect reports them: none for a third (no report),
                # retries now and then (from i, so the random draws stay as they were).
                attempts=None if i % 3 == 0 else 1 + (i % 7 == 1) + (i % 11 == 2),
            )
        )
    return out


def spread(start: datetime, end: datetime, n: int, rng: np.random.Generator) -> list[datetime]:
    """``n`` times drawn uniformly in ``[start, end)``, ascending."""
    span = (end - start).total_seconds()
    return sorted(start + timedelta(seconds=float(s)) for s in rng.random(n) * span)
