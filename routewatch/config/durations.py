"""Durations as written in probes.yaml: ``500ms``, ``30s``, ``1m30s``, ``7d`` or bare seconds."""

from __future__ import annotations

import math
import re

# Milliseconds per unit, so that "0.1s" and "100ms" both come out as exactly 0.1.
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_UNIT_ORDER = list(_UNIT_MS)  # largest first
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_BARE = re.compile(_NUMBER)
# "ms" before the one-letter units, or "5ms" would read as 5 minutes and a stray "s".
_PART = re.compile(rf"({_NUMBER})(ms|[dhms])")
_EXAMPLES = "e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds"
MAX_DAYS = 36_500
"""The longest duration accepted: 100 years, far beyond any setting, yet small enough
that ``now ± duration`` stays a valid date and timedelta everywhere."""
MAX_SECONDS = MAX_DAYS * 86_400.0


def parse_duration(value: str | float) -> float:
    """Return ``value`` in seconds.

    Accepts a non-negative number (seconds) or a string of one or more
    ``<number><unit>`` parts, units ``d h m s ms`` from largest to smallest,
    each at most once (``1m30s``, ``1.5h``), up to MAX_DAYS. Raises ValueError otherwise.
    """
    # bool is an int, but `interval: yes` is a mistake, not 1 second.
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({_EXAMPLES}), got {str(value).lower()}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"expected a duration ({_EXAMPLES}), got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be a finite number, got {value}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value}")
    if seconds > MAX_SECONDS:
        got = f'"{value}"' if isinstance(value, str) else f"{value:g}"
        raise ValueError(f"duration must be at most {MAX_DAYS}d (100 years), got {got}")
    return seconds


def _parse_text(value: str) -> float:
    text = value.strip()
    if not text:
        raise ValueError(f"empty duration: expected {_EXAMPLES}")
    if _BARE.fullmatch(text):
        return float(text)
    if text.startswith("-"):
        raise ValueError(f'duration must not be negative, got "{value}"')
    total_ms = 0.0
    pos = 0
    last_rank = -1
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f'invalid duration "{value}": expected {_EXAMPLES}')
        number, unit = match.groups()
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:
            raise ValueError(
                f'invalid duration "{value}": units go from largest to smallest, each once (e.g. 1h30m, 1m30s)'
            )
        last_rank = rank
        total_ms += float(number) * _UNIT_MS[unit]
        pos = match.end()
    return total_ms / 1000
