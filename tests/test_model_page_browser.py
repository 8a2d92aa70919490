"""A model's page in a real browser with JavaScript off: what a user sees, and screenshots.

A real aiohttp server on 127.0.0.1 serves /status/models/<id> from a
database seeded through the writer and aggregator refreshes
(model_page_seed.py). Headless chromium (browser.py) renders it with
scripts disabled; the test reads the rendered DOM and checks what a reader
would: the charts are there with the points the stored history holds, the
time-of-day profile has its 24 bars, the uptime says over what span it was
measured, and the embed snippets are ready to paste. Screenshots go to
``test-artifacts/model-page.png`` (1280 px wide, the whole page) and
``model-page-narrow.png`` (360 px), next to the status page's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import pytest
from aiohttp import web
from browser import ARTIFACTS, BROWSER_TIMEOUT_S, Node, chromium_binary, headless_chromium, load, parse_dom
from model_page_seed import EVIL_PROVIDER, EVIL_SERVED, SeededHistory, expected_points, hour_ttft, seed_model_page
from status_seed import EVIL, NANO, PAST_DAYS, ROUTER

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.publish.model_links import model_page_path
from routewatch.aggregator.publish.model_page import embed_snippets
from routewatch.aggregator.refresh import Aggregator

pytestmark = pytest.mark.system

SCREENSHOT = ARTIFACTS / "model-page.png"
SCREENSHOT_NARROW = ARTIFACTS / "model-page-narrow.png"
PUBLIC_URL = "https://status.example.org"


@pytest.fixture
def chromium() -> str:
    """Path of the chromium binary (skips the test without one, see browser.py)."""
    return chromium_binary()


@dataclass
class Served:
    base: str
    aggregator: Aggregator
    history: SeededHistory


@pytest.fixture
async def served(db_dsn: str) -> AsyncIterator[Served]:
    """The app on a real server (127.0.0.1, a free port) over a seeded database."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=3)
    runner: web.AppRunner | None = None
    try:
        aggregator, history = await seed_model_page(pool)
        runner = web.AppRunner(create_app(aggregator, public_url=PUBLIC_URL), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield Served(f"http://{host}:{port}", aggregator, history)
    finally:
        if runner is not None:
            await runner.cleanup()
        await pool.close()


def _chart(dom: Node, chart_id: str) -> Node:
    found = [n for n in dom.find_all("svg") if n.attrs.get("data-chart") == chart_id]
    assert len(found) == 1, chart_id
    return found[0]


@pytest.mark.timeout(300)
async def test_model_page_in_headless_chromium_without_javascript(
    chromium: str, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    url = served.base + model_page_path(NANO)
    async with asyncio.timeout(BROWSER_TIMEOUT_S), headless_chromium(chromium) as devtools:
        page = await load(devtools, url, full_page=True)
        narrow = await load(devtools, url, width=360, height=740)
        evil = await load(devtools, served.base + model_page_path(EVIL))
    dom = parse_dom(page.markup)
    # Readable on a phone: nothing wider than the screen.
    assert narrow.content_width <= 360 and page.content_width <= 1280
    assert not dom.find_all("script") and "<script" not in page.markup.lower()
    assert dom.find("title").text == f"{NANO} · routewatch"
    assert dom.find("h1").text == NANO
    assert dom.find("span", "state").text == "Operational"

    # Nine charts (three figures over three ranges), each titled and described, with axis labels.
    end = served.aggregator.snapshot.updated_at  # type: ignore[union-attr]
    for figure in ("ttft", "tps", "errors"):
        for span in ("24h", "7d", "90d"):
            svg = _chart(dom, f"{figure}-{span}")
            assert svg.attrs["role"] == "img" and svg.find("title").text and svg.find("desc").text
            assert {"time (UTC)"} <= {t.text for t in svg.find_all("text", "axis-title")}
    for chart_id, window, unit, span_td in (
        ("ttft-24h", "1h", "hour", timedelta(hours=24)),
        ("ttft-7d", "1h", "hour", timedelta(days=7)),
        ("ttft-90d", "7d", "day", timedelta(days=90)),
    ):
        svg = _chart(dom, chart_id)
        (points,) = [g for g in svg.find_all("g", "pts") if g.attrs["data-line"] == "p50"]
        p50 = {c.attrs["data-t"]: float(c.attrs["data-v"]) for c in points.find_all("circle")}
        assert p50 == expected_points(served.history, window, unit, end - span_td, end), chart_id
        assert svg.attrs["data-window"] == window
        # Each point says its time and value on hover, as a reader sees it.
        first = points.find("circle")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC · p50 [\d,]+ ms", first.find("title").text)
    assert "latest" in _chart(dom, "ttft-24h").find("desc").text

    # The time-of-day profile: 24 bars, each the seeded TTFT of its hour.
    (profile,) = [n for n in dom.find_all("svg") if n.attrs.get("data-chart", "").startswith("profile-")]
    bars = profile.find_all("rect", "bar")
    assert [int(b.attrs["data-hour"]) for b in bars] == list(range(24))
    for bar in bars:
        assert float(bar.attrs["data-v"]) == pytest.approx(hour_ttft(int(bar.attrs["data-hour"])), rel=0.02)
        assert bar.find("title").text.startswith(f"{int(bar.attrs['data-hour']):02d}:00–")

    # Uptime says over what it was measured, not "over 90 days".
    first_day = (end.date() - timedelta(days=max(PAST_DAYS))).isoformat()
    uptime = dom.find("span", "uptime").text
    assert re.fullmatch(rf"\d+\.\d\d% uptime since {first_day} \(5 d( \d+ h)? of data\)", uptime), uptime

    # Providers and served models, with shares adding up to all of them.
    for cls in ("providers", "served"):
        shares = dom.find("ul", cls).find_all("li")
        assert shares, cls
        total = sum(float(li.find("span", "pct").text.rstrip("%")) for li in shares)
        assert total == pytest.approx(100.0, abs=0.2 * len(shares)), cls

    # The snippets, exactly as a reader would copy them.
    html_snippet, markdown = embed_snippets(NANO, ROUTER, PUBLIC_URL, several=False)
    assert dom.find("pre", "html").text == html_snippet
    assert dom.find("pre", "markdown").text == markdown
    assert html_snippet.startswith(f'<a href="{PUBLIC_URL}/status/models/{NANO}"><img src="{PUBLIC_URL}/badge/')
    assert dom.find("img", "badge-preview").attrs["src"] == f"/badge/{NANO}.svg"

    # A hostile id, provider and served model: shown as text, nothing injected.
    evil_dom = parse_dom(evil.markup)
    assert not evil_dom.find_all("script") and evil_dom.find("h1").text == EVIL
    assert EVIL_PROVIDER in evil_dom.find("ul", "providers").text
    assert EVIL_SERVED in evil_dom.find("ul", "served").text
    assert not [n for n in evil_dom.walk() if any(k.startswith("on") for k in n.attrs)]

    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(page.png)
    SCREENSHOT_NARROW.write_bytes(narrow.png)
    assert page.png.startswith(b"\x89PNG\r\n\x1a\n") and len(page.png) > 10_000, len(page.png)
    with capsys.disabled():
        print(f"\nmodel page screenshots: {SCREENSHOT} ({len(page.png)} bytes), {SCREENSHOT_NARROW} (360 px wide)")
