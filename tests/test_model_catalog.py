"""Discovery's pieces below the processes: the ``discover:`` settings, the glob selection,
the planned series, and the model catalog's writes in any order (the test database)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from routewatch.config import ConfigError, DiscoverConfig, parse_config
from routewatch.probe.model_listing import MAX_LISTED
from routewatch.probe.model_selection import select_models
from routewatch.probe.targets import plan
from routewatch.storage import catalog_queries
from routewatch.storage.migrate import migrate

PROMPTS = """
prompts:
  - name: short
    messages: [{role: user, content: hi}]
  - name: long
    messages: [{role: user, content: tell me more}]
"""


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "probes.yaml")
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.unit
def test_discover_settings_are_checked_with_file_line_and_field() -> None:
    text = (
        """routers:
  - name: sim
    base_url: simulator
    discover:
      include: []
      exclude: ["ok", ""]
      refresh: 0.5s
      max_models: 0
      prompts: [short, nope]
      sometimes: true
"""
        + PROMPTS
    )
    assert _issues(text) == [
        "probes.yaml:6: routers[0].discover.exclude[1]: must not be empty",
        "probes.yaml:7: routers[0].discover.refresh: must be at least 1 s",
        "probes.yaml:8: routers[0].discover.max_models: Input should be greater than or equal to 1",
        'probes.yaml:10: routers[0].discover.sometimes: unknown field "sometimes"',
    ]
    fixed = text.replace('      exclude: ["ok", ""]\n', "").replace("      refresh: 0.5s\n", "")
    fixed = fixed.replace("      max_models: 0\n", "").replace("      sometimes: true\n", "")
    assert _issues(fixed) == ['probes.yaml:6: routers[0].discover.prompts[1]: no prompt named "nope" in prompts']


@pytest.mark.unit
def test_a_router_needs_models_unless_it_discovers_them() -> None:
    bare = "routers:\n  - name: sim\n    base_url: simulator\n" + PROMPTS
    assert _issues(bare) == ["probes.yaml:2: routers[0].models: list at least one model, or turn on discover"]
    off = bare.replace("simulator\n", "simulator\n    discover: {enabled: false}\n", 1)
    assert _issues(off) == ["probes.yaml:2: routers[0].models: list at least one model, or turn on discover"]
    # With discover a price may name a model the router will list; without, it must be configured.
    on = bare.replace("simulator\n", "simulator\n    discover: {}\n    prices: {x/y: {input: 1, output: 2}}\n", 1)
    config = parse_config(on, "probes.yaml")
    assert config.routers[0].models == [] and config.routers[0].discover == DiscoverConfig()
    priced = on.replace("    discover: {}\n", "    models: [a/b]\n")
    assert _issues(priced) == ['probes.yaml:5: routers[0].prices["x/y"]: no such model in this router\'s models']


@pytest.mark.unit
def test_selection_applies_include_then_exclude_and_keeps_the_first_by_id_past_the_cap() -> None:
    listed = ["b/2", "a/1", "a/skip-1", "c/3", "a/3", "a/2", "configured/x"]
    discover = DiscoverConfig(include=["a/*", "c/*", "configured/*"], exclude=["*/skip-*"], max_models=3)
    selection = select_models(listed, discover, configured={"configured/x"})
    assert selection.models == ("a/1", "a/2", "a/3")
    assert selection.over_cap == 1  # c/3
    # Globs are case-sensitive, as model ids are.
    assert select_models(["A/1"], DiscoverConfig(include=["a/*"]), ()).models == ()


@pytest.mark.unit
def test_discovered_models_get_the_discover_prompts_and_configured_ones_stay_as_configured() -> None:
    text = (
        """routers:
  - name: sim
    base_url: http://127.0.0.1:9/v1
    models: [kept/one]
    discover: {prompts: [short]}
  - name: plain
    base_url: http://127.0.0.1:9/v1
    models: [plain/one]
