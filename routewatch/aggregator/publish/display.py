"""How numbers, times and states read on the status page and the badges: pure formatting.

A missing figure is shown as :data:`MISSING` ("—"), never as "None" or 0.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from routewatch.aggregator.model_state import State

__all__ = [
    "MISSING",
    "STATE_LABELS",
    "format_duration",
    "format_error_rate",
    "format_percent",
    "format_price",
    "format_tps",
    "format_ttft",
    "format_utc",
]

MISSING = "—"
"""What a figure that was not measured (or not configured) reads as."""

STATE_LABELS = {
    State.OPERATIONAL: "Operational",
    State.DEGRADED: "Degraded",
    State.DOWN: "Down",
    State.UNKNOWN: "Unknown",
}


def format_ttft(ms: float | None) -> str:
    """``412 ms``, ``1,234 ms``; :data:`MISSING` for None."""
    return MISSING if ms is None else f"{ms:,.0f} ms"


def format_tps(tps: float | None) -> str:
    """``85.2 tok/s`` (no decimals from 100 on); :data:`MISSING` for None."""
    if tps is None:
        return MISSING
    return f"{tps:.1f} tok/s" if tps < 100 else f"{tps:,.0f} tok/s"


def format_percent(fraction: float | None) -> str:
    """``99.95%``, truncated (not rounded) so that 99.999% never reads as 100.00%."""
    if fraction is None:
        return MISSING
    return f"{math.floor(fraction * 10000 + 1e-9) / 100:.2f}%"


def format_error_rate(fraction: float | None) -> str:
    """``0.25%``, rounded *up* to 1/100 of a percent so that some errors never read as ``0.00%``;
    :data:`MISSING` for None (nothing attempted)."""
    if fraction is None:
        return MISSING
    return f"{math.ceil(fraction * 10000 - 1e-9) / 100:.2f}%"


def format_price(usd_per_mtok: float | None) -> str:
    """USD per 1M tokens: ``$0.10``, ``$0.075``, ``$15``; :data:`MISSING` for None.

    Whole dollars drop the cents, prices in cents keep two decimals, and
    smaller fractions keep every significant digit up to 1/10000 of a cent,
    so a price is never rounded to a cheaper-looking one.
    """
    if usd_per_mtok is None:
        return MISSING
    if usd_per_mtok == int(usd_per_mtok):
        return f"${usd_per_mtok:,.0f}"
    if round(usd_per_mtok, 2) == usd_per_mtok:
        return f"${usd_per_mtok:,.2f}"
    text = f"{usd_per_mtok:,.6f}".rstrip("0")
    # Below a millionth of a dollar six decimals are all zeros: three significant digits instead.
    return "$" + (f"{usd_per_mtok:.3g}" if text.endswith(".") else text)


def format_utc(value: datetime | None) -> str:
    """``2025-06-01 12:00 UTC``; :data:`MISSING` for None."""
    if value is None:
        return MISSING
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_duration(seconds: float) -> str:
    """A span in the two largest units: ``45 s``, ``15 min``, ``2 h 5 min``, ``3 d 4 h``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total} s"
    minutes, _ = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"
