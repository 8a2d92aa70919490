"""Run probes in a fresh process and report each one's peak memory growth and longest loop stall.

Usage: python probe_memory_child.py BASE_URL MODEL...

A warm-up probe of model "warmup" runs first, so that imports and the
connection pool are paid for before anything is measured. For each MODEL the
kernel's peak-RSS mark is reset (/proc/self/clear_refs), one probe runs with
a ticker beside it, and one JSON line is printed: the growth of the peak RSS
over the RSS before the probe, the most CPU time the loop spent between two
ticks (how long the probe held the loop), and the result.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

from hostile_router import CANARY, timeouts

from routewatch.probe import chat_stream
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Target

TICK_S = 0.005
# Generous: the limits under test are the probe's size limits, not its deadlines.
TIMEOUTS = timeouts(connect=5.0, headers=5.0, first_token=5.0, idle=5.0, total=20.0)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def ticker(held: list[float], stop: asyncio.Event) -> None:
    """Record how much CPU the loop spent between two of its turns.

    CPU time of this thread, not wall time: on a busy machine the process
    may wait for a core, which is not the probe holding the loop.
    """
    last = time.thread_time()
    while not stop.is_set():
        await asyncio.sleep(TICK_S)
        now = time.thread_time()
        held.append(now - last)
        last = now


async def measure(session: object, base_url: str, model: str) -> dict[str, object]:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status_kib("VmRSS")
    held: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(held, stop))
    t0, cpu0 = time.perf_counter(), time.process_time()
    r = await chat_stream.run(session, Target("mem", base_url, model), CANARY, TIMEOUTS, region="test")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    await tick
    return {
        "model": model,
        "growth_mib": (status_kib("VmHWM") - before) / 1024,
        "max_hold_ms": max(held, default=0.0) * 1000,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "error_class": r.error_class,
        "error_detail": r.error_detail,
        "output_tokens": r.output_tokens,
        "chunks": r.chunks,
    }


async def main(base_url: str, models: list[str]) -> None:
    async with new_session(1) as session:
        await chat_stream.run(session, Target("mem", base_url, "warmup"), CANARY, TIMEOUTS, region="test")
        for model in models:
            print(json.dumps(await measure(session, base_url, model)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
