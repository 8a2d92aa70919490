"""One model's page and JSON: GET /v1/models/{id} and /status/models/{id} on real parts.

Pure parts (links, wording, charts) are tested on built values; the routes
on a real database seeded through the project's writer and aggregator
refreshes (model_page_seed.py), served by aiohttp's test server on loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from factories import MINIMAL_CONFIG, probe_result
from html_tags import active_parts, start_tags
from model_page_seed import (
    BUDGET_EXHAUSTED,
    EVIL_PROVIDER,
    EVIL_SERVED,
    FALLBACK,
    REASONING_MS,
    SERVED,
    SeededHistory,
    expected_points,
    hour_ttft,
    seed_model_page,
)
from status_seed import BROKEN, EVIL, NANO, PAST_DAYS, ROUTER, WINDOWS, status_app

from routewatch.aggregator.model_state import DayUptime
from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.publish.display import format_error_rate, format_ttft
from routewatch.aggregator.publish.model_links import model_page_path, quote_model_id
from routewatch.aggregator.publish.model_page import embed_snippets
from routewatch.aggregator.publish.model_view import (
    RANGES,
    Chart,
    HourOfDay,
    Line,
    Point,
    chart_window,
    hour_profile,
)
from routewatch.aggregator.publish.status_page import uptime_text
from routewatch.aggregator.publish.status_view import DayBar, uptime_span
from routewatch.aggregator.publish.svg_chart import bar_chart, line_chart, nice_max
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import ConfigError, parse_config
from routewatch.storage.writer import write_batch

# ---------------------------------------------------------------- pure parts


@pytest.mark.unit
@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("openai/gpt-4o", "openai/gpt-4o"),
        ("a b?c#d", "a%20b%3Fc%23d"),
        ("a/../b", "a%2F%2E%2E%2Fb"),  # a browser would resolve the dot segment: every '/' encoded
        ("..", "%2E%2E"),
        ("a//b", "a%2F%2Fb"),
        ("évil/<x>", "%C3%A9vil/%3Cx%3E"),
    ],
)
def test_model_ids_are_quoted_into_paths_a_browser_keeps(model: str, path: str) -> None:
    assert quote_model_id(model) == path
    assert model_page_path(model) == "/status/models/" + path


@pytest.mark.unit
def test_uptime_says_what_span_it_was_measured_over() -> None:
    today = date(2026, 11, 30)
    days = tuple(DayBar(today - timedelta(days=89 - i), None) for i in range(90))
    assert uptime_text(None, uptime_span(days)) == "no uptime data yet"
    two_minutes = (*days[:-1], DayBar(today, DayUptime(operational=120.0)))
    span = uptime_span(two_minutes)
    assert span.first_day == today and span.recorded_s == 120.0 and not span.full
    assert uptime_text(1.0, span) == "100.00% uptime since 2026-11-30 (2 min of data)"
    unknown = uptime_span((*days[:-1], DayBar(today, DayUptime(unknown=3600.0))))
    assert uptime_text(None, unknown) == "uptime unknown since 2026-11-30 (1 h of data, none known)"
    full = tuple(DayBar(b.day, DayUptime(operational=86400.0)) for b in days)
    assert uptime_text(0.99951, uptime_span(full)) == "99.95% uptime over 90 days"


@pytest.mark.unit
def test_error_rate_is_never_rounded_down_to_zero() -> None:
    assert format_error_rate(None) == "—"
    assert format_error_rate(0.0) == "0.00%"
    assert format_error_rate(0.00001) == "0.01%"
    assert format_error_rate(0.25) == "25.00%"


@pytest.mark.unit
def test_chart_window_is_the_shortest_that_covers_a_bucket() -> None:
    assert chart_window({"1h": 3600, "24h": 86400, "7d": 604800}, 3600) == "1h"
    assert chart_window({"1h": 3600, "24h": 86400, "7d": 604800}, 86400) == "24h"
    assert chart_window({"15m": 900, "30m": 1800}, 86400) == "30m"  # none covers a day: the longest
    assert [nice_max(v) for v in (0, 0.7, 3, 412, 1001)] == [1.0, 1.0, 5.0, 500.0, 2000.0]


@pytest.mark.unit
def test_hour_profile_has_24_bars_and_the_median_of_each_hour() -> None:
    day = datetime(2026, 11, 20, tzinfo=UTC)
    rows = [
        {"bucket": day + timedelta(days=d, hours=14), "attempts": 10, "ok": 10, "ttft_p50_ms": v}
        for d, v in enumerate((100.0, 300.0, 200.0))
    ] + [{"bucket": day + timedelta(hours=3), "attempts": 4, "ok": 0, "ttft_p50_ms": None}]
    profile = hour_profile(rows)
    assert [h.hour for h in profile] == list(range(24))
    assert profile[14] == HourOfDay(14, 200.0, 3, 30)
    assert profile[3] == HourOfDay(3, None, 0, 4)  # probed, none ok: no bar height, but counted
    assert profile[0] == HourOfDay(0, None, 0, 0)


@pytest.mark.unit
def test_charts_escape_names_and_describe_themselves() -> None:
    start = datetime(2026, 11, 29, tzinfo=UTC)
    points = (Point(start, 412.0), Point(start + timedelta(hours=1), None), Point(start + timedelta(hours=2), 500.0))
    chart = Chart(
        'x"><script>', "TTFT <b>", "ms", RANGES[0], "1h<", start, start + timedelta(hours=24), (Line("p<50", points),)
    )
    svg = line_chart(chart)
    assert "<script" not in svg and "<b>" not in svg and "&lt;b&gt;" in svg
    assert svg.count("<circle") == 2 and svg.count("<polyline") == 0  # the gap splits the line: no segment of 2
    desc = re.search(r"<desc[^>]*>(.*?)</desc>", svg)
    assert desc is not None and "2 points, lowest 412 ms, highest 500 ms, latest 500 ms" in desc.group(1)
    assert "time (UTC)" in svg and "milliseconds" in svg
    bars = bar_chart([HourOfDay(h, 100.0 + h if h % 2 else None, 1, 2) for h in range(24)], 'p"<', 7)
    assert bars.count("<rect") == 24 and bars.count('class="bar nodata"') == 12 and 'p"<' not in bars


@pytest.mark.unit
def test_embed_snippets_are_ready_to_paste_and_inert() -> None:
    html, markdown = embed_snippets("openai/gpt-4o", "sim", "https://status.example.org/", several=False)
    assert html == (
        '<a href="https://status.example.org/status/models/openai/gpt-4o">'
        '<img src="https://status.example.org/badge/openai/gpt-4o.svg" alt="openai/gpt-4o on routewatch"></a>'
    )
    assert markdown == (
        "[![openai/gpt-4o on routewatch](https://status.example.org/badge/openai/gpt-4o.svg)]"
        "(https://status.example.org/status/models/openai/gpt-4o)"
    )
    html, markdown = embed_snippets('x/"><img src=y>[a](b)', "r", None, several=True)
    (a, img) = start_tags(html)  # one link around one image, whatever the id holds
    assert a[0] == "a" and img[0] == "img" and img[1]["alt"] == 'x/"><img src=y>[a](b) on routewatch'
    assert img[1]["src"].endswith("?router=r") and a[1]["href"].startswith("/status/models/x/")
    assert "\\[a\\]" in markdown and len(re.findall(r"(?<!\\)\]\(", markdown)) == 2  # the id's own "](" is escaped


@pytest.mark.unit
def test_public_url_is_checked_where_it_is_written() -> None:
    def load(value: str) -> str | None:
        return parse_config(MINIMAL_CONFIG + f"api: {{public_url: {value!r}}}\n", "probes.yaml").api.public_url

    assert parse_config(MINIMAL_CONFIG, "probes.yaml").api.public_url is None
    assert load("https://status.example.org/") == "https://status.example.org"
    for bad, says in (
        ("ftp://x.org", "must be an http:// or https:// URL"),
        ("https://user:pw@x.org", "remove the credentials"),
        ("https://x.org/?a=1", "must not have a query"),
    ):
        with pytest.raises(ConfigError) as excinfo:
            load(bad)
        message = str(excinfo.value)
        assert message.startswith("probes.yaml:8: api.public_url: ") and says in message, message
        assert "pw" not in message


# ---------------------------------------------------------------- a seeded database


@pytest.fixture
async def seeded(pool: asyncpg.Pool) -> tuple[Aggregator, SeededHistory]:
    return await seed_model_page(pool)


@pytest.mark.db
async def test_model_json_is_the_listing_entry_with_every_window(seeded, aiohttp_client) -> None:
    aggregator, _ = seeded
    client = await aiohttp_client(create_app(aggregator))
    listing = await (await client.get("/v1/models")).json()
    entry = next(m for m in listing["models"] if m["id"] == NANO)
    resp = await client.get(f"/v1/models/{NANO}")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert {k: body[k] for k in entry} == entry  # the listing's entry, unchanged
    assert body["routers"] == [ROUTER] and body["window"] == "7d" and body["state"] == "operational"
    assert list(body["windows"]) == list(WINDOWS)
    week = body["windows"]["7d"]
    assert set(week["breakdown"]) == {"provider", "region", "tier"}
    providers = week["breakdown"]["provider"]
    assert {"Alpha", "Beta"} <= set(providers)
    assert sum(c["samples"]["attempted"] for c in providers.values()) == week["samples"]["attempted"]
    # The stats route agrees with the full object, window by window.
    for window in WINDOWS:
        stats = await (await client.get(f"/v1/models/{NANO}/stats", params={"window": window})).json()
        assert {k: v for k, v in body["windows"][window].items() if k != "breakdown"} == stats
    again = await client.get(f"/v1/models/{NANO}", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


@pytest.mark.db
async def test_model_json_ids_with_slashes_and_errors(seeded, pool, aiohttp_client) -> None:
    aggregator, _ = seeded
    client = await aiohttp_client(create_app(aggregator))
    encoded = await client.get("/v1/models/openai%2Fgpt-4.1-nano")
    assert encoded.status == 200 and (await encoded.json())["id"] == NANO
    evil = await client.get("/v1/models/" + quote_model_id(EVIL))
    assert evil.status == 200 and (await evil.json())["id"] == EVIL
    for path, parameter in (("/v1/models/nobody/none", "id"), ("/v1/models/a%0Ab", "id")):
        resp = await client.get(path)
        assert resp.status == 404 and resp.content_type == "application/json", path
        error = (await resp.json())["error"]
        assert error["parameter"] == parameter and "no model" in error["message"]
    resp = await client.get(f"/v1/models/{NANO}", params={"window": "7d"})
    assert resp.status == 400 and (await resp.json())["error"]["parameter"] == "window"
    assert (await client.get(f"/v1/models/{NANO}/probe")).status == 405  # the POST-only sub-resource

    # A model whose id ends in a sub-resource's name: asked for with that '/' as %2F.
    async with pool.acquire() as conn:
        await write_batch(conn, [probe_result(router=ROUTER, model="odd/stats", ttft_ms=100.0)])
    odd = Aggregator(pool, WINDOWS, [(ROUTER, "odd/stats")], 10.0)
    await odd.refresh()
    odd_client = await aiohttp_client(create_app(odd))
    detail = await odd_client.get("/v1/models/odd%2Fstats")
    assert detail.status == 200 and (await detail.json())["id"] == "odd/stats"
    sub = await odd_client.get("/v1/models/odd/stats")  # the stats of a model "odd", which is not monitored
    assert sub.status == 404 and "'odd'" in (await sub.json())["error"]["message"]


@pytest.mark.db
async def test_model_page_charts_profile_shares_and_snippets(seeded, pool, aiohttp_client) -> None:
    aggregator, history = seeded
    client = await aiohttp_client(create_app(aggregator, public_url="https://rw.example.org"))
    resp = await client.get(model_page_path(NANO), headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none';")
    assert resp.headers["Cache-Control"] == "public, max-age=10"
    page = await resp.text()
    tags = start_tags(page)
    assert not [t for t, _ in tags if t == "script"]
    end = aggregator.snapshot.updated_at  # type: ignore[union-attr]

    # Each chart: one point per bucket, the last published value of its bucket.
    charts = [a["data-chart"] for t, a in tags if t == "svg" and "data-chart" in a]
    assert [c for c in charts if not c.startswith("profile")] == [
        f"{m}-{r}" for r in ("24h", "7d", "90d") for m in ("ttft", "ttfat", "tps", "errors")
    ]
    for (chart_id, window, unit, span), (metric, plus) in itertools.product(
        (
            ("24h", "1h", "hour", timedelta(hours=24)),
            ("7d", "1h", "hour", timedelta(days=7)),
            ("90d", "7d", "day", timedelta(days=90)),
        ),
        (("ttft", 0.0), ("ttfat", REASONING_MS)),  # TTFAT beside TTFT: the seeded model reasons
    ):
        chart_id = f"{metric}-{chart_id}"
        section = page.split(f'data-chart="{chart_id}"')[1].split("</svg>")[0]
        p50 = section.split('data-line="p50">')[1].split("</g>")[0]
        got = dict(re.findall(r'data-t="([^"]*)" data-v="([^"]*)"', p50))
        want = expected_points(history, window, unit, end - span, end, plus)
        assert {t: float(v) for t, v in got.items()} == want, chart_id
        assert want, chart_id  # the seed reaches every range
    assert 'data-window="1h"' in page and 'data-window="7d"' in page
    # The table puts TTFAT beside TTFT, and the note says what each one means.
    counts = aggregator.snapshot.stats["1h"][(ROUTER, NANO)].counts  # type: ignore[union-attr]
    assert counts.ttft_p50_ms is not None and counts.ttfat_p50_ms is not None
    assert counts.ttfat_p50_ms > counts.ttft_p50_ms + REASONING_MS / 2  # the window mixes in the status seed's
    row = page.split('<tr data-window="1h">')[1].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells[:4] == [
        format_ttft(v) for v in (counts.ttft_p50_ms, counts.ttft_p95_ms, counts.ttfat_p50_ms, counts.ttfat_p95_ms)
    ]
    assert "<b>TTFAT</b> the time to the first token of the answer itself" in page
    assert re.search(
        rf"In the last \w+, {BUDGET_EXHAUSTED} probes ran out of output budget while the model reasoned", page
    )
    hour = aggregator.snapshot.stats["1h"][(ROUTER, NANO)]  # type: ignore[union-attr]
    assert hour.cell is not None and hour.cell.budget_exhausted == BUDGET_EXHAUSTED
    async with pool.acquire() as conn:
        probed = await conn.fetchval(
            "SELECT count(*) FROM probe_results WHERE model = $1 AND started_at >= $2 AND NOT prober_overloaded",
            NANO,
            hour.window_start,
        )
    assert counts.attempts == probed - BUDGET_EXHAUSTED, "they are not attempts"
    assert "percentiles over ok probes of the 100-token prompt tier" in page, "the figures say which tier"

    # The time-of-day profile: 24 bars, each hour's seeded TTFT (within the histogram's resolution).
    bars = [a for t, a in tags if t == "rect" and "data-hour" in a]
    assert [int(b["data-hour"]) for b in bars] == list(range(24))
    for bar in bars:
        assert float(bar["data-v"]) == pytest.approx(hour_ttft(int(bar["data-hour"])), rel=0.02)

    # Providers and served models, with their shares of the probes.
    async with pool.acquire() as conn:
        served = dict(
            await conn.fetch(
                "SELECT model_served, count(*) FROM probe_results WHERE model = $1 AND started_at >= $2 GROUP BY 1",
                NANO,
                end - timedelta(days=7),
            )
        )
    total = sum(served.values())
    served_html = page.split('<ul class="shares served">')[1].split("</ul>")[0]
    for name in (SERVED, FALLBACK):
        assert f'<span class="label">{name}</span><span class="pct">{served[name] / total * 100:.1f}%' in served_html
    assert "not reported" in served_html  # the status seed's probes name no served model
    providers_html = page.split('<ul class="shares providers">')[1].split("</ul>")[0]
    assert "Alpha" in providers_html and "Beta" in providers_html and "no provider named" in providers_html

    # Incidents of this model only; uptime with its span; snippets with the public address.
    assert "#2 Down" in page and "#3 Down" not in page  # maintenance incident of NANO; BROKEN's open one is not
    assert "uptime since" in page and "of data)" in page
    assert (
        "&lt;a href=&quot;https://rw.example.org/status/models/openai/gpt-4.1-nano&quot;&gt;"
        "&lt;img src=&quot;https://rw.example.org/badge/openai/gpt-4.1-nano.svg&quot;" in page
    )
    assert (
        "[![openai/gpt-4.1-nano on routewatch](https://rw.example.org/badge/openai/gpt-4.1-nano.svg)]"
        "(https://rw.example.org/status/models/openai/gpt-4.1-nano)" in page
    )

    again = await client.get(model_page_path(NANO), headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    assert (await client.get(f"/status/models/{BROKEN}")).status == 200


@pytest.mark.db
async def test_model_page_of_hostile_names_injects_nothing(seeded, aiohttp_client) -> None:
    aggregator, _ = seeded
    client = await aiohttp_client(status_app(aggregator))
    resp = await client.get(model_page_path(EVIL))
    assert resp.status == 200
    page = await resp.text()
    tags = start_tags(page)
    assert active_parts(page) == []  # no script, frame or event handler, whatever the names held
    assert [a["src"] for t, a in tags if t == "img"] == ["/badge/" + quote_model_id(EVIL) + ".svg"]
    # The names are shown, as text.
    assert "evil/&lt;script&gt;alert(1)&lt;/script&gt;&amp;co" in page
    assert "&quot;&gt;&lt;svg onload=alert(1)&gt;" in page
    assert "&lt;/code&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert EVIL_PROVIDER not in page and EVIL_SERVED not in page
    # The status page links to it through a path a browser keeps.
    status = await (await client.get("/status")).text()
    assert f'href="{model_page_path(EVIL).replace("&", "&amp;")}"' in status


@pytest.mark.db
async def test_model_page_unknown_model_and_status_page_figures(seeded, aiohttp_client) -> None:
    aggregator, _ = seeded
    client = await aiohttp_client(status_app(aggregator))
    missing = await client.get("/status/models/no/such<model>")
    assert missing.status == 404 and missing.content_type == "text/html"
    assert "no/such&lt;model&gt;" in await missing.text()
    status = await (await client.get("/status")).text()
    nano = status.split(f'href="{model_page_path(NANO)}"')[1].split('<li class="model">')[0]
    assert re.search(r'errors <b class="errors">\d+\.\d\d%</b>', nano)
    # The seed's uptime rows start five days ago (status_seed.PAST_DAYS): the span says so, not "90 days".
    first = (aggregator.snapshot.updated_at.date() - timedelta(days=max(PAST_DAYS))).isoformat()
    assert re.search(rf"\d+\.\d\d% uptime since {first} \(5 d( \d+ h)? of data\)", nano), nano
    assert "over 90 days" not in status


@pytest.mark.db
async def test_model_page_is_read_once_per_refresh(seeded, pool, aiohttp_client) -> None:
    """Within one refresh the page is served from memory (concurrent requests share one render);
    the next refresh reads the history again."""
    aggregator, _ = seeded
    client = await aiohttp_client(status_app(aggregator))
    path = model_page_path(NANO)
    first = await asyncio.gather(*(client.get(path) for _ in range(8)))
    bodies = {await r.text() for r in first}
    assert {r.status for r in first} == {200} and len(bodies) == 1
    (page,) = bodies
    assert 'data-chart="ttft-24h"' in page and "data-v=" in page.split('data-chart="ttft-24h"')[1].split("</svg>")[0]

    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM stats_history WHERE model = $1", NANO)
    assert await (await client.get(path)).text() == page  # same refresh: the stored body, no read

    await aggregator.refresh()
    after = await (await client.get(path)).text()
    ttft = after.split('data-chart="ttft-24h"')[1].split("</svg>")[0]
    assert "data-v=" not in ttft and "no data in this range yet" in ttft


@pytest.mark.db
async def test_unreadable_history_is_a_503_page_and_nothing_is_cached(seeded, pool, aiohttp_client) -> None:
    aggregator, _ = seeded
    client = await aiohttp_client(status_app(aggregator))
    path = model_page_path(NANO)
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE stats_history RENAME TO stats_history_away")
    try:
        resp = await client.get(path)
        assert resp.status == 503 and resp.content_type == "text/html"
        assert resp.headers["Retry-After"] == "5" and resp.headers["Cache-Control"] == "no-cache"
        assert "cannot be read right now" in await resp.text()
    finally:
        async with pool.acquire() as conn:
            await conn.execute("ALTER TABLE stats_history_away RENAME TO stats_history")
    again = await client.get(path)  # the failure was not cached: the same refresh now serves the page
    assert again.status == 200 and 'data-chart="ttft-24h"' in await again.text()
