"""``routewatch once``: one round of probes, a table, no database.

For trying a configuration or a router by hand: every series is probed
once, concurrently under the configured limit, and the results are printed.
Nothing is stored.

Everything a router sent (error bodies, the model it says served) is shown as
plain text: never read as Rich markup, stripped of terminal escape sequences
and control characters, and made encodable, so a hostile router can neither
break the table nor write to the terminal.
"""

from __future__ import annotations

import asyncio
import re
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from routewatch.config import Config
from routewatch.config.settings import Settings
from routewatch.model_discovery import discover_once, discovering
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.router_values import valid_text
from routewatch.probe.scheduler import Prober, new_session
from routewatch.probe.targets import plan, uses_simulator
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import DEFAULT_PROFILES, start_simulator

EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 2  # 1 is taken by "could not run at all" (a bad config, a missing key)

_LINE_BREAKS = re.compile(r"[\t\n\r]+")


def terminal_safe(text: str) -> str:
    """``text`` as it may be printed: escape sequences removed, line breaks as spaces,
    every other control character, lone surrogate or bidi override as U+FFFD."""
    return valid_text(_LINE_BREAKS.sub(" ", text))


def _plain(text: str, style: str = "") -> Text:
    # A Text is never parsed as markup, so "[/]" in a router's answer stays "[/]".
    return Text(terminal_safe(text), style=style)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def results_table(results: list[ProbeResult]) -> Table:
    """The results of one round as a table that fits 80 columns.

    Model ids wrap rather than being cut; the probe's router, prompt and prompt
    tier (its input size: the figures of two tiers are not comparable) go on the
    line below its model, and what a router said about a failure goes under the
    table (``result_notes``), where it has the whole width.
    """
    table = Table(title="routewatch once", title_justify="left")
    table.add_column("model\nrouter · prompt · tier", overflow="fold", ratio=1, min_width=16)
    for name in ("TTFT\nms", "TTFAT\nms", "tok/s", "tokens"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("result", overflow="fold")
    for r in results:
        probe = _plain(r.model, "bold")
        probe.append("\n")
        probe.append_text(_plain(f"{r.router} · {r.prompt} · tier {r.tier}", "dim"))
        tokens = "—" if r.output_tokens is None else f"{'~' if r.tokens_estimated else ''}{r.output_tokens}"
        tps = "—" if r.output_tps is None else f"{r.output_tps:.1f}"
        outcome = Text("ok", style="green") if r.ok else _plain(r.error_class or "failed", "red")
        table.add_row(probe, _ms(r.ttft_ms), _ms(r.ttfat_ms), tps, tokens, outcome)
    return table


def result_notes(results: list[ProbeResult]) -> list[Text]:
    """One line per probe with something to say: the failure's detail, another model served, router retries."""
    notes: list[Text] = []
    for r in results:
        said: list[Text] = []
        if not r.ok and r.error_detail:
            said.append(_plain(r.error_detail, "red"))  # its class is in the table
        if r.model_served and r.model_served != r.model:
            said.append(_plain(f"served by {r.model_served}"))
        if r.attempts is not None and r.attempts > 1:
            fallbacks = f", {r.fallbacks} to a fallback" if r.fallbacks else ""
            said.append(_plain(f"the router made {r.attempts} upstream calls{fallbacks}", "yellow"))
        if said:
            note = _plain(f"{r.model} ({r.router} · {r.prompt}): ", "bold")
            notes.append(note + Text("; ").join(said))
    return notes


async def _round(config: Config, settings: Settings, console: Console) -> list[ProbeResult]:
    simulator = None
    if uses_simulator(config, settings.router_url):
        simulator = await start_simulator(DEFAULT_PROFILES)
        console.print(f"probing the built-in router simulator at {simulator.base_url}", markup=False)
    try:
        simulator_url = simulator.base_url if simulator else None
        series, routers = plan(config, settings.router_keys, simulator_url, router_url=settings.router_url)
        if discovering(config):
            found, prices, lines = await discover_once(config, routers)
            for line in lines:
                console.print(terminal_safe(line), markup=False)
            series, _ = plan(
                config,
                settings.router_keys,
                simulator_url,
                router_url=settings.router_url,
                discovered=found,
                listed_prices=prices,
            )
        lag = LoopLagMonitor()
        lag.start()
        with Progress(
            TextColumn("probing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("probes", total=len(series))

            async def tick(_: ProbeResult) -> None:
                progress.advance(task)

            async with new_session(config.schedule.concurrency) as session:
                prober = Prober(
                    session,
                    config.timeouts,
                    config.region,
                    config.schedule.concurrency,
                    sink=tick,
                    lag=lag,
                    max_lag_s=config.schedule.max_loop_lag,
                )
                results = await prober.round_with_budgets(
                    series, lambda n: progress.update(task, total=len(series) + n)
                )
        await lag.stop()
        return results
    finally:
        if simulator is not None:
            await simulator.close()


def once(config: Config, settings: Settings) -> int:
    """Probe every series once and print the table; exit 0 only when every probe succeeded.

    ``settings``: where a router's key and ``ROUTEWATCH_ROUTER_URL`` come from.
    """
    # Defence in depth: whatever slipped past terminal_safe is replaced, never a crash mid-table.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    console = Console()
    results = asyncio.run(_round(config, settings, console))
    console.print(results_table(results))
    for note in result_notes(results):
        console.print(note)
    ok = sum(r.ok for r in results)
    console.print(f"{ok} of {len(results)} probes ok", markup=False, highlight=False)
    return EXIT_ALL_OK if ok == len(results) else EXIT_SOME_FAILED
