"""One bad result never stops the writer: it is set aside, and everything else is stored.

Real PostgreSQL throughout (the suite's server). The poison values are the
ones a hostile router can make a prober record: integers past the column's
range, lone surrogates and NUL in strings. asyncpg refuses some of them on the
client side (OverflowError, UnicodeEncodeError, TypeError), before the
database sees anything; those used to kill the flush task.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from factories import probe_result
from writer_support import stored_ids, until

from routewatch.delivery.spool import Spool
from routewatch.delivery.spooled import DEAD_LETTER_FILE
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter

pytestmark = pytest.mark.db

# name -> (fields of the poisoned result, what the rejection reason names)
POISONS: dict[str, tuple[dict[str, Any], str]] = {
    "completion tokens 2**31": ({"output_tokens": 2**31}, "OverflowError"),
    "completion tokens 2**63": ({"output_tokens": 2**63}, "OverflowError"),
    "lone surrogate in error_detail": (
        {"ok": False, "error_class": "bad_response", "error_detail": "upstream said \ud800"},
        "UnicodeEncodeError",
    ),
    "lone surrogate in model_served": ({"model_served": "gpt-\ud800"}, "UnicodeEncodeError"),
    "lone surrogate in request_id": ({"request_id": "gen-\udfff"}, "UnicodeEncodeError"),
    "NUL in error_detail": (
        {"ok": False, "error_class": "http_5xx", "error_detail": "bad\x00gateway"},
        "CharacterNotInRepertoireError",
    ),
    "text where a number belongs": ({"ttft_ms": "fast"}, "TypeError"),
}


def rejected(spool_dir: Path) -> list[dict[str, Any]]:
    path = spool_dir / DEAD_LETTER_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> asyncpg.Pool:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    return pool


async def store_new(pool: asyncpg.Pool, spool_dir: Path, count: int) -> tuple[BatchWriter, list[ProbeResult]]:
    """Start a writer on ``spool_dir`` (replaying what it holds), store ``count`` new results, close it."""
    writer = BatchWriter(pool, spool_dir, flush_s=0.05)
    await writer.start()
    try:
        fresh = [probe_result() for _ in range(count)]
        for r in fresh:
            await writer.submit(r)
        await until("the new results to be stored", lambda: writer.written >= count and not writer.backlog)
        assert writer.failed is None
    finally:
        await writer.close()
    return writer, fresh


def assert_rejected_once(spool_dir: Path, poison: ProbeResult, reason: str) -> None:
    lines = rejected(spool_dir)
    assert len(lines) == 1, lines
    assert lines[0]["result"]["id"] == str(poison.id)
    assert reason in lines[0]["error"]


async def assert_restart_stores_new(
    pool: asyncpg.Pool, spool_dir: Path, stored: list[ProbeResult], poison: ProbeResult, reason: str
) -> list[ProbeResult]:
    """A restart on the spool stores new probes and meets the poison no more; returns what is stored now."""
    writer, fresh = await store_new(pool, spool_dir, 3)
    assert writer.rejected == 0
    assert await stored_ids(pool) == {r.id for r in stored + fresh}
    assert_rejected_once(spool_dir, poison, reason)
    return stored + fresh


@pytest.mark.parametrize("name", POISONS)
async def test_poison_in_a_batch_is_rejected_and_the_rest_stored(
    schema: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    fields, reason = POISONS[name]
    spool_dir = tmp_path / "spool"
    writer = BatchWriter(schema, spool_dir, flush_s=0.3)
    await writer.start()
    good = [probe_result() for _ in range(20)]
    poison = probe_result(**fields)
    later = [probe_result() for _ in range(5)]
    try:
        with caplog.at_level(logging.WARNING, logger="routewatch.storage.writer"):
            for r in [*good[:10], poison, *good[10:]]:
                await writer.submit(r)
            await until(
                "the good results of the batch", lambda: writer.written >= len(good) and bool(rejected(spool_dir))
            )
        assert any("retrying row by row" in m for m in caplog.messages)
        assert writer.failed is None and writer.rejected == 1
        # The writer keeps going.
        for r in later:
            await writer.submit(r)
        await until("results submitted after the poison", lambda: writer.written >= len(good) + len(later))
    finally:
        await writer.close()
    assert writer.failed is None
    assert await stored_ids(schema) == {r.id for r in good + later}
    assert_rejected_once(spool_dir, poison, reason)
    await assert_restart_stores_new(schema, spool_dir, good + later, poison, reason)


@pytest.mark.parametrize("name", POISONS)
async def test_poison_left_in_the_spool_is_replayed_once(schema: asyncpg.Pool, tmp_path: Path, name: str) -> None:
    """A spool a previous run left with the poison first in line (the writer had died on it)."""
    fields, reason = POISONS[name]
    spool_dir = tmp_path / "spool"
    poison = probe_result(**fields)
    good = [probe_result() for _ in range(10)]
    with Spool(spool_dir) as spool:
        # The spool's JSON escapes a lone surrogate and gives it back unchanged.
        spool.append([poison, *good])
        assert spool.read(None, 100)[0] == [poison, *good]

    # The first start replays the spool: the good results are stored, the poison set aside.
    first, fresh = await store_new(schema, spool_dir, 3)
    assert first.rejected == 1
    assert await stored_ids(schema) == {r.id for r in good + fresh}
    assert_rejected_once(spool_dir, poison, reason)
    await assert_restart_stores_new(schema, spool_dir, good + fresh, poison, reason)


async def test_a_result_the_spool_cannot_encode_is_still_handled(schema: asyncpg.Pool, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = BatchWriter(schema, spool_dir, flush_s=0.05)
    await writer.start()
    strange = probe_result(error_detail=b"\xff bytes, not text")  # not JSON: cannot be journaled
    good = probe_result()
    try:
        await writer.submit(strange)  # must not raise into the prober
        await writer.submit(good)
        await until("the good result", lambda: writer.written >= 1 and bool(rejected(spool_dir)))
    finally:
        await writer.close()
    assert writer.unspooled == 1 and writer.failed is None
    assert await stored_ids(schema) == {good.id}
    [line] = rejected(spool_dir)
    assert line["result"]["id"] == repr(strange.id)  # kept field by field as repr
    assert line["result"]["error_detail"] == repr(strange.error_detail)


async def test_read_only_database_is_an_outage_not_a_rejection(
    schema: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    """A standby (say, mid-failover) refuses every write: wait for it, reject nothing."""
    database = db_dsn.rsplit("/", 1)[1]
    await schema.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    await schema.expire_connections()
    spool_dir = tmp_path / "spool"
    writer = BatchWriter(schema, spool_dir, flush_s=0.05, retry_s=0.1)
    await writer.start()
    results = [probe_result() for _ in range(5)]
    try:
        for r in results:
            await writer.submit(r)
        await until("the writer to notice", lambda: not writer.database_ok)
        assert writer.rejected == 0 and writer.written == 0
        admin = await asyncpg.connect(db_dsn, server_settings={"default_transaction_read_only": "off"})
        try:
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        finally:
            await admin.close()
        await schema.expire_connections()  # as a failover replaces them
        await until("the results to be stored", lambda: writer.written == len(results))
    finally:
        await writer.close()
    assert rejected(spool_dir) == []
    assert await stored_ids(schema) == {r.id for r in results}


class Bug(BaseException):
    """Stands in for a programming error that escapes every handler."""


async def test_a_dead_flush_task_is_reported(
    schema: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def prepare(conn: asyncpg.Connection, results: list[ProbeResult]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Bug("injected")

    writer = BatchWriter(schema, tmp_path / "spool", flush_s=0.05, prepare=prepare)
    await writer.start()
    queued = probe_result()
    try:
        await writer.submit(queued)
        failure = await asyncio.wait_for(writer.wait_failed(), 10)
        assert isinstance(failure, Bug) and writer.failed is failure
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1 and "batch writer stopped" in critical[0].getMessage()
        assert critical[0].exc_info is not None  # the traceback is in the log
    finally:
        await writer.close()  # does not raise, and stores what was queued
    assert writer.failed is failure
    assert await stored_ids(schema) == {queued.id}


async def test_close_stops_the_flush_task_without_a_failure(schema: asyncpg.Pool, tmp_path: Path) -> None:
    writer = BatchWriter(schema, tmp_path / "spool", flush_s=0.05)
    await writer.start()
    waiter = asyncio.create_task(writer.wait_failed())
    await asyncio.sleep(0.1)
    assert not waiter.done() and writer.failed is None
    await writer.close()
    assert await asyncio.wait_for(waiter, 5) is None
