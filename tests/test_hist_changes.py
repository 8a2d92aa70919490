"""The record of which rollup hours changed (migration 0008), as a standby reads it.

Real transactions on a real database: whatever writes ``probe_hist_hourly``
(insert, delete, update, truncate) leaves its hours in ``probe_hist_changes``,
a reader sees exactly the hours changed by the transactions its earlier
snapshot did not see (one that committed later than a newer one included),
and it is told when it cannot know (the record pruned past it, a truncate).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from routewatch.storage import hist_queries
from routewatch.storage.migrate import migrate

pytestmark = pytest.mark.db

H0 = datetime(2030, 5, 1, 10, tzinfo=UTC)


def hour(i: int) -> datetime:
    return H0 + timedelta(hours=i)


async def put(conn: asyncpg.Connection, *hours: int) -> None:
    """One hourly row per hour (the histograms' bytes are not read here)."""
    await conn.executemany(
        "INSERT INTO probe_hist_hourly (bucket, router, model, provider, region, prompt, methodology,"
        " attempts, ok, rate_limited, overloaded, input_tokens, output_tokens, ttft, ttfat, tps)"
        " VALUES ($1, 'r', 'm', 'p', 'eu', 'short', 'v1', 1, 1, 0, 0, 1, 1, '', '', '')",
        [(hour(i),) for i in hours],
    )


async def where(conn: asyncpg.Connection) -> hist_queries.Position:
    async with hist_queries.follow_transaction(conn):
        return await hist_queries.position(conn)


async def since(conn: asyncpg.Connection, earlier: hist_queries.Position) -> list[datetime] | None:
    async with hist_queries.follow_transaction(conn):
        return await hist_queries.hours_changed_since(conn, earlier, await hist_queries.position(conn))


async def test_every_change_is_listed_once_for_a_reader_that_has_not_seen_it(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    await migrate(conn, mode="plain")
    start = await where(conn)
    assert await since(conn, start) == []

    async with conn.transaction():
        await put(conn, 0, 1)
        await hist_queries.bump_hist_generation(conn)
    await conn.copy_records_to_table(
        "probe_hist_hourly",
        records=[(hour(5), "r", "m", "p", "eu", "short", "v1", "100", 1, 1, 0, 0, 1, 1, b"", b"", b"")],
        columns=[*hist_queries.HIST_COLUMNS[:12], "input_tokens", "output_tokens", "ttft", "ttfat", "tps"],
    )
    assert await since(conn, start) == [hour(0), hour(1), hour(5)]
    after_inserts = await where(conn)
    assert after_inserts.generation == start.generation + 1
    assert await since(conn, after_inserts) == []

    await conn.execute("UPDATE probe_hist_hourly SET ok = 0 WHERE bucket = $1", hour(1))
    await conn.execute("DELETE FROM probe_hist_hourly WHERE bucket = $1", hour(0))
    await conn.execute("DELETE FROM probe_hist_hourly WHERE bucket = $1", hour(9))  # nothing there: no change
    assert await since(conn, after_inserts) == [hour(0), hour(1)]
    assert await since(conn, start) == [hour(0), hour(1), hour(5)]

    # A transaction that began before a reader's snapshot and commits after it, while a later
    # one committed before it: the reader's next look lists both.
    slow = await asyncpg.connect(db_dsn)
    try:
        tx = slow.transaction()
        await tx.start()
        await put(slow, 7)
        await put(conn, 8)
        reader = await where(conn)
        assert await since(conn, reader) == []
        await tx.commit()
        await put(conn, 6)
        assert await since(conn, reader) == [hour(6), hour(7)]
    finally:
        await slow.close()


async def test_a_reader_is_told_when_it_cannot_know(conn: asyncpg.Connection) -> None:
    await migrate(conn, mode="plain")
    old = await where(conn)
    await put(conn, 0)
    await hist_queries.prune_changes(conn, timedelta(hours=1))  # nothing that old: nothing pruned
    assert await since(conn, old) == [hour(0)]
    assert await conn.fetchval("SELECT count(*) FROM routewatch_meta WHERE key = 'hist_changes_pruned'") == 0

    await hist_queries.prune_changes(conn, timedelta(0))
    assert await since(conn, old) is None, "the change it missed was pruned"
    fresh = await where(conn)
    assert await since(conn, fresh) == [], "a reader that saw the pruned changes is not troubled"
    await put(conn, 1)
    await hist_queries.prune_changes(conn, timedelta(0))  # the marker moves on
    assert await since(conn, fresh) is None
    newest = await where(conn)
    await put(conn, 2)
    assert await since(conn, newest) == [hour(2)]

    await conn.execute("TRUNCATE probe_hist_hourly")
    assert await since(conn, newest) is None, "a truncate changes every hour"
