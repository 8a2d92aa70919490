"""The notification outbox in the database: ``notification_outbox`` (migration 0010).

When the leader saves the incidents a refresh changed
(``model_state_queries.save_model_state``), :func:`record_transitions` adds,
in that same transaction, one row per (transition, target) for every
incident that opened or closed: stored together with the incident or not at
all. A transition is *open* when an incident first counts as an outage (it
opened outside maintenance, or its maintenance window ended with a model
still bad) and *close* when an incident that was announced ends; an incident
that stayed suppressed throughout is announced to no one. The unique key
(incident, its start, transition, target) makes writing a transition twice
store it once.

The sender (``routewatch.notify``) claims one due row at a time with
:func:`claim_due` (``FOR UPDATE SKIP LOCKED``, inside a transaction it keeps
open while it posts), then records the outcome with :func:`mark_sent`,
:func:`mark_retry` or :func:`mark_dead` before committing. No row holds a
secret: targets are named, their URLs and keys come from the environment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.tables import INCIDENTS, NOTIFICATION_OUTBOX

OPEN = "open"
CLOSE = "close"
# Longest error text kept per row (the sender redacts it before it gets here).
MAX_ERROR_CHARS = 500

_PREVIOUS = f'SELECT id, start, "end", suppressed FROM {INCIDENTS} WHERE id = ANY($1::integer[]) FOR UPDATE'

_INSERT = f"""
INSERT INTO {NOTIFICATION_OUTBOX} (incident_id, incident_start, transition, target, event)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (incident_id, incident_start, transition, target) DO NOTHING
"""

# Due: pending, its time come, and nothing earlier for the same incident and
# target still pending (a resolve never overtakes its trigger). Rows another
# sender holds are skipped, not waited for.
_CLAIM = f"""
SELECT o.id, o.incident_id, o.incident_start, o.transition, o.target, o.event::text AS event, o.attempts,
       o.created_at
FROM {NOTIFICATION_OUTBOX} o
WHERE o.state = 'pending' AND o.next_attempt_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM {NOTIFICATION_OUTBOX} e
      WHERE e.state = 'pending' AND e.target = o.target AND e.incident_id = o.incident_id
        AND e.incident_start = o.incident_start AND e.id < o.id)
ORDER BY o.next_attempt_at, o.id
LIMIT 1
FOR UPDATE OF o SKIP LOCKED
"""
_SENT = f"""
UPDATE {NOTIFICATION_OUTBOX} SET state = 'sent', attempts = $2, sent_at = now(), last_error = NULL WHERE id = $1
"""
_RETRY = f"""
UPDATE {NOTIFICATION_OUTBOX}
SET attempts = $2, last_error = $3, next_attempt_at = now() + make_interval(secs => $4)
WHERE id = $1
"""
_DEAD = f"UPDATE {NOTIFICATION_OUTBOX} SET state = 'dead', attempts = $2, last_error = $3 WHERE id = $1"
_COUNTS = f"""
SELECT state, count(*) AS n, min(created_at) AS oldest FROM {NOTIFICATION_OUTBOX} GROUP BY state
"""
_NEXT_DUE = f"SELECT min(next_attempt_at) - now() FROM {NOTIFICATION_OUTBOX} WHERE state = 'pending'"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One notification to post: the row's id is its idempotency key."""

    id: int
    incident_id: int
    incident_start: datetime
    transition: str  # OPEN or CLOSE
    target: str
    event: dict[str, Any]
    attempts: int  # made before this one
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """How many rows are in each state, and since when the oldest pending one waits."""

    pending: int = 0
    sent: int = 0
    dead: int = 0
    oldest_pending: datetime | None = None


def transitions(previous: asyncpg.Record | None, suppressed: bool, end: datetime | None) -> list[str]:
    """What an incident's save announces, given its stored row before (None: new).

    Open once it is first not suppressed; close when it ends not suppressed
    (so after an open was announced). Both when it opens and ends in one save.
    """
    if suppressed:
        return []
    out = []
    if previous is None or previous["suppressed"]:
        out.append(OPEN)
    if end is not None and (previous is None or previous["end"] is None):
        out.append(CLOSE)
    return out


