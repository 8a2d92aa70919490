"""The connection type every query function takes.

Functions are called with a connection of their own (``asyncpg.connect``, the
tests' ``conn``) or one borrowed from a pool (``pool.acquire()``), which is a
proxy with the same methods but, to a type checker, a different class.
"""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
import asyncpg.pool

# A string: asyncpg's classes are generic only in its stubs, not at run time.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

CONNECT_TIMEOUT_S = 10.0
"""A connection to the database within this, or the attempt fails (a host that vanished answers nothing)."""

COMMAND_TIMEOUT_S = 60.0
"""A pooled connection's query that has not ended after this is cancelled and raises ``TimeoutError``
(an outage to every caller): a query in flight on a host that vanished would otherwise wait for TCP to
give up, many minutes. Longer than any one statement of a refresh or a batch at 10,000 series; work
that may take longer (a migration, compressing a chunk) runs without it or with its own limit."""
