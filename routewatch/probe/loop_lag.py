"""The prober's own event-loop lag, measured continuously.

A task sleeps for a fixed tick and records how late it woke up. A probe
taken while the loop was late measured the prober, not the model; each
probe stores the worst lag seen during its life so such rows can be flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

TICK_S = 0.025  # fine enough to see a stall of a few tens of ms
_HISTORY = 16384  # ~7 minutes of ticks: longer than any probe's total timeout


class LoopLagMonitor:
    """Samples loop lag every ``tick_s``; ``worst_since`` answers per probe."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick = tick_s
        self._samples: deque[tuple[int, float]] = deque(maxlen=_HISTORY)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter_ns()
            await asyncio.sleep(self._tick)
            now = time.perf_counter_ns()
            lag_ms = max(0.0, (now - before) / 1e6 - self._tick * 1e3)
            self._samples.append((now, lag_ms))

    @property
    def latest_ms(self) -> float | None:
        """The last sample's lag (ms); None before the first tick."""
        return self._samples[-1][1] if self._samples else None

    def worst_since(self, t_ns: int) -> float | None:
        """Worst lag (ms) of samples taken at or after ``t_ns``; None if none yet."""
        worst: float | None = None
        for t, lag in reversed(self._samples):
            if t < t_ns:
                break
            if worst is None or lag > worst:
                worst = lag
        return worst

    def samples_since(self, t_ns: int) -> list[float]:
        """Every lag sample (ms) taken at or after ``t_ns``, oldest first."""
        return [lag for t, lag in self._samples if t >= t_ns]

    def recent_max(self, seconds: float) -> float | None:
        """Worst lag of the last ``seconds``."""
        return self.worst_since(time.perf_counter_ns() - int(seconds * 1e9))