async def record_transitions(
    conn: Conn,
    incidents: Sequence[tuple[Any, ...]],
    statuses: Sequence[tuple[Any, ...]],
    targets: Sequence[str],
) -> int:
    """Add a row per target for each open or close among ``incidents`` (rows as
    ``save_model_state`` takes them), before they are upserted; return how many.

    Call inside the transaction that upserts them: the previous rows are read
    ``FOR UPDATE`` so that what counts as new is what this transaction replaces.
    ``statuses`` give each model's state and reason for the message.
    """
    if not targets or not incidents:
        return 0
    previous = {r["id"]: r for r in await conn.fetch(_PREVIOUS, [i[0] for i in incidents])}
    by_model = {s[0]: (s[1], s[3]) for s in statuses}
    rows: list[tuple[Any, ...]] = []
    for incident_id, start, end, worst, models, suppressed, _updated in incidents:
        before = previous.get(incident_id)
        if before is not None and before["start"] != start:
            before = None  # the id was reused after retention deleted the old one: a new incident
        for transition in transitions(before, suppressed, end):
            event = _event(incident_id, start, end, worst, models, transition, by_model)
            rows.extend((incident_id, start, transition, target, event) for target in targets)
    if rows:
        await conn.executemany(_INSERT, rows)
    return len(rows)


def _event(
    incident_id: int,
    start: datetime,
    end: datetime | None,
    worst: str,
    models: Sequence[str],
    transition: str,
    by_model: dict[str, tuple[str, str]],
) -> str:
    return json.dumps(
        {
            "incident": incident_id,
            "transition": transition,
            "start": start.isoformat(),
            "end": end.isoformat() if end is not None and transition == CLOSE else None,
            "worst_state": worst,
            "models": [
                {"id": m, "state": by_model.get(m, ("unknown", ""))[0], "reason": by_model.get(m, ("", ""))[1]}
                for m in sorted(models)
            ],
        },
        sort_keys=True,
    )


async def claim_due(conn: Conn) -> OutboxRow | None:
    """Lock and return the next due row, or None. Call inside a transaction, and record
    the outcome (:func:`mark_sent`, :func:`mark_retry`, :func:`mark_dead`) before it commits."""
    r = await conn.fetchrow(_CLAIM)
    if r is None:
        return None
    return OutboxRow(
        r["id"],
        r["incident_id"],
        r["incident_start"],
        r["transition"],
        r["target"],
        json.loads(r["event"]),
        r["attempts"],
        r["created_at"],
    )


async def mark_sent(conn: Conn, row_id: int, attempts: int) -> None:
    """The target acknowledged the row (``attempts`` made in all)."""
    await conn.execute(_SENT, row_id, attempts)


async def mark_retry(conn: Conn, row_id: int, attempts: int, error: str, delay_s: float) -> None:
    """Attempt ``attempts`` failed with ``error`` (already redacted); try again after ``delay_s``."""
    await conn.execute(_RETRY, row_id, attempts, error[:MAX_ERROR_CHARS], delay_s)


async def mark_dead(conn: Conn, row_id: int, attempts: int, error: str) -> None:
    """Give the row up after ``attempts``, for ``error`` (already redacted)."""
    await conn.execute(_DEAD, row_id, attempts, error[:MAX_ERROR_CHARS])


async def outbox_counts(conn: Conn) -> OutboxCounts:
    """Rows per state, and the creation time of the oldest pending one."""
    found = {r["state"]: r for r in await conn.fetch(_COUNTS)}
    pending = found.get("pending")
    return OutboxCounts(
        pending=pending["n"] if pending is not None else 0,
        sent=found["sent"]["n"] if "sent" in found else 0,
        dead=found["dead"]["n"] if "dead" in found else 0,
        oldest_pending=pending["oldest"] if pending is not None else None,
    )


async def seconds_to_next_due(conn: Conn) -> float | None:
    """How long until the earliest pending row is due (≤ 0: now); None when nothing is pending."""
    wait = await conn.fetchval(_NEXT_DUE)
    return None if wait is None else float(wait.total_seconds())