"""
        + PROMPTS
    )
    config = parse_config(text, "probes.yaml")
    found = {"sim": ["new/one", "kept/one"], "plain": ["ignored/one"]}
    series, _ = plan(config, {}, discovered=found)
    keys = sorted(s.key for s in series)
    assert keys == [
        "plain|plain/one|long",
        "plain|plain/one|short",
        "sim|kept/one|long",
        "sim|kept/one|short",
        "sim|new/one|short",
    ]


T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def _rows(conn: asyncpg.Connection) -> dict[str, catalog_queries.CatalogRow]:
    return {row.model: row for row in await catalog_queries.read_catalog(conn)}


@pytest.mark.db
async def test_catalog_retires_and_brings_back_models_in_the_order_lists_were_read(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    t1, t2, t3 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)
    await catalog_queries.record_listing(
        conn, "r", T0, [("a", 2.5, 10.0, None), ("b", None, None, None)], complete=True
    )
    # Two probers: one read the list at t2 (b gone), the other at t1 (b still there); t2's write lands first.
    assert await catalog_queries.record_listing(conn, "r", t2, [("a", 3.0, 12.0, 0.3)], complete=True) == 1
    assert (
        await catalog_queries.record_listing(
            conn, "r", t1, [("a", 2.5, 10.0, None), ("b", None, None, None)], complete=True
        )
        == 0
    )
    rows = await _rows(conn)
    assert rows["b"].retired_at == t2 and rows["b"].last_seen == t1 and rows["b"].first_seen == T0
    assert (rows["a"].retired_at, rows["a"].last_seen) == (None, t2)
    # The newer list's prices.
    assert (rows["a"].input_usd_per_mtok, rows["a"].output_usd_per_mtok, rows["a"].cached_input_usd_per_mtok) == (
        3.0,
        12.0,
        0.3,
    )
    assert await catalog_queries.listed_models(conn, "r") == {"a": (3.0, 12.0, 0.3)}
    # An incomplete list (cut at its bound) adds what it has and retires nothing.
    assert await catalog_queries.record_listing(conn, "r", t3, [("c", None, None, None)], complete=False) == 0
    assert (await _rows(conn))["a"].retired_at is None
    # b comes back: un-retired; its first sighting stays.
    await catalog_queries.record_listing(
        conn, "r", t3, [("a", 3.0, 12.0, 0.3), ("b", 1.0, 1.0, None), ("c", None, None, None)], complete=True
    )
    rows = await _rows(conn)
    assert rows["b"].retired_at is None and rows["b"].first_seen == T0 and rows["b"].input_usd_per_mtok == 1.0
    assert await catalog_queries.listed_models(conn, "r") == {"a": (3.0, 12.0, 0.3), "b": (1.0, 1.0, None), "c": None}
    # A model configured by hand is never retired by the list.
    t4 = T0 + timedelta(minutes=4)
    assert (
        await catalog_queries.record_listing(conn, "r", t4, [("a", None, None, None)], complete=True, keep=["b"]) == 1
    )
    assert list(await catalog_queries.listed_models(conn, "r")) == ["a", "b"]


@pytest.mark.db
async def test_a_list_of_the_largest_size_read_is_recorded_and_read_back_in_bounded_time(
    conn: asyncpg.Connection,
) -> None:
    await migrate(conn)
    listed = [(f"vendor/model-{i:05d}", 0.5, 1.5, None) for i in range(MAX_LISTED)]
    took: dict[str, float] = {}
    started = time.perf_counter()
    await catalog_queries.record_listing(conn, "big", T0, listed, complete=True)
    took["first write"] = time.perf_counter() - started
    started = time.perf_counter()
    await catalog_queries.record_listing(conn, "big", T0 + timedelta(hours=1), listed, complete=True)
    took["same list again"] = time.perf_counter() - started
    started = time.perf_counter()
    retired = await catalog_queries.record_listing(
        conn, "big", T0 + timedelta(hours=2), listed[: MAX_LISTED // 2], complete=True
    )
    took["half gone"] = time.perf_counter() - started
    rows = await catalog_queries.read_catalog(conn)
    # The aggregator reads the rows of the models it publishes: at most discover.max_models of this router.
    published = [("big", model) for model, *_ in listed[:: MAX_LISTED // 500]]
    started = time.perf_counter()
    read = await catalog_queries.read_catalog(conn, published)
    took["aggregator's read of 500"] = time.perf_counter() - started
    assert [(row.router, row.model) for row in read] == sorted(published)
    print(
        "\n" + ", ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in took.items()), f"({MAX_LISTED} models)"
    )
    assert retired == MAX_LISTED // 2 and len(rows) == MAX_LISTED
    assert sum(1 for row in rows if row.retired_at is not None) == MAX_LISTED // 2
    assert max(took.values()) < 10.0
