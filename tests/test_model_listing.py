"""Reading a router's model list: the real simulator on loopback, paged, priced, and hostile.

The simulator's record of the pages it served is the ground truth for what the
reader had to follow; its raw-body control serves the malformed lists.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from routewatch.probe.model_listing import MAX_LISTED, MAX_PAGE_BYTES, ListedPrice, ListingError, read_listing
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator

pytestmark = pytest.mark.system

KEY = "sk-or-v1-LISTINGSENTINEL0123456789abcdef"
MODELS = [f"vendor/model-{i}" for i in range(7)]


def _profile(model: str) -> ModelProfile:
    return ModelProfile(model=model, provider="P", ttft_median_ms=5, tokens_per_s=500, output_tokens=2)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator([_profile(m) for m in MODELS])
    try:
        yield running
    finally:
        await running.close()


async def _control(sim: RunningSimulator, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, sim.base_url + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _read(sim: RunningSimulator) -> Any:
    async with aiohttp.ClientSession() as session:
        return await read_listing(session, sim.base_url, KEY, {"HTTP-Referer": "https://example.org"}, 5.0)


async def test_an_unpaged_list_is_read_whole_in_the_routers_order(sim: RunningSimulator) -> None:
    listing = await _read(sim)
    assert list(listing.models) == MODELS
    assert (listing.pages, listing.skipped, listing.truncated) == (1, 0, False)
    assert all(price is None for price in listing.models.values())


async def test_a_paged_list_is_followed_page_by_page_with_its_cursor(sim: RunningSimulator) -> None:
    await _control(sim, "PUT", "/simulator/listing", {"page_size": 3})
    listing = await _read(sim)
    assert list(listing.models) == MODELS
    assert listing.pages == 3
    truth = await _control(sim, "GET", "/simulator/listing")
    # What the simulator served, page by page: the reader asked for each page after the last one's id.
    assert all(p["bearer"] for p in truth["served"]), "the key was not sent with every page"
    assert [(p["after"], p["ids"]) for p in truth["served"]] == [
        (None, MODELS[0:3]),
        (MODELS[2], MODELS[3:6]),
        (MODELS[5], MODELS[6:7]),
    ]


async def test_prices_are_read_from_openrouters_pricing_strings(sim: RunningSimulator) -> None:
    prices = {
        MODELS[0]: ["0.0000025", "0.00001", "0.00000125"],
        MODELS[1]: ["0", "0.0000006"],
        MODELS[2]: ["-1", "-1"],
    }
    await _control(sim, "PUT", "/simulator/listing", {"prices": prices})
    listing = await _read(sim)
    truth = (await _control(sim, "GET", "/simulator/listing"))["prices"]
    assert truth[MODELS[0]] == {"prompt": "0.0000025", "completion": "0.00001", "input_cache_read": "0.00000125"}
    assert listing.models[MODELS[0]] == ListedPrice(2.5, 10.0, 1.25)
    assert listing.models[MODELS[1]] == ListedPrice(0.0, 0.6)  # "0" is free, a price
    assert listing.models[MODELS[2]] is None  # OpenRouter's "-1": the price varies; not a price
    assert listing.rejected_prices == {MODELS[2]: "pricing.prompt '-1' is negative (the price varies)"}
    assert listing.models[MODELS[3]] is None and MODELS[3] not in listing.rejected_prices  # no pricing: no reason


async def test_hostile_prices_are_rejected_per_model_with_a_reason_and_the_list_is_kept(sim: RunningSimulator) -> None:
    data = [
        {"id": "p/nan", "pricing": {"prompt": "NaN", "completion": "0.000001"}},
        {"id": "p/inf", "pricing": {"prompt": "0.000001", "completion": "Infinity"}},
        {"id": "p/huge", "pricing": {"prompt": "0.5", "completion": "0.000001"}},  # $500,000 per 1M
        {"id": "p/word", "pricing": {"prompt": "cheap", "completion": "0.000001"}},
        {"id": "p/bool", "pricing": {"prompt": True, "completion": "0.000001"}},
        {"id": "p/list", "pricing": ["0.000001"]},
        {"id": "p/half", "pricing": {"prompt": "0.000001"}},
        {"id": "p/cache", "pricing": {"prompt": "0.000001", "completion": "0.000002", "input_cache_read": "-0.1"}},
        {"id": "p/big", "pricing": {"prompt": "PLACEHOLDER", "completion": "0.000001"}},
        {"id": "p/fine", "pricing": {"prompt": 0.000001, "completion": "0.000002", "request": "0"}},
    ]
    raw = json.dumps({"object": "list", "data": data}).replace('"PLACEHOLDER"', "1" + "0" * 400)
    await _control(sim, "PUT", "/simulator/listing", {"raw_body": raw})
    listing = await _read(sim)
    assert list(listing.models) == [entry["id"] for entry in data], "a bad price costs the model its price only"
    assert listing.models["p/fine"] == ListedPrice(1.0, 2.0)
    assert {m for m, price in listing.models.items() if price is None} == set(listing.rejected_prices)
    assert listing.rejected_prices == {
        "p/nan": "pricing.prompt 'NaN' is not a finite number",
        "p/inf": "pricing.completion 'Infinity' is not a finite number",
        "p/huge": "pricing.prompt '0.5' is over $100,000 per 1M tokens",
        "p/word": "pricing.prompt 'cheap' is not a number",
        "p/bool": "pricing.prompt True is not a number",
        "p/list": "pricing is not an object",
        "p/half": "pricing gives no completion price",
        "p/cache": "pricing.input_cache_read '-0.1' is negative (the price varies)",
        "p/big": "pricing.prompt 1000000000000000000000000000000000000... is not a finite number",
    }


async def test_models_added_and_removed_at_run_time_are_listed_as_they_are(sim: RunningSimulator) -> None:
    await _control(sim, "DELETE", f"/simulator/models/{MODELS[1]}")
    added = {"model": "vendor/new", "provider": "Q", "ttft_median_ms": 5, "tokens_per_s": 500, "output_tokens": 2}
    await _control(sim, "PUT", "/simulator/models", added)
    listing = await _read(sim)
    assert list(listing.models) == [m for m in MODELS if m != MODELS[1]] + ["vendor/new"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("<html>gateway error</html>", "not JSON"),
        ('{"object": "list", "data": {"id": "x"}}', 'not an object with a "data" array'),
        ('[{"id": "x"}]', 'not an object with a "data" array'),
        ('{"data": [{"id": "a"}], "has_more": true, "last_id": "a"}', "pages repeat"),
        ('{"data": [{"nope": 1}], "has_more": true}', "gives no cursor"),
        ('{"data": [], "next": "http://198.51.100.7/v1/models?page=2"}', "leaves the router's origin"),
        ("[" * 100_000 + "]" * 100_000, "not"),
        ('{"object": "list", "data": []}', "names no usable model"),
        ('{"object": "list", "data": [{"id": ""}, {"id": null}]}', r"names no usable model \(2 entries skipped\)"),
    ],
)
async def test_a_malformed_list_is_an_error_that_names_the_problem_and_never_the_key(
    sim: RunningSimulator, raw: str, message: str
) -> None:
    await _control(sim, "PUT", "/simulator/listing", {"raw_body": raw})
    with pytest.raises(ListingError, match=message) as caught:
        await _read(sim)
    assert KEY not in str(caught.value) and KEY[:12] not in str(caught.value)


async def test_a_page_past_the_size_bound_is_refused(sim: RunningSimulator) -> None:
    # Valid JSON, one byte past the bound: refused for its size alone.
    head = '{"data": [{"id": "a"}]}'
    await _control(sim, "PUT", "/simulator/listing", {"raw_body": head, "pad_bytes": MAX_PAGE_BYTES + 1 - len(head)})
    with pytest.raises(ListingError, match="larger than 8 MiB"):
        await _read(sim)


async def test_ids_that_are_not_usable_as_they_are_are_skipped_and_counted(sim: RunningSimulator) -> None:
    data = [
        {"id": "ok/model"},
        {"id": "ok/model"},  # repeated: once
        {"id": "evil/\u001b[2Jclear"},  # a terminal escape
        {"id": "has space"},
        {"id": "x" * 500},  # longer than a label
        {"id": KEY},  # the key itself, which redaction would change
        {"id": 42},
        "not an object",
        {"id": "ok/other", "pricing": {"prompt": "nan", "completion": "1e308"}},
        {"id": "ok/third", "pricing": {"prompt": "PLACEHOLDER", "completion": True}},
    ]
    raw = json.dumps({"object": "list", "data": data}).replace('"PLACEHOLDER"', "1" + "0" * 400)
    await _control(sim, "PUT", "/simulator/listing", {"raw_body": raw})
    listing = await _read(sim)
    assert listing.models == {"ok/model": None, "ok/other": None, "ok/third": None}
    assert listing.skipped == 6
    assert set(listing.rejected_prices) == {"ok/other", "ok/third"}


async def test_a_page_just_within_the_size_bound_is_read(sim: RunningSimulator) -> None:
    head = '{"data": [{"id": "a"}]}'
    await _control(sim, "PUT", "/simulator/listing", {"raw_body": head, "pad_bytes": MAX_PAGE_BYTES - len(head)})
    assert list((await _read(sim)).models) == ["a"]


async def test_a_list_longer_than_the_bound_is_cut_and_marked_truncated(sim: RunningSimulator) -> None:
    data = [{"id": f"m/{i:06d}"} for i in range(MAX_LISTED + 5)]
    await _control(sim, "PUT", "/simulator/listing", {"raw_body": json.dumps({"object": "list", "data": data})})
    listing = await _read(sim)
    assert listing.truncated and len(listing.models) == MAX_LISTED
    assert list(listing.models)[-1] == f"m/{MAX_LISTED - 1:06d}"
