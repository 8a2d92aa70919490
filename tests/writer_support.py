"""Helpers shared by the writer's tests: fresh results, waiting, what the database holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from routewatch.results.probe_result import ProbeResult


def result(**changes: Any) -> ProbeResult:
    """A fresh successful probe of a router called "hostile", with ``changes``."""
    fields: dict[str, Any] = dict(region="test", router="hostile", model="poison/model", prompt="short",
                                  methodology="m1", ok=True, error_class=None, error_detail=None,
                                  http_status=200, ttft_ms=120.0, output_tokens=16, chunks=16)
    return ProbeResult(uuid.uuid4(), datetime.now(UTC), **(fields | changes))


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
