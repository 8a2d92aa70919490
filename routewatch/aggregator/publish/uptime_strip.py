"""A model's daily uptime as one compact inline SVG: the status page's bars at any number of models.

The model page draws one ``<li>`` per day with its figures on hover; a
status page with a thousand models cannot (90 titled elements a model were
nine tenths of its bytes). Here consecutive days of the same level are one
run, drawn as a horizontal stroke one day unit per day, and all runs of a
level are one ``<path>``: at most five elements a model whatever its
history, a model up every day one. A pattern drawn once per page
(:data:`DEFS`) marks the gaps between days and stripes the unknown ones
(colour is never the only cue). The text alternative is the SVG's
``<title>``: the model and the count of days at each level (hover shows it too).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from routewatch.aggregator.publish.status_view import LEVELS, DayBar

__all__ = ["DEFS", "STRIP_CSS", "level_runs", "strip_summary", "uptime_strip"]

_SHORT = {level: level for level, _, _ in LEVELS} | {"unknown": "no data or unknown"}

# Once per page, in user units of the strips (a day is 1 wide, the strip 1 high):
# the white gap at the end of each day, and the unknown days' stripes.
DEFS = (
    '<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
    '<pattern id="gap" width="1" height="1" patternUnits="userSpaceOnUse">'
    '<rect x=".88" width=".12" height="1" fill="#fff"/></pattern>'
    '<pattern id="unk" width=".5" height=".2" patternUnits="userSpaceOnUse" patternTransform="skewX(-68)">'
    '<rect width=".5" height=".2" fill="#d5dbe1"/><rect width=".25" height=".2" fill="#aab3bd"/></pattern>'
    "</defs></svg>"
)

STRIP_CSS = """
.strip{display:block;width:100%;height:24px;margin:.4rem 0 .1rem}
.strip path{stroke-width:1;fill:none}
.strip .l-up{stroke:var(--up)}.strip .l-minor{stroke:var(--minor)}.strip .l-partial{stroke:var(--partial)}
.strip .l-major{stroke:var(--major)}.strip .l-unknown{stroke:url(#unk)}.strip .gap{fill:url(#gap)}
"""


def level_runs(levels: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    """Per level, its runs of consecutive days as (first day index, length), in day order."""
    runs: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for i in range(1, len(levels) + 1):
        if i == len(levels) or levels[i] != levels[start]:
            runs.setdefault(levels[start], []).append((start, i - start))
            start = i
    return runs


def strip_summary(levels: Sequence[str]) -> str:
    """The strip in words: ``90 days: 86 up, 2 minor, 2 no data or unknown`` (levels best first)."""
    parts = ", ".join(f"{n} {name}" for level, name in _SHORT.items() if (n := levels.count(level)))
    return f"{len(levels)} days: {parts}" if parts else "no days"


def uptime_strip(model: str, days: Sequence[DayBar]) -> str:
    """``model``'s ``days`` (oldest first) as one SVG: a path per level, the gaps between days, a title
    in words (``Uptime of <model>, 90 days: ...``, the name escaped)."""
    levels = [bar.level for bar in days]
    # A run is a stroke along the strip's middle: "M<first day> .5h<days>".
    paths = "".join(
        f'<path class="l-{level}" d="{"".join(f"M{start} .5h{n}" for start, n in spans)}"/>'
        for level, spans in level_runs(levels).items()
    )
    width = len(levels)
    return (
        f'<svg class="strip" viewBox="0 0 {width} 1" preserveAspectRatio="none" role="img">'
        f"<title>Uptime of {html.escape(model, quote=True)}, {strip_summary(levels)}</title>"
        f'{paths}<rect class="gap" width="{width}" height="1"/></svg>'
    )
