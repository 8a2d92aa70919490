"""The status page in a real browser with JavaScript off: what a user sees, and a screenshot.

A real aiohttp server on 127.0.0.1 serves the page from a database seeded
through probes and aggregator refreshes (status_seed.py). Debian's headless
``chromium`` loads it with scripts disabled (``--blink-settings=
scriptEnabled=false``: the page must be readable without JavaScript) and only
loopback reachable. The test reads the rendered DOM and takes a 1280x1600
screenshot over the DevTools protocol (chromium's loopback debugging port),
asserts what a user sees, and saves the screenshot to
``test-artifacts/status-page.png`` under the repository root.

Without chromium the test is skipped, unless ROUTEWATCH_REQUIRE_BROWSER=1
(as .ci/run sets), which makes a missing browser a failure.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp import web
from browser import ARTIFACTS, BROWSER_TIMEOUT_S, chromium_binary, headless_chromium, load, parse_dom
from png_pixels import pixels
from status_seed import (
    BROKEN,
    CLOSED_ID,
    EVIL,
    MAINTENANCE_ID,
    MODELS,
    NANO,
    NANO_TTFT_MS,
    OPEN_ID,
    PAST_LEVELS,
    ROUTER,
    seed_status,
    status_app,
)
from uptime_strips import strip_levels

from routewatch.aggregator.model_state import UPTIME_DAYS

pytestmark = pytest.mark.system

SCREENSHOT = ARTIFACTS / "status-page.png"
# The page's colours (status_page.CSS, uptime_strip.DEFS): levels, the unknown stripes, the gap between days.
COLOURS = {
    "up": (0x2D, 0xA4, 0x4E),
    "minor": (0x9B, 0xD3, 0x5A),
    "partial": (0xD4, 0xA7, 0x2C),
    "major": (0xCF, 0x22, 0x2E),
    "stripe-light": (0xD5, 0xDB, 0xE1),
    "stripe-dark": (0xAA, 0xB3, 0xBD),
    "gap": (0xFF, 0xFF, 0xFF),
}
STRIPES = ("stripe-light", "stripe-dark")


def _nearest(px: tuple[int, int, int]) -> str:
    """The page colour closest to ``px``."""
    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], px, strict=True)))


SCREENSHOT_NARROW = ARTIFACTS / "status-page-narrow.png"


@pytest.fixture
def chromium() -> str:
    """Path of the chromium binary (skips the test without one, see browser.py)."""
    return chromium_binary()


@pytest.fixture
async def page_url(db_dsn: str) -> AsyncIterator[str]:
    """URL of /status on a real server (127.0.0.1, a free port) over a seeded database."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=3)
    runner: web.AppRunner | None = None
    try:
        aggregator = await seed_status(pool)
        runner = web.AppRunner(status_app(aggregator), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/status"
    finally:
        if runner is not None:
            await runner.cleanup()
        await pool.close()


# ---------------------------------------------------------------- the test


@pytest.mark.timeout(300)
async def test_status_page_in_headless_chromium_without_javascript(
    chromium: str, page_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with asyncio.timeout(BROWSER_TIMEOUT_S), headless_chromium(chromium) as devtools:
        # The switch works: a page's own script does not run (a data: URL, nothing leaves the machine).
        probe = await load(devtools, "data:text/html,<title>off</title><script>document.title='on'</script>")
        assert parse_dom(probe.markup).find("title").text == "off", "chromium ran a script despite scriptEnabled=false"
        page = await load(devtools, page_url, shoot="svg.strip")
        narrow = await load(devtools, page_url, width=360, height=740)
    dom_markup, png = page.markup, page.png
    dom = parse_dom(dom_markup)
    # Readable on a phone: nothing wider than the screen, so no sideways scrolling.
    assert narrow.content_width <= 360 and page.content_width <= 1280

    # Nothing injected: the only elements are ours, and no script at all.
    assert not dom.find_all("script") and "<script" not in dom_markup.lower()
    assert dom.find("title").text == "Model status · routewatch"
    assert dom.find("section", "banner").text == "Outage: at least one model is down"
    assert dom.find("p", "updated").text.startswith(f"Updated {datetime.now(UTC):%Y-%m-%d}")

    rows = {row.find("a", "name").text: row for row in dom.find_all("li", "model")}
    # Grouped by state, the down model first; EVIL's id shown literally, as text.
    assert list(rows) == [BROKEN, EVIL, NANO] and set(rows) == set(MODELS)
    groups = [(h.attrs["id"], h.text) for h in dom.find_all("h3")]
    assert groups == [("g-down", "Down (1)"), ("g-operational", "Operational (2)")]
    assert dom.find("p", "counts").text == "3 models: 1 down · 2 operational"
    assert [a.attrs["href"] for a in dom.find("p", "counts").find_all("a")] == ["#g-down", "#g-operational"]
    states = {name: row.find("span", "state").text for name, row in rows.items()}
    assert states == {EVIL: "Operational", NANO: "Operational", BROKEN: "Down"}
    ttft = rows[NANO].find("b", "ttft").text
    assert ttft.endswith(" ms") and float(ttft.removesuffix(" ms").replace(",", "")) == pytest.approx(
        NANO_TTFT_MS, rel=0.05
    )
    assert rows[BROKEN].find("b", "ttft").text == "—"
    assert rows[NANO].find("span", "router").text == ROUTER
    assert "$0.10/M input tokens" in rows[NANO].find("p", "figures").text
    assert rows[BROKEN].find("p", "reason").text == "4 consecutive failed probes"  # 3 + 1 per seed round
    # The error rate beside the figures, and the uptime with the span it was measured over.
    assert rows[NANO].find("b", "errors").text == "0.00%" and rows[BROKEN].find("b", "errors").text == "100.00%"
    first_day = (datetime.now(UTC).date() - timedelta(days=max(PAST_LEVELS) - 1)).isoformat()
    for name, row in rows.items():
        uptime = row.find("p", "uptime").text
        # Five whole days of rows and minutes of today: never "over 90 days".
        assert re.fullmatch(rf"\d+\.\d\d% uptime since {first_day} \(5 d of data\)", uptime), (name, uptime)
        assert row.find("a", "name").attrs["href"].startswith("/status/models/")

    # One SVG strip per model: each seeded day at its level, the days before them unknown (no data).
    strips = strip_levels(dom_markup)
    assert len(strips) == len(rows) == len(page.image_names)  # the patterns' hidden SVG is no image
    for (name, row), levels in zip(rows.items(), strips, strict=True):
        assert len(levels) == UPTIME_DAYS, name
        assert {ago: levels[-1 - ago] for ago in PAST_LEVELS} == PAST_LEVELS, name
        assert levels[: UPTIME_DAYS - 6] == ["unknown"] * (UPTIME_DAYS - 6), name
        svg = row.find("svg", "strip")
        assert svg.attrs["role"] == "img" and not row.find_all("li", "bar")  # the per-day bars are the model page's
        # Its text alternative counts the days drawn at each level (today: up, or major for the down model).
        names = {"up": "up", "minor": "minor", "partial": "partial", "major": "major", "unknown": "no data or unknown"}
        counts = ", ".join(f"{levels.count(level)} {text}" for level, text in names.items() if level in levels)
        assert svg.find("title").text == f"Uptime of {name}, 90 days: {counts}"
        # And that is what a screen reader announces for the strip (chromium's accessibility tree).
        assert f"Uptime of {name}, 90 days: {counts}" in page.image_names, page.image_names
        assert levels.count("unknown") == UPTIME_DAYS - 5 and levels[-1] == ("major" if name == BROKEN else "up")

    # What the strips look like: each day's middle drawn in its level's colour, unknown days in the two greys
    # of their stripes (both seen along the unknown run), and a gap between days.
    assert len(page.element_pngs) == len(strips)
    for (name, _), levels, strip_png in zip(rows.items(), strips, page.element_pngs, strict=True):
        drawn = pixels(strip_png)
        middle = drawn[len(drawn) // 2]
        day_px = len(middle) / UPTIME_DAYS
        seen = [_nearest(middle[int((d + 0.4) * day_px)]) for d in range(UPTIME_DAYS)]
        assert [("unknown" if c in STRIPES else c) for c in seen] == levels, name
        inside = [_nearest(middle[int((d + f) * day_px)]) for d in range(80) for f in (0.15, 0.3, 0.45, 0.6, 0.75)]
        assert all(inside.count(stripe) > len(inside) / 6 for stripe in STRIPES), (name, inside)
        assert "gap" in {_nearest(middle[int((d + 0.95) * day_px)]) for d in range(UPTIME_DAYS)}, name

    sections = {s.find("h2").text: s for s in dom.find_all("section") if s.find_all("h2")}
    (open_incident,) = sections["Open incidents"].find_all("li", "incident")
    assert open_incident.text.startswith(f"#{OPEN_ID} Down · {BROKEN} · started ")
    recent = sections["Recent incidents"].find_all("li", "incident")
    assert [i.text.split()[0] for i in recent] == [f"#{CLOSED_ID}", f"#{MAINTENANCE_ID}"]
    assert EVIL in recent[0].text and "planned maintenance" in recent[1].text
    assert [n.text for n in dom.find("ul", "legend").find_all("li")][-1] == "no data or mostly unknown"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(png)
    SCREENSHOT_NARROW.write_bytes(narrow.png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, len(png)
    with capsys.disabled():
        print(f"\nstatus page screenshots: {SCREENSHOT} ({len(png)} bytes), {SCREENSHOT_NARROW} (360 px wide)")
