"""Writing a database as an older release left it, with this release's writer.

The writer and the rollup refresh of this release write what migrations 0011
(router dialects' columns), 0012 (the prompt tier, in the rollup's key too),
0014 (cost columns and the daily spend table), 0015 (reasoning tokens) and
0016 (the reported cost beside the computed one) add, and 0016 alters the
model catalog of 0013. A test that builds the state of an older schema applies those of them
the schema lacks while it writes, and removes what they added before
upgrading, so the upgrade starts from exactly the older shape, with rows in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from routewatch.storage.connection import Conn
from routewatch.storage.migrate import Migration

# What each such migration adds: columns per table, and tables.
LATER = {
    "0011_router_dialects": (
        {
            "probe_results": ("dialect", "attempts", "fallbacks", "router_request_id", "reported_cost_usd"),
            "probe_hist_hourly": ("reported_ok", "retried", "calls", "calls_failed", "ttft_first", "ttft_retried"),
        },
        (),
    ),
    "0012_prompt_tiers": ({"probe_results": ("tier",), "probe_hist_hourly": ("tier",)}, ()),
    "0013_model_catalog": ({}, ("model_catalog",)),
    "0014_probe_cost": ({"probe_results": ("cached_input_tokens", "cost_usd")}, ("probe_cost_daily", "budget_pauses")),
    "0015_reasoning_tokens": ({"probe_results": ("reasoning_tokens",)}, ()),
    "0016_listed_and_reported_cost": (
        {
            "model_catalog": ("cached_input_usd_per_mtok",),
            "probe_cost_daily": (
                "reported_probes",
                "reported_cost_usd",
                "compared_probes",
                "compared_reported_usd",
                "compared_computed_usd",
            ),
        },
        (),
    ),
}
# What dropping a migration's columns does not undo by itself: 0012 made the tier part of
# the rollup's primary key, which goes with the column; the older key comes back.
RESTORE = {
    "0012_prompt_tiers": (
        "ALTER TABLE probe_hist_hourly ADD PRIMARY KEY (bucket, router, model, provider, region, prompt, methodology)"
    ),
}


@asynccontextmanager
async def writing_as_older_release(conn: Conn, mode: str, migrations: Sequence[Migration]) -> AsyncIterator[None]:
    """Inside, what the writer needs of later migrations exists; at exit it is removed again.
    Nothing to do for a migration the schema has already."""
    applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    added = [m for m in migrations if m.label in LATER and m.version not in applied]
    for m in added:
        await conn.execute(m.sql[mode])
    yield
    for m in reversed(added):
        columns, tables = LATER[m.label]
        for table, names in columns.items():
            await conn.execute(f"ALTER TABLE {table} " + ", ".join(f"DROP COLUMN {c}" for c in names))
        for table in tables:
            await conn.execute(f"DROP TABLE {table}")
        if m.label in RESTORE:
            await conn.execute(RESTORE[m.label])
