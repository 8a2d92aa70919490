"""The exceptions that mean "the database is not there right now".

A refresh, a lock check or a read that meets one of these keeps what it last
had and tries again later; anything else is a bug and ends the task (which
the process supervisor turns into a loud stop).
"""

from __future__ import annotations

import asyncpg

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,  # connection closed, pool closing
    # A connection whose previous operation was interrupted (a timeout during
    # an outage) refuses the next one with "another operation is in progress":
    # it is broken, like a closed one.
    asyncpg.InternalClientError,
)
