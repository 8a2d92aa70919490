"""A prober without a database, as a child process for tests: probes on the schedule, results to ``result_sink``.

What ``routewatch probe`` does on a machine that pushes, wired from the same
parts (the config, the settings, ``sinks.result_sink``, the prober and its
schedule), without the shard leases. Runs until SIGTERM or SIGINT, then
finishes the probes in flight and delivers what it can (the rest stays in the
spool); prints ``push prober running`` once probing.

    python tests/push_prober.py --config probes.yaml --data-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.config import load_config
from routewatch.config.settings import load_settings
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.scheduler import Prober, ProbeSchedule, new_session
from routewatch.probe.targets import plan
from routewatch.sinks import needs_database, result_sink


async def main(config_path: str, data_dir: Path) -> int:
    settings = load_settings()
    config = load_config(config_path)
    assert not needs_database(config), "this prober pushes: the config needs ingest"
    series, _ = plan(config, settings.router_keys, None, router_url=settings.router_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with result_sink(config, settings, data_dir / "spool", None) as sink:
        lag = LoopLagMonitor()
        lag.start()
        try:
            async with new_session(config.schedule.concurrency) as session:
                prober = Prober(
                    session,
                    config.timeouts,
                    config.region,
                    config.schedule.concurrency,
                    sink=sink.submit,
                    lag=lag,
                    max_lag_s=config.schedule.max_loop_lag,
                )
                scheduler = AsyncIOScheduler()
                probes = ProbeSchedule(
                    scheduler, prober, series, config.schedule.interval, config.schedule.jitter, random.Random()
                )
                scheduler.start()
                print(f"push prober running: {len(series)} series", flush=True)
                await stop.wait()
                await probes.stop(config.timeouts.total + 1)
        finally:
            await lag.stop()
    print(f"push prober stopped: {sink.written} stored by the central server", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    raise SystemExit(asyncio.run(main(args.config, args.data_dir)))
