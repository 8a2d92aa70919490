"""The status page: pure rendering (escaping, unknown days, states, missing figures) and its HTTP routes.

The renderers are tested on hand-built views; the routes on a real
database seeded through probes and an aggregator refresh (status_seed.py),
called through aiohttp's test client.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from status_seed import (
    BROKEN,
    CLOSED_ID,
    EVIL,
    MAINTENANCE_ID,
    MODELS,
    NANO,
    NANO_TPS,
    NANO_TTFT_MS,
    OPEN_ID,
    PAST_LEVELS,
    ROUTER,
    SLO,
    WINDOWS,
    seed_status,
    status_app,
)
from uptime_strips import strip_levels, strip_titles

from routewatch.aggregator.model_state import (
    UPTIME_DAYS,
    DayUptime,
    Incident,
    ModelStatus,
    State,
)
from routewatch.aggregator.model_state_store import StatusReport
from routewatch.aggregator.publish.display import (
    MISSING,
    format_duration,
    format_percent,
    format_price,
    format_tps,
    format_ttft,
)
from routewatch.aggregator.publish.status_page import (
    BANNERS,
    bar_text,
    render_message_page,
    render_status_page,
)
from routewatch.aggregator.publish.status_view import (
    DayBar,
    RouteFigures,
    build_view,
    day_level,
    view_json,
)
from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.schema import ensure_schema

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TODAY = T0.date()
NASTY = "x/<img src=x onerror=alert(1)>\"'&amp;"


def _status(model: str, state: State, reason: str = "") -> ModelStatus:
    return ModelStatus(model, state, T0 - timedelta(minutes=5), 0, 0, reason, False, T0)


def _report(*models: ModelStatus, open_: tuple[Incident, ...] = (), recent: tuple[Incident, ...] = ()) -> StatusReport:
    return StatusReport(T0, tuple(models), open_, recent)


def _rows(page: str) -> list[str]:
    """The markup of each model's row, in page order."""
    return page.split('<li class="model">')[1:]


# ---------------------------------------------------------------- day levels


@pytest.mark.unit
@pytest.mark.parametrize(
    ("uptime", "level"),
    [
        (None, "unknown"),  # no row: no data
        (DayUptime(), "unknown"),  # a row with nothing recorded
        (DayUptime(unknown=3600), "unknown"),  # only unknown time
        (DayUptime(operational=1000, unknown=1001), "unknown"),  # mostly unknown, never up
        (DayUptime(operational=1000, unknown=1000), "up"),  # exactly half unknown: the known half decides
        (DayUptime(operational=86400), "up"),
        (DayUptime(operational=99_900, down=100), "up"),  # 99.9%
        (DayUptime(operational=99_500, degraded=500), "minor"),
        (DayUptime(operational=96_000, down=4000), "partial"),
        (DayUptime(operational=50, down=50), "major"),
        (DayUptime(down=86400), "major"),
    ],
)
def test_day_level(uptime: DayUptime | None, level: str) -> None:
    assert day_level(uptime) == level


@pytest.mark.unit
def test_bar_text_gives_the_day_and_its_percentages() -> None:
    day = date(2025, 5, 30)
    assert bar_text(DayBar(day, None)) == "2025-05-30: no data"
    assert bar_text(DayBar(day, DayUptime(unknown=60))) == "2025-05-30: unknown (100.00% of the time unknown)"
    up = bar_text(DayBar(day, DayUptime(operational=99_000, degraded=600, down=400)))
    assert up == "2025-05-30: 99.00% up (degraded 0.60%, down 0.40%); 0.00% of the time unknown"
    mostly = bar_text(DayBar(day, DayUptime(operational=20_000, unknown=60_000)))
    assert mostly.startswith("2025-05-30: mostly unknown (75.00% of the time unknown); 100.00% up when known")
    assert bar_text(DayBar(day, DayUptime(operational=10)), today=True).startswith("2025-05-30 (today, so far): ")


# ---------------------------------------------------------------- formatting


