"""The saved spool position never hides results: a cursor past the spool's end is dropped."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from factories import probe_result
from writer_support import stored_ids, until

from routewatch.delivery.spool import Spool
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter

pytestmark = pytest.mark.db


async def test_results_spooled_behind_a_stale_cursor_are_replayed(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    spool_dir = tmp_path / "spool"
    first = [probe_result() for _ in range(5)]
    writer = BatchWriter(pool, spool_dir, flush_s=0.05)
    await writer.start()
    for r in first:
        await writer.submit(r)
    await until("the first results", lambda: writer.written == len(first))
    await writer.close()  # the cursor now points after five records

    # An operator clears the spool files but not the cursor; a run then
    # journals two results and dies before storing them.
    for segment in spool_dir.glob("*.spool"):
        segment.unlink()
    orphans = [probe_result(), probe_result()]
    with Spool(spool_dir) as spool:
        spool.append(orphans)

    writer = BatchWriter(pool, spool_dir, flush_s=0.05)
    await writer.start()
    try:
        await until("the orphaned results", lambda: writer.written == len(orphans))
    finally:
        await writer.close()
    assert await stored_ids(pool) == {r.id for r in first + orphans}
