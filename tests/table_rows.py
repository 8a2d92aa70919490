"""Every row of a routewatch database, for tests that check that data survives an operation."""

from __future__ import annotations

from typing import Any

import asyncpg


async def every_row(conn: asyncpg.Connection, skip: frozenset[str] = frozenset()) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ordinary table in ``public`` but ``skip`` (partitions through their parent), sorted."""
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    found = {}
    for table in sorted(r["relname"] for r in tables):
        if table in skip:
            continue
        rows = await conn.fetch(f'SELECT * FROM "{table}"')
        found[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return found
