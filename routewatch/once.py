"""``routewatch once``: one round of probes, a table, no database.

For trying a configuration or a router by hand: every series is probed
once, concurrently under the configured limit, and the results are printed.
Nothing is stored.
"""

from __future__ import annotations

import asyncio
import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .probe.config import Config
from .probe.loop_lag import LoopLagMonitor
from .probe.result import ProbeResult
from .probe.scheduler import Prober, new_session
from .probe.targets import plan, uses_simulator
from .simulator import DEFAULT_PROFILES, start_simulator


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def results_table(results: list[ProbeResult]) -> Table:
    """The results of one round as a table."""
    table = Table(title="routewatch once", title_justify="left")
    for name, justify in [("router", "left"), ("model", "left"), ("prompt", "left"), ("TTFT ms", "right"),
                          ("TTFAT ms", "right"), ("tok/s", "right"), ("tokens", "right"), ("result", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        tokens = "—" if r.output_tokens is None else f"{'~' if r.tokens_estimated else ''}{r.output_tokens}"
        tps = "—" if r.output_tps is None else f"{r.output_tps:.1f}"
        outcome = "[green]ok[/]" if r.ok else f"[red]{r.error_class}[/] {r.error_detail or ''}"
        if r.model_served and r.model_served != r.model:
            outcome += f" (served by {r.model_served})"
        table.add_row(r.router, r.model, r.prompt, _ms(r.ttft_ms), _ms(r.ttfat_ms), tps, tokens, outcome)
    return table


async def _round(config: Config, console: Console) -> list[ProbeResult]:
    simulator = None
    if uses_simulator(config, os.environ):
        simulator = await start_simulator(DEFAULT_PROFILES)
        console.print(f"probing the built-in router simulator at {simulator.base_url}")
    try:
        series, _ = plan(config, os.environ, simulator.base_url if simulator else None)
        lag = LoopLagMonitor()
        lag.start()
        with Progress(TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("probes", total=len(series))

            async def tick(_: ProbeResult) -> None:
                progress.advance(task)

            async with new_session(config.schedule.concurrency) as session:
                prober = Prober(session, config.timeouts, config.region, config.schedule.concurrency,
                                sink=tick, lag=lag, max_lag_s=config.schedule.max_loop_lag)
                results = await prober.round(series)
        await lag.stop()
        return results
    finally:
        if simulator is not None:
            await simulator.close()


def once(config: Config) -> int:
    """Probe every series once and print the table; exit 0 when any probe succeeded."""
    console = Console()
    results = asyncio.run(_round(config, console))
    console.print(results_table(results))
    ok = sum(r.ok for r in results)
    console.print(f"{ok} of {len(results)} probes ok")
    return 0 if ok else 2