@pytest.mark.unit
@pytest.mark.parametrize(
    ("price", "text"),
    [
        (None, MISSING),
        (0.0, "$0"),
        (0.1, "$0.10"),
        (2.5, "$2.50"),
        (15.0, "$15"),
        (0.075, "$0.075"),
        (0.0375, "$0.0375"),
        (1250.0, "$1,250"),
        (1234.5678, "$1,234.5678"),
        (1.5e-7, "$1.5e-07"),
    ],
)
def test_format_price(price: float | None, text: str) -> None:
    assert format_price(price) == text


@pytest.mark.unit
def test_missing_figures_read_as_a_dash() -> None:
    assert format_ttft(None) == format_tps(None) == format_percent(None) == MISSING
    assert format_ttft(412.4) == "412 ms" and format_ttft(1234.0) == "1,234 ms"
    assert format_tps(85.23) == "85.2 tok/s" and format_tps(123.4) == "123 tok/s"
    assert format_percent(0.99999) == "99.99%"  # truncated: never reads as 100% when it was not
    assert format_percent(1.0) == "100.00%"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5 s"),
        (60, "1 min"),
        (900, "15 min"),
        (7500, "2 h 5 min"),
        (7200, "2 h"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
        (-3, "0 s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ---------------------------------------------------------------- rendering


@pytest.mark.unit
def test_every_name_is_escaped_in_text_and_attributes() -> None:
    incident = Incident(4, T0 - timedelta(minutes=5), None, State.DOWN, frozenset({NASTY}), False)
    report = _report(_status(NASTY, State.DOWN, reason='<b>boom</b> & "quoted"'), open_=(incident,))
    uptime = {(NASTY, TODAY): DayUptime(operational=10)}
    view = build_view(report, None, uptime, TODAY)
    page = render_status_page(view)
    assert "<img" not in page and "<b>boom" not in page
    assert "x/&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;amp;" in page  # name, in text and attributes
    assert "&lt;b&gt;boom&lt;/b&gt; &amp; &quot;quoted&quot;" in page
    title = "Uptime of x/&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;amp;, 90 days: 1 up, 89 no data or unknown"
    assert strip_titles(page) == [title]
    # No attribute value is left open by a quote in a name: every tag is well formed.
    assert not re.search(r'="[^"]*<', page)


@pytest.mark.unit
def test_router_names_are_escaped_and_shown_with_their_figures() -> None:
    report = _report(_status(NANO, State.OPERATIONAL))
    view = build_view(report, None, {}, TODAY)
    row = replace(view.models[0], routes=(RouteFigures("r<1>", 412.0, 85.2, 0.1, ttfat_p50_ms=1650.0),))
    page = render_status_page(replace(view, models=(row,)))
    assert 'via <span class="router">r&lt;1&gt;</span>' in page
    assert 'TTFT <b class="ttft">412 ms</b>' in page and '<b class="tps">85.2 tok/s</b>' in page
    # A reasoning model: its answer starts well after its first (reasoning) token; the intro says what each means,
    # once for the whole page.
    assert page.count('<abbr title="time to first answer token: for a reasoning model, after its reasoning">') == 1
    assert 'TTFAT <b class="ttfat">1,650 ms</b>' in page
    assert "$0.10/M input tokens" in page


@pytest.mark.unit
@pytest.mark.parametrize("state", list(State))
def test_states_have_their_banner_label_and_colour_class(state: State) -> None:
    page = render_status_page(build_view(_report(_status(NANO, state)), None, {}, TODAY))
    assert f'<section class="banner s-{state.value}" role="status">{BANNERS[state]}</section>' in page
    label = {"operational": "Operational", "degraded": "Degraded", "down": "Down", "unknown": "Unknown"}
    assert f'<span class="state s-{state.value}">{label[state.value]}</span>' in page
    assert f".state.s-{state.value}{{" in page  # each state class has a colour in the CSS


@pytest.mark.unit
def test_missing_numbers_are_dashes_never_none() -> None:
    report = _report(_status(NANO, State.UNKNOWN, "no probe in the last 15m"), _status(BROKEN, State.DOWN))
    page = render_status_page(build_view(report, None, {}, TODAY))
    assert "None" not in page
    assert page.count(f'<b class="ttft">{MISSING}</b>') == 2 and page.count(f'<b class="tps">{MISSING}</b>') == 2
    assert page.count(f'<b class="errors">{MISSING}</b>') == 2  # nothing attempted: no error rate, not 0%
    assert page.count("no uptime data yet") == 2 and "over 90 days" not in page  # nothing known in 90 days


@pytest.mark.unit
def test_unknown_days_are_striped_and_listed_in_the_legend_never_up() -> None:
    uptime = {
        (NANO, TODAY - timedelta(days=1)): DayUptime(operational=16400, unknown=70000),
        (NANO, TODAY): DayUptime(operational=600),
    }
    page = render_status_page(build_view(_report(_status(NANO, State.OPERATIONAL)), None, uptime, TODAY))
    (levels,) = strip_levels(page)
    # No data for 88 days, then a mostly unknown day: both drawn unknown, never up; today up.
    assert levels == ["unknown"] * (UPTIME_DAYS - 1) + ["up"]
    assert strip_titles(page) == [f"Uptime of {NANO}, 90 days: 1 up, 89 no data or unknown"]
    # Two runs, so two paths: the strip does not grow with the days.
    assert page.count('<path class="l-') == 2 and 'd="M0 .5h89"' in page and 'd="M89 .5h1"' in page
    assert "no data or mostly unknown</li>" in page  # legend
    assert ".l-unknown{background:repeating-linear-gradient" in page  # legend swatch striped grey
    assert ".strip .l-unknown{stroke:url(#unk)}" in page and '<pattern id="unk"' in page  # the strip's stripes
    # The per-day figures are the model page's: no per-day element or title here.
    assert '<li class="bar' not in page and "(today, so far)" not in page


@pytest.mark.unit
def test_strip_draws_each_day_at_its_level_in_at_most_one_path_per_level() -> None:
    levels = ["up", "minor", "partial", "major"]
    # Days cycling through the levels in runs of 1 to 4 days, some with no row at all.
    uptime = {}
    shares = {"up": 1.0, "minor": 0.995, "partial": 0.97, "major": 0.5}
    expected = []
    for i in range(UPTIME_DAYS):
        day = TODAY - timedelta(days=UPTIME_DAYS - 1 - i)
        level = levels[(i // (1 + i % 4)) % 4] if i % 11 else "unknown"
        expected.append(level)
        if level != "unknown":
            uptime[(NANO, day)] = DayUptime(operational=86400 * shares[level], down=86400 * (1 - shares[level]))
    page = render_status_page(build_view(_report(_status(NANO, State.OPERATIONAL)), None, uptime, TODAY))
    assert strip_levels(page) == [expected]
    assert page.count('<path class="l-') == len(set(expected))  # one per level, however many runs
    counts = ", ".join(f"{expected.count(lv)} {lv}" for lv in levels)
    assert strip_titles(page) == [
        f"Uptime of {NANO}, 90 days: {counts}, {expected.count('unknown')} no data or unknown"
    ]


@pytest.mark.unit
def test_models_are_grouped_by_state_with_the_ones_in_trouble_first() -> None:
    report = _report(
        _status("a/up", State.OPERATIONAL),
        _status("b/down", State.DOWN, "4 consecutive failed probes"),
        _status("c/slow", State.DEGRADED, "slow"),
        _status("d/up", State.OPERATIONAL),
        _status("e/nodata", State.UNKNOWN, "no probe in the last 15m"),
    )
    page = render_status_page(build_view(report, None, {}, TODAY))
    headings = re.findall(r'<h3 id="g-(\w+)">([^<]*)</h3>', page)
    assert headings == [
        ("down", "Down (1)"),
        ("degraded", "Degraded (1)"),
        ("unknown", "Unknown (1)"),
        ("operational", "Operational (2)"),
    ]
    names = [re.findall(r'<a class="name" href="[^"]*">([^<]*)</a>', row)[0] for row in _rows(page)]
    assert names == ["b/down", "c/slow", "e/nodata", "a/up", "d/up"]
    assert (
        '<p class="counts">5 models: <a href="#g-down">1 down</a> · <a href="#g-degraded">1 degraded</a>'
        ' · <a href="#g-unknown">1 unknown</a> · <a href="#g-operational">2 operational</a></p>' in page
    )
    # Since when: for a model in trouble; an operational model's is on its page.
    since = ["since <time" in row for row in _rows(page)]
    assert since == [True, True, True, False, False]


@pytest.mark.unit
def test_the_page_stays_small_with_thousands_of_models() -> None:
    """2,000 models, each with 90 days of data and a bad day every ninth: under 1 KB of HTML a model."""
    statuses = [_status(f"vendor{i % 7}/model-{i:04d}", State.OPERATIONAL) for i in range(2000)]
    uptime = {
        (s.model, TODAY - timedelta(days=d)): DayUptime(operational=86000, down=400 if (d + i) % 9 == 0 else 0)
        for i, s in enumerate(statuses)
        for d in range(UPTIME_DAYS)
    }
    page = render_status_page(build_view(_report(*statuses), None, uptime, TODAY)).encode()
    assert len(page) / len(statuses) < 1000, len(page)
    assert len(strip_levels(page.decode())) == len(statuses) and all(s.model.encode() in page for s in statuses)


@pytest.mark.unit
def test_incidents_open_and_recent() -> None:
    open_ = Incident(3, T0 - timedelta(minutes=15), None, State.DOWN, frozenset({BROKEN}), False)
    closed = Incident(
        2,
        T0 - timedelta(days=1),
        T0 - timedelta(days=1) + timedelta(hours=2, minutes=5),
        State.DEGRADED,
        frozenset({NANO, BROKEN}),
        True,
    )
    report = _report(_status(BROKEN, State.DOWN), open_=(open_,), recent=(closed,))
    page = render_status_page(build_view(report, None, {}, TODAY))
    assert '<li class="incident w-down"><span class="tag">#3 Down</span>' in page
    assert "started <time" in page and "ongoing for 15 min" in page
    assert '<li class="incident w-degraded"><span class="tag">#2 Degraded</span>' in page
    assert "(2 h 5 min)" in page and "planned maintenance" in page
    assert page.index("Open incidents") < page.index("Models") < page.index("Recent incidents")


@pytest.mark.unit
def test_no_script_and_a_viewport_for_narrow_screens() -> None:
    page = render_status_page(build_view(_report(_status(NANO, State.OPERATIONAL)), None, {}, TODAY))
    assert "<script" not in page.lower()
    assert not re.search(r"<[^>]*\son\w+=", page)  # no event handler attributes either
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media (max-width:600px)" in page
    assert 'Updated <time datetime="2025-06-01T12:00:00+00:00">2025-06-01 12:00 UTC</time>' in page


@pytest.mark.unit
def test_message_page_escapes_and_is_a_whole_document() -> None:
    page = render_message_page("Model status", "a <b> & c")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert "a &lt;b&gt; &amp; c" in page


@pytest.mark.unit
def test_view_json_has_ninety_days_per_model_and_nulls_for_missing() -> None:
    uptime = {(NANO, TODAY): DayUptime(operational=90, down=10)}
    body = view_json(build_view(_report(_status(NANO, State.DEGRADED, "slow")), None, uptime, TODAY))
    assert body["overall"] == "degraded" and body["window"] is None and body["stats_updated_at"] is None
    assert body["tier"] is None  # no figures, no tier
    (model,) = body["models"]
    assert model["id"] == NANO and model["state"] == "degraded" and model["reason"] == "slow"
    assert model["routers"] == [] and model["uptime_90d"] == 0.9
    assert len(model["uptime"]) == UPTIME_DAYS
    assert model["uptime"][0] == {
        "day": (TODAY - timedelta(days=89)).isoformat(),
        "level": "unknown",
        "fraction_up": None,
        "operational_s": 0.0,
        "degraded_s": 0.0,
        "down_s": 0.0,
        "unknown_s": 0.0,
    }
    assert model["uptime"][-1]["level"] == "major" and model["uptime"][-1]["fraction_up"] == 0.9


# ---------------------------------------------------------------- HTTP, on a seeded database


@pytest.fixture
async def seeded(pool: asyncpg.Pool) -> Aggregator:
    return await seed_status(pool)


@pytest.mark.db
async def test_status_page_shows_states_figures_bars_and_incidents(seeded, pool, aiohttp_client) -> None:
    client = await aiohttp_client(status_app(seeded))
    resp = await client.get("/status", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200 and resp.content_type == "text/html" and resp.charset == "utf-8"
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Cache-Control"] == "public, max-age=10"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none';")  # no script could run
    page = await resp.text()
    assert BANNERS[State.DOWN] in page
    for levels in strip_levels(page):
        assert len(levels) == UPTIME_DAYS and {ago: levels[-1 - ago] for ago in PAST_LEVELS} == PAST_LEVELS
    assert "<script" not in page and "evil/&lt;script&gt;alert(1)&lt;/script&gt;&amp;co" in page
    # The down model first, then the operational ones by id.
    assert [re.findall(r'class="name" href="[^"]*">([^<]*)<', row)[0] for row in _rows(page)] == [
        BROKEN,
        "evil/&lt;script&gt;alert(1)&lt;/script&gt;&amp;co",
        NANO,
    ]
    nano = _rows(page)[2]
    assert nano.startswith(f'<div class="model-head"><a class="name" href="/status/models/{NANO}">{NANO}</a>')
    assert (
        re.search(r'<b class="ttft">(\d+) ms</b>', nano)
        and f'$0.10/M input tokens · via <span class="router">{ROUTER}' in nano
    )
    assert f"#{OPEN_ID} Down" in page and f"#{CLOSED_ID} Degraded" in page and f"#{MAINTENANCE_ID} Down" in page
    assert "Figures are medians (p50) over the last 7d, of the 100-token prompt tier." in page, "they say which tier"

    again = await client.get("/status", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""


SECONDS = ("operational_s", "degraded_s", "down_s", "unknown_s")


@pytest.mark.db
async def test_status_json_shape(seeded, pool, aiohttp_client) -> None:
    client = await aiohttp_client(status_app(seeded))
    resp = await client.get("/status.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {
        "updated_at",
        "stats_updated_at",
        "window",
        "tier",
        "overall",
        "models",
        "incidents",
        "budget_note",
    }
    assert body["tier"] == "100", "the figures say which prompt tier they are of"
    assert body["budget_note"] is None  # no budget: nothing paused
    assert body["overall"] == "down" and body["window"] == "7d"
    models = {m["id"]: m for m in body["models"]}
    assert list(models) == list(MODELS)
    assert {m: models[m]["state"] for m in MODELS} == {BROKEN: "down", EVIL: "operational", NANO: "operational"}
    (nano,) = models[NANO]["routers"]
    assert nano["router"] == ROUTER and nano["input_price_per_mtok"] == 0.1
    assert nano["ttft_p50_ms"] == pytest.approx(NANO_TTFT_MS, rel=0.05)
    assert nano["tps_p50"] == pytest.approx(NANO_TPS, rel=0.05)
    assert models[BROKEN]["routers"][0]["ttft_p50_ms"] is None  # never an ok probe
    assert nano["ttfat_p50_ms"] is None and models[BROKEN]["routers"][0]["ttfat_p50_ms"] is None  # none seeded
    assert nano["error_rate"] == 0.0 and models[BROKEN]["routers"][0]["error_rate"] == 1.0
    for model in models.values():
        days = model["uptime"]
        assert len(days) == UPTIME_DAYS
        assert {ago: days[-1 - ago]["level"] for ago in PAST_LEVELS} == PAST_LEVELS
        # The uptime covers five seeded days and today's minutes, not 90 days.
        measured = model["uptime_measured"]
        assert measured["since"] == days[-6]["day"] and measured["full"] is False
        assert measured["recorded_s"] == pytest.approx(sum(sum(d[k] for k in SECONDS) for d in days))
    assert [i["id"] for i in body["incidents"]["open"]] == [OPEN_ID]
    assert [i["id"] for i in body["incidents"]["recent"]] == [CLOSED_ID, MAINTENANCE_ID]


@pytest.mark.db
@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("", [OPEN_ID, CLOSED_ID, MAINTENANCE_ID]),
        ("?state=open", [OPEN_ID]),
        ("?state=closed", [CLOSED_ID, MAINTENANCE_ID]),
        ("?limit=2", [OPEN_ID, CLOSED_ID]),
        ("?state=closed&limit=1", [CLOSED_ID]),
        ("?state=all&limit=500", [OPEN_ID, CLOSED_ID, MAINTENANCE_ID]),
    ],
)
async def test_incidents_list(seeded, pool, aiohttp_client, query: str, ids: list[int]) -> None:
    client = await aiohttp_client(status_app(seeded))
    resp = await client.get("/v1/incidents" + query)
    assert resp.status == 200
    body = await resp.json()
    assert [i["id"] for i in body["incidents"]] == ids
    first = body["incidents"][0]
    assert set(first) == {"id", "start", "end", "worst_state", "models", "suppressed"}
    maintenance = next((i for i in body["incidents"] if i["id"] == MAINTENANCE_ID), None)
    assert maintenance is None or (maintenance["suppressed"] is True and maintenance["models"] == [NANO])


@pytest.mark.db
@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=%2B5", "limit"),
        ("?state=opened", "state"),
    ],
)
async def test_incidents_bad_parameters_are_400(seeded, pool, aiohttp_client, query: str, parameter: str) -> None:
    client = await aiohttp_client(status_app(seeded))
    resp = await client.get("/v1/incidents" + query)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["status"] == 400 and error["parameter"] == parameter and error["message"]


@pytest.mark.db
async def test_disabled_status_is_a_clear_page_not_an_error(pool, aiohttp_client) -> None:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    aggregator = Aggregator(pool, WINDOWS, [(ROUTER, NANO)], 10.0)  # no SLO
    await aggregator.refresh()
    client = await aiohttp_client(status_app(aggregator))
    resp = await client.get("/status")
    assert resp.status == 200 and "not enabled" in await resp.text()
    assert (await client.get("/status.json")).status == 404
    assert (await client.get("/v1/incidents")).status == 404


@pytest.mark.db
async def test_status_not_computed_yet(pool, aiohttp_client) -> None:
    aggregator = Aggregator(pool, WINDOWS, [(ROUTER, NANO)], 10.0, slo=SLO, probe_interval_s=60.0)  # not refreshed
    client = await aiohttp_client(status_app(aggregator))
    resp = await client.get("/status")
    assert resp.status == 200 and "not been computed yet" in await resp.text()
    assert resp.headers["Cache-Control"] == "public, max-age=5"
    resp = await client.get("/status.json")
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert (await client.get("/v1/incidents")).status == 503


@pytest.mark.db
async def test_a_refresh_publishes_a_new_page(seeded, pool, aiohttp_client) -> None:
    client = await aiohttp_client(status_app(seeded))
    first = await client.get("/status.json")
    assert (await client.get("/status.json")).headers["ETag"] == first.headers["ETag"]  # memoised per refresh
    await seeded.refresh()
    second = await client.get("/status.json")
    assert second.headers["ETag"] != first.headers["ETag"]
    assert (await second.json())["updated_at"] > (await first.json())["updated_at"]


@pytest.mark.unit
def test_no_models_yet_says_so_without_a_count_line() -> None:
    page = render_status_page(build_view(_report(), None, {}, TODAY))
    assert '<p class="muted">No models are monitored yet.</p>' in page
    assert 'class="counts"' not in page and '<svg class="strip"' not in page and "<h3" not in page


@pytest.mark.unit
def test_a_retired_model_keeps_its_mark_and_its_strip() -> None:
    view = build_view(_report(_status(NANO, State.UNKNOWN, "not listed")), None, {}, TODAY)
    page = render_status_page(replace(view, models=(replace(view.models[0], retired=True),)))
    (row,) = _rows(page)
    head = row.split("</div>", 1)[0]
    assert f'>{NANO}</a> <span class="retired"' in head and 'class="state s-unknown">Unknown<' in head
    assert strip_levels(row) == [["unknown"] * UPTIME_DAYS]
