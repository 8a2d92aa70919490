"""Model state in the database: ``model_status``, ``incidents`` and ``uptime_daily``.

The leading aggregator reads the recent probes (:func:`recent_probes`, or
only those of the batches its rollup refresh just took in: :func:`batch_probes`),
computes, and saves the states, the incidents that changed and the seconds
to add to each day's uptime in one transaction (:func:`save_model_state`).
Everyone reads back what is stored. Rows go in as plain tuples and come out
as asyncpg records; the aggregator turns them into its own types.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.outbox_queries import record_transitions
from routewatch.storage.tables import INCIDENTS, MODEL_STATUS, PROBE_RESULTS, UPTIME_DAILY

# One model's state, as save_model_state takes it.
STATUS_COLUMNS = (
    "model",
    "state",
    "since",
    "reason",
    "consecutive_failures",
    "consecutive_successes",
    "latched_down",
    "as_of",
    "updated_at",
)
# One incident, as save_model_state takes it ("end" is null while it is open).
INCIDENT_COLUMNS = ("id", "start", "end", "worst_state", "models", "suppressed", "updated_at")
# Seconds to add to one model's day, as save_model_state takes them.
UPTIME_COLUMNS = ("model", "day", "operational_s", "degraded_s", "down_s", "unknown_s")

_RECENT_PROBES = f"""
SELECT id, model, started_at, ok, ttft_ms, prober_overloaded, attempts, error_class, tier
FROM {PROBE_RESULTS}
WHERE started_at > $1
"""

# The same columns, of the rows some logged batches inserted (found by their
# transaction id, as ingest_log.batch_rows finds them), started in [$1, $2].
_BATCH_PROBES = _RECENT_PROBES.rstrip() + " AND started_at <= $2 AND xmin::text::bigint = ANY($3::bigint[])\n"

_UPSERT_STATUS = f"""
INSERT INTO {MODEL_STATUS} (model, state, since, reason, consecutive_failures, consecutive_successes,
                          latched_down, as_of, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (model) DO UPDATE SET
    state = EXCLUDED.state, since = EXCLUDED.since, reason = EXCLUDED.reason,
    consecutive_failures = EXCLUDED.consecutive_failures,
    consecutive_successes = EXCLUDED.consecutive_successes,
    latched_down = EXCLUDED.latched_down, as_of = EXCLUDED.as_of, updated_at = EXCLUDED.updated_at
"""
_DELETE_OTHER_STATUSES = f"DELETE FROM {MODEL_STATUS} WHERE NOT model = ANY($1::text[])"

_UPSERT_INCIDENT = f"""
INSERT INTO {INCIDENTS} (id, start, "end", worst_state, models, suppressed, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET
    start = EXCLUDED.start, "end" = EXCLUDED."end", worst_state = EXCLUDED.worst_state,
    models = EXCLUDED.models, suppressed = EXCLUDED.suppressed, updated_at = EXCLUDED.updated_at
"""

# Additive: each refresh adds the seconds elapsed since the previous one.
_ADD_UPTIME = f"""
INSERT INTO {UPTIME_DAILY} AS u (model, day, operational_s, degraded_s, down_s, unknown_s)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (model, day) DO UPDATE SET
    operational_s = u.operational_s + EXCLUDED.operational_s,
    degraded_s = u.degraded_s + EXCLUDED.degraded_s,
    down_s = u.down_s + EXCLUDED.down_s,
    unknown_s = u.unknown_s + EXCLUDED.unknown_s
"""

_STATUSES = f"SELECT * FROM {MODEL_STATUS} ORDER BY model"
_UPDATED_AT = f"SELECT max(updated_at) FROM {MODEL_STATUS}"
_OPEN_BY_ID = f'SELECT * FROM {INCIDENTS} WHERE "end" IS NULL ORDER BY id'
_OPEN_NEWEST_FIRST = f'SELECT * FROM {INCIDENTS} WHERE "end" IS NULL ORDER BY start DESC, id DESC'
_CLOSED = f'SELECT * FROM {INCIDENTS} WHERE "end" IS NOT NULL ORDER BY "end" DESC, id DESC LIMIT $1'
_LATEST = f"SELECT * FROM {INCIDENTS} ORDER BY id DESC LIMIT 1"
_UPTIME_SINCE = f"SELECT {', '.join(UPTIME_COLUMNS)} FROM {UPTIME_DAILY} WHERE day >= $1"


async def recent_probes(conn: Conn, since: datetime) -> list[asyncpg.Record]:
    """The probes started after ``since``: id, model, started_at, ok, ttft_ms, prober_overloaded, attempts, tier."""
    return await conn.fetch(_RECENT_PROBES, since)


async def batch_probes(conn: Conn, since: datetime, until: datetime, xmins: Sequence[int]) -> list[asyncpg.Record]:
    """Like :func:`recent_probes`, but only the rows written by the transactions ``xmins``
    (32-bit ids, ``ingest_log.PendingBatch.xmin``) and started no later than ``until``."""
    return await conn.fetch(_BATCH_PROBES, since, until, list(xmins))


async def save_model_state(
    conn: Conn,
    statuses: Sequence[tuple[Any, ...]],
    incidents: Sequence[tuple[Any, ...]],
    uptime: Sequence[tuple[Any, ...]],
    notify_targets: Sequence[str] = (),
) -> None:
    """In one transaction: upsert ``statuses`` (:data:`STATUS_COLUMNS`) and delete every
    other model's, upsert ``incidents`` (:data:`INCIDENT_COLUMNS`), add ``uptime``
    (:data:`UPTIME_COLUMNS`) to the days' seconds, and queue a notification to each
    of ``notify_targets`` for every incident that opened or closed (``outbox_queries``)."""
    async with conn.transaction():
        await conn.executemany(_UPSERT_STATUS, statuses)
        # Models no longer configured nor probed are no longer published.
        await conn.execute(_DELETE_OTHER_STATUSES, [s[0] for s in statuses])
        await record_transitions(conn, incidents, statuses, notify_targets)
        await conn.executemany(_UPSERT_INCIDENT, incidents)
        await conn.executemany(_ADD_UPTIME, uptime)


async def model_statuses(conn: Conn) -> list[asyncpg.Record]:
    """Every stored model status (all of ``model_status``'s columns), by model id."""
    return await conn.fetch(_STATUSES)


async def statuses_updated_at(conn: Conn) -> datetime | None:
    """When the statuses were last saved; None when there are none."""
    updated: datetime | None = await conn.fetchval(_UPDATED_AT)
    return updated


async def open_incidents(conn: Conn, *, newest_first: bool = False) -> list[asyncpg.Record]:
    """The open incidents (``end`` null): by id, or newest start first."""
    return await conn.fetch(_OPEN_NEWEST_FIRST if newest_first else _OPEN_BY_ID)


async def closed_incidents(conn: Conn, limit: int) -> list[asyncpg.Record]:
    """The ``limit`` closed incidents that ended last, newest end first."""
    return await conn.fetch(_CLOSED, limit)


async def latest_incident(conn: Conn) -> asyncpg.Record | None:
    """The incident with the highest id (open or not), or None."""
    return await conn.fetchrow(_LATEST)


async def uptime_since(conn: Conn, first_day: date) -> list[asyncpg.Record]:
    """Every (model, day) row of ``uptime_daily`` from ``first_day`` on (:data:`UPTIME_COLUMNS`)."""
    return await conn.fetch(_UPTIME_SINCE, first_day)
