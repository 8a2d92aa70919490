"""Every row of a routewatch database, for tests that check that data survives an operation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from routewatch.storage.connection import Conn

_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
)


async def table_columns(conn: Conn) -> dict[str, list[str]]:
    """Each table's columns (as :func:`every_row` lists tables), in their order."""
    out: dict[str, list[str]] = {}
    for table in sorted(r["relname"] for r in await conn.fetch(_TABLES)):
        rows = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            f'"{table}"',
        )
        out[table] = [r["attname"] for r in rows]
    return out


async def every_row(
    conn: Conn, skip: frozenset[str] = frozenset(), columns: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ordinary table in ``public`` but ``skip`` (partitions through their parent), sorted.

    With ``columns``, a table named there is read in those columns only (what an older
    schema had: :func:`table_columns` before an upgrade that adds some).
    """
    found = {}
    for table in sorted(r["relname"] for r in await conn.fetch(_TABLES)):
        if table in skip:
            continue
        wanted = columns.get(table) if columns is not None else None
        select = ", ".join(f'"{c}"' for c in wanted) if wanted else "*"
        rows = await conn.fetch(f'SELECT {select} FROM "{table}"')
        found[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return found
