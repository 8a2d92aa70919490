"""Helpers shared by the writer's tests: waiting, what the database holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg


async def until(what: str, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for ``condition``; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def stored_ids(pool: asyncpg.Pool) -> set[uuid.UUID]:
    """The ids of every stored probe result."""
    return {r["id"] for r in await pool.fetch("SELECT id FROM probe_results")}
