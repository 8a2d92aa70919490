"""The database's clock: one clock for every process's horizons and windows."""

from __future__ import annotations

from datetime import datetime

from routewatch.storage.connection import Conn


async def db_now(conn: Conn) -> datetime:
    """The database's ``now()``: the start of the current transaction, if any."""
    now: datetime = await conn.fetchval("SELECT now()")
    return now


async def db_clock(conn: Conn) -> datetime:
    """The database's clock as the statement runs (``clock_timestamp()``), not the transaction's start."""
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now
