"""Badges: valid, escaped SVG with estimated text widths, and the /badge routes on a seeded database."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

import asyncpg
import pytest
from status_seed import BROKEN, EVIL, NANO, ROUTER, WINDOWS, seed_status, status_app

from routewatch.aggregator.model_state import State
from routewatch.aggregator.publish.badges import (
    CHAR_WIDTHS,
    COLORS,
    DEFAULT_WIDTH,
    INFO_COLOR,
    PADDING,
    model_badge,
    model_badge_value,
    render_badge,
    status_badge,
    text_width,
)
from routewatch.aggregator.publish.display import MISSING
from routewatch.aggregator.publish.status_view import RouteFigures
from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.schema import ensure_schema

SVG_NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    width = float(root.attrib["width"])
    assert root.attrib["height"] == "20"
    assert root.attrib["viewBox"] == f"0 0 {root.attrib['width']} 20"
    left, right = (
        float(r.attrib["width"])
        for r in root.iter(f"{SVG_NS}rect")
        if "fill" in r.attrib and not r.attrib["fill"].startswith(("url", "#fff"))
    )
    assert left + right == pytest.approx(width)
    return root


def _texts(root: ET.Element) -> list[str]:
    # The shadow copy of each text is aria-hidden; what is read is the other one.
    return [t.text or "" for t in root.iter(f"{SVG_NS}text") if "aria-hidden" not in t.attrib]


def _fill(root: ET.Element) -> str:
    return next(r.attrib["fill"] for r in root.iter(f"{SVG_NS}rect") if "x" in r.attrib)


# ---------------------------------------------------------------- rendering


@pytest.mark.unit
def test_badge_is_valid_svg_with_label_value_and_title() -> None:
    root = _parse(render_badge("status", "operational", "#4c1"))
    assert _texts(root) == ["status", "operational"]
    assert root.find(f"{SVG_NS}title").text == "status: operational"  # type: ignore[union-attr]
    assert root.attrib["role"] == "img" and root.attrib["aria-label"] == "status: operational"
    label_w = text_width("status") + 2 * PADDING
    assert float(root.attrib["width"]) == pytest.approx(label_w + text_width("operational") + 2 * PADDING, abs=0.1)


@pytest.mark.unit
def test_every_text_is_xml_escaped() -> None:
    nasty_label, nasty_value = "a<b>&\"'", "x</text><script>alert(1)</script>"
    svg = render_badge(nasty_label, nasty_value, '"/><script/>', title="t<&>")
    root = _parse(svg)
    assert _texts(root) == [nasty_label, nasty_value]
    assert root.find(f"{SVG_NS}title").text == "t<&>"  # type: ignore[union-attr]
    assert not list(root.iter(f"{SVG_NS}script")) and "<script" not in svg


@pytest.mark.unit
def test_characters_xml_forbids_are_replaced() -> None:
    root = _parse(render_badge("a\x01b", "ok", "#4c1"))
    assert _texts(root)[0] == "a\ufffdb"


@pytest.mark.unit
def test_text_width_from_the_table() -> None:
    assert text_width("") == 0
    assert text_width("0") == CHAR_WIDTHS["0"] == 6.99
    assert text_width("mmm") > text_width("iii")
    assert text_width("é") == DEFAULT_WIDTH  # not in the table: a wide guess
    assert text_width(MISSING) == CHAR_WIDTHS[MISSING]
    assert all(32 <= ord(c) < 127 or c in (MISSING, "·") for c in CHAR_WIDTHS)
    assert len([c for c in CHAR_WIDTHS if 32 <= ord(c) < 127]) == 95  # every printable ASCII character


@pytest.mark.unit
@pytest.mark.parametrize(
    ("route", "value"),
    [
        (RouteFigures("orcarouter", 412.3, 80.0, 0.1), "$0.10/M in · p50 412 ms · via orcarouter"),
        (RouteFigures("orcarouter", 412.3, 80.0, 0.075), "$0.075/M in · p50 412 ms · via orcarouter"),
        (RouteFigures("orcarouter", 1234.0, None, None), "p50 1,234 ms · via orcarouter"),  # no price configured
        (RouteFigures("sim", None, None, 2.0), f"$2/M in · p50 {MISSING} · via sim"),  # never measured
    ],
)
def test_model_badge_value(route: RouteFigures, value: str) -> None:
    assert model_badge_value(route) == value
    assert "None" not in model_badge("a/b", route, None, "7d")


@pytest.mark.unit
@pytest.mark.parametrize("state", list(State))
def test_colours_follow_the_state(state: State) -> None:
    assert _fill(_parse(status_badge("status", state))) == COLORS[state]
    route = RouteFigures("sim", 400.0, 50.0, None)
    assert _fill(_parse(model_badge(NANO, route, state, "7d"))) == COLORS[state]


@pytest.mark.unit
def test_model_badge_without_status_is_blue_and_titled() -> None:
    root = _parse(model_badge(NANO, RouteFigures("sim", 400.0, 50.0, 0.1), None, "7d"))
    assert _fill(root) == INFO_COLOR
    title = root.find(f"{SVG_NS}title").text  # type: ignore[union-attr]
    assert title == f"{NANO}: $0.10 per 1M input tokens, p50 TTFT 400 ms over 7d, via sim"


@pytest.mark.unit
def test_a_reasoning_models_badge_titles_its_ttfat_too() -> None:
    route = RouteFigures("sim", 400.0, 50.0, None, ttfat_p50_ms=2400.0)
    root = _parse(model_badge(NANO, route, None, "7d"))
    title = root.find(f"{SVG_NS}title").text  # type: ignore[union-attr]
    assert title == f"{NANO}: p50 TTFT 400 ms, p50 TTFAT 2,400 ms over 7d, via sim"
    assert model_badge_value(route) == "p50 400 ms · via sim", "the badge's own text stays short"


@pytest.mark.unit
def test_ids_are_unique_per_badge() -> None:
    a, b = render_badge("a", "1", "#4c1"), render_badge("b", "2", "#4c1")
    ids = [ET.fromstring(x).find(f"{SVG_NS}clipPath").attrib["id"] for x in (a, b)]  # type: ignore[union-attr]
    assert ids[0] != ids[1]


# ---------------------------------------------------------------- HTTP, on a seeded database


@pytest.fixture
async def client(pool: asyncpg.Pool, aiohttp_client):
    return await aiohttp_client(status_app(await seed_status(pool)))


def _url(model: str) -> str:
    return "/badge/" + quote(model, safe="/") + ".svg"


async def _svg(resp) -> ET.Element:
    assert resp.content_type == "image/svg+xml"
    return _parse(await resp.text())


@pytest.mark.db
async def test_model_badge_shows_price_ttft_and_router(client) -> None:
    resp = await client.get(_url(NANO))
    assert resp.status == 200 and resp.headers["Cache-Control"] == "public, max-age=10"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none';")  # opened directly, still inert
    root = await _svg(resp)
    label, value = _texts(root)
    assert label == NANO
    assert value.startswith("$0.10/M in · p50 ") and value.endswith(f" ms · via {ROUTER}")
    assert _fill(root) == COLORS[State.OPERATIONAL]
    again = await client.get(_url(NANO), headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


@pytest.mark.db
async def test_model_badge_without_price_or_ttft(client) -> None:
    root = await _svg(await client.get(_url(BROKEN)))
    assert _texts(root) == [BROKEN, f"p50 {MISSING} · via {ROUTER}"]
    assert _fill(root) == COLORS[State.DOWN]


@pytest.mark.db
async def test_a_model_id_with_markup_is_escaped(client) -> None:
    resp = await client.get(_url(EVIL))
    assert resp.status == 200
    svg = await resp.text()
    assert "<script" not in svg
    assert _texts(_parse(svg))[0] == EVIL


@pytest.mark.db
async def test_unknown_model_or_router_is_a_404_badge(client) -> None:
    resp = await client.get("/badge/nobody/nothing.svg")
    assert resp.status == 404
    assert _texts(await _svg(resp)) == ["nobody/nothing", "unknown model"]
    resp = await client.get(_url(NANO) + "?router=elsewhere")
    assert resp.status == 404 and _texts(await _svg(resp))[1] == "not via elsewhere"
    assert (await client.get(_url(NANO) + f"?router={ROUTER}")).status == 200


@pytest.mark.db
async def test_status_badges(client) -> None:
    root = await _svg(await client.get("/badge/status.svg"))
    assert _texts(root) == ["status", "down"] and _fill(root) == COLORS[State.DOWN]
    root = await _svg(await client.get("/badge/status.svg", params={"model": NANO}))
    assert _texts(root) == [NANO, "operational"]
    resp = await client.get("/badge/status.svg", params={"model": "nobody/nothing"})
    assert resp.status == 404 and _texts(await _svg(resp)) == ["nobody/nothing", "unknown model"]


@pytest.mark.db
async def test_badges_without_status_or_before_the_first_refresh(pool, aiohttp_client) -> None:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    aggregator = Aggregator(pool, WINDOWS, [(ROUTER, NANO)], 10.0)  # no SLO
    client = await aiohttp_client(status_app(aggregator))
    resp = await client.get(_url(NANO))
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert _texts(await _svg(resp)) == [NANO, "pending"]
    await aggregator.refresh()
    root = await _svg(await client.get(_url(NANO)))
    assert _fill(root) == INFO_COLOR and _texts(root) == [NANO, f"$0.10/M in · p50 {MISSING} · via {ROUTER}"]
    resp = await client.get("/badge/status.svg")
    assert resp.status == 404 and _texts(await _svg(resp)) == ["status", "not enabled"]
