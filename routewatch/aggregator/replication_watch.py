"""The leader's look at the primary's replication: one WARNING when no standby is synchronous.

A failover loses nothing only when every commit waited for the standby that
is promoted (docs/storage.md, "Replicas and failover"): with standbys that
are all asynchronous, a batch the primary acknowledged (and the prober's
spool therefore dropped) may never have reached them. routewatch cannot fix
that, so it says so: the leader looks at ``pg_stat_replication`` when it
takes the lead and every :data:`CHECK_EVERY_S` after, and logs one WARNING
when the primary has standbys and none is synchronous (one INFO once one is).
A primary without standbys is a deployment without failover, not a mistake:
nothing is logged for it.
"""

from __future__ import annotations

import logging
import time

from routewatch.storage.connection import Conn
from routewatch.storage.replication import standbys, unsynchronised

log = logging.getLogger(__name__)

CHECK_EVERY_S = 300.0


class ReplicationWatch:
    """Whether the primary's standbys are synchronous, looked at now and then by the leader."""

    def __init__(self, every_s: float = CHECK_EVERY_S) -> None:
        self._every_s = every_s
        self._checked: float | None = None  # time.monotonic() of the last check
        self.warned = False  # whether the last check found standbys, none synchronous

    def due(self) -> bool:
        """Whether a check is due (never checked, or the last one was ``every_s`` ago)."""
        return self._checked is None or time.monotonic() - self._checked >= self._every_s

    async def check(self, conn: Conn) -> None:
        """Look at the primary's standbys on ``conn``; log when the answer changes."""
        self._checked = time.monotonic()
        found = await standbys(conn)
        bad = unsynchronised(found)
        if bad and not self.warned:
            log.warning(
                "the primary has %d standby(s) and none is synchronous: a failover may lose probes the primary"
                " acknowledged; name one in synchronous_standby_names (docs/storage.md, Replicas and failover)",
                len(found),
            )
        elif self.warned and not bad:
            log.info("the primary has a synchronous standby now, or no standby left")
        self.warned = bad
