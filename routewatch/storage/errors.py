"""The exceptions that mean "the database is not there right now", defined once.

Two uses, one classification:

* the batch writer asks :func:`database_unavailable` whether a failed batch
  waits in the spool for the database to come back (an outage) or is blamed
  on its rows (retried one by one, the bad ones set aside);
* a refresh, a lock check or a read catches :data:`DATABASE_ERRORS`, keeps
  what it last had and tries again later; anything else is a bug and ends the
  task (which the process supervisor turns into a loud stop).
"""

from __future__ import annotations

import asyncpg

# The connection or the server cannot do any work now, whatever the statement.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError and refused connections
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed, pool closing
    # A connection whose previous operation was interrupted (a timeout during
    # an outage) refuses the next one with "another operation is in progress":
    # it is broken, like a closed one.
    asyncpg.InternalClientError,
    asyncpg.InsufficientResourcesError,  # server disk full, out of memory, too many connections
    asyncpg.OperatorInterventionError,  # shutting down, starting up, statement cancelled
    asyncpg.PostgresSystemError,  # I/O error on the server
    asyncpg.ReadOnlySQLTransactionError,  # a standby, e.g. during a failover
)

# Readers (the refresh, the lock check, API reads) treat any error the server
# reports like an outage too: they keep what they last had and try again at
# their next turn.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot take writes now (retry later).

    Anything else raised while writing a batch is blamed on its rows. asyncpg
    reports values it cannot encode as a ``DataError`` that is both an
    InterfaceError and a ValueError: that is the rows' fault, not an outage.
    """
    return isinstance(exc, DATABASE_UNAVAILABLE) and not isinstance(exc, ValueError)
