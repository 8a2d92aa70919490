"""Waiting on the `perf_counter_ns` clock that ground truth is stamped with."""

from __future__ import annotations

import asyncio
import time


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until a perf_counter_ns deadline; absolute deadlines keep gaps from drifting."""
    # Not a busy wait: each sleep is the whole remainder; the loop only covers
    # the event loop waking a little early.
    while (remaining := deadline_ns - time.perf_counter_ns()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(remaining / 1e9)
