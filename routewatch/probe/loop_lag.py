"""The prober's own event-loop lag, measured continuously.

A task sleeps for a fixed tick and records how late it woke up. A probe
taken while the loop was late measured the prober, not the model; each
probe stores the worst lag seen during its life so such rows can be flagged.
A stall still under way counts too: a probe that ends in the same loop pass
as the stall that delayed its last token would otherwise never see it, as the
late tick is only recorded once the sampling task gets its turn.
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
        self._sleep_from_ns: int | None = None  # when the pending tick's sleep began

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
            self._sleep_from_ns = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter_ns()
            self._sleep_from_ns = before
            await asyncio.sleep(self._tick)
            now = time.perf_counter_ns()
            self._samples.append((now, self._late_ms(before, now)))

    def _late_ms(self, sleep_from_ns: int, now_ns: int) -> float:
        return max(0.0, (now_ns - sleep_from_ns) / 1e6 - self._tick * 1e3)

    def _pending_ms(self, t_ns: int) -> float | None:
        """How late the tick still waited for already is, counted from ``t_ns`` at
        the earliest; None when it is not late (or none is pending)."""
        if self._sleep_from_ns is None:
            return None
        due_ns = max(self._sleep_from_ns + round(self._tick * 1e9), t_ns)
        late_ns = time.perf_counter_ns() - due_ns
        return late_ns / 1e6 if late_ns > 0 else None

    @property
    def latest_ms(self) -> float | None:
        """The last sample's lag (ms); None before the first tick."""
        return self._samples[-1][1] if self._samples else None

    def worst_since(self, t_ns: int) -> float | None:
        """Worst lag (ms) since ``t_ns``: the samples taken at or after it and how
        late the pending tick already is; None if there is neither yet."""
        worst = self._pending_ms(t_ns)
        for t, lag in reversed(self._samples):
            if t < t_ns:
                break
            if worst is None or lag > worst:
                worst = lag
        return worst

    def blocked_ms_between(self, start_ns: int, end_ns: int) -> float:
        """How long (ms), within ``[start_ns, end_ns]``, a tick that was due went unrun.

        Each late tick stands for a span, from when it was due to when it ran,
        during which the loop ran nothing new; the spans are added up, so two
        stalls in a row count twice where ``worst_since`` sees only the larger.
        A busy stretch shorter than a tick before the next one falls due is
        not seen.
        """
        spans: list[tuple[int, int]] = []
        if self._sleep_from_ns is not None:
            due = self._sleep_from_ns + round(self._tick * 1e9)
            spans.append((due, time.perf_counter_ns()))
        for fired, lag in reversed(self._samples):
            if fired < start_ns:
                break
            spans.append((fired - round(lag * 1e6), fired))
        blocked = sum(max(0, min(b, end_ns) - max(a, start_ns)) for a, b in spans)
        return blocked / 1e6

    def samples_since(self, t_ns: int) -> list[float]:
        """Every lag sample (ms) taken at or after ``t_ns``, oldest first."""
        return [lag for t, lag in self._samples if t >= t_ns]

    def recent_max(self, seconds: float) -> float | None:
        """Worst lag of the last ``seconds``."""
        return self.worst_since(time.perf_counter_ns() - int(seconds * 1e9))
