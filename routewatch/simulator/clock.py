"""Waiting on the `perf_counter_ns` clock that ground truth is stamped with."""

from __future__ import annotations

import asyncio
import time


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until a perf_counter_ns deadline; absolute deadlines keep gaps from drifting."""
    while (remaining := deadline_ns - time.perf_counter_ns()) > 0:
        await asyncio.sleep(remaining / 1e9)
