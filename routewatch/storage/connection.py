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
