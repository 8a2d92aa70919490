"""Reading the status page's uptime strips back: which level each day was drawn at.

A strip draws each level's runs of days as one ``<path>`` of
``M<first day> .5h<days>`` strokes (routewatch/aggregator/publish/uptime_strip.py);
:func:`strip_levels` turns every strip in some markup back into one level
per day, and fails if a day is drawn twice or not at all.
"""

from __future__ import annotations

import re

STRIP = re.compile(r'<svg class="strip" viewBox="0 0 (\d+) 1"[^>]*>(.*?)</svg>', re.S)
PATH = re.compile(r'<path class="l-(\w+)" d="([^"]*)"')
RUN = re.compile(r"M(\d+) \.5h(\d+)")


def strip_levels(markup: str) -> list[list[str]]:
    """Per strip in ``markup``, in order, the level of each day drawn, oldest first."""
    strips = []
    for width, inner in STRIP.findall(markup):
        days: list[str | None] = [None] * int(width)
        for level, d in PATH.findall(inner):
            assert RUN.sub("", d) == "", f"not a run: {d!r}"
            for start, n in RUN.findall(d):
                for i in range(int(start), int(start) + int(n)):
                    assert days[i] is None, f"day {i} drawn twice"
                    days[i] = level
        assert None not in days, f"days not drawn: {[i for i, lv in enumerate(days) if lv is None]}"
        strips.append([lv for lv in days if lv is not None])
    return strips


def strip_titles(markup: str) -> list[str]:
    """The text alternative (``<title>``) of each strip in ``markup``, in order."""
    return [re.findall(r"<title>(.*?)</title>", inner, re.S)[0] for _, inner in STRIP.findall(markup)]
