"""The outbox sender: claims due notifications, posts them, records what happened.

Runs in every ``run`` and ``serve`` process with targets configured, and
works only while the process leads (holds the refresher lock), so one
process sends. Each row is handled in a transaction of its own that claims
it (``FOR UPDATE SKIP LOCKED``), keeps it locked while the request is in
flight, and records the outcome before committing:

- a 2xx answer: sent;
- no answer (refused, reset, timed out), 408, 425, 429 or 5xx: tried again
  after an exponential backoff with jitter (``backoff_initial`` doubling up to
  ``backoff_max``, each wait drawn between half and all of it; a longer
  ``Retry-After`` is honoured up to ``backoff_max``), until
  ``max_attempts``, then dead;
- any other answer (a 4xx: the request itself is refused, and would be
  again) or a redirect: dead at once.

A process that dies mid-request leaves the row's transaction uncommitted:
the row is pending again, unchanged, and is sent again (same body, same
idempotency key) by whichever process leads next. Errors are redacted of the
target's URL, secret, key and token before they are logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum

import aiohttp
import asyncpg

from routewatch.config import NotificationsConfig
from routewatch.notify.formats import OutgoingRequest, grafana_lookup, render
from routewatch.notify.targets import Target
from routewatch.probe.redact import redact
from routewatch.storage.connection import Conn
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.outbox_queries import OutboxRow, claim_due, mark_dead, mark_retry, mark_sent

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the leader looks for due rows
RESPONSE_BYTES = 2048  # of a response body read, for the error text
ERROR_CHARS = 300
_RETRYABLE = frozenset({408, 425, 429})


class Outcome(Enum):
    """What one attempt came to."""

    SENT = "sent"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's outcome, its error (redacted; empty when sent), and a Retry-After in seconds."""

    outcome: Outcome
    error: str = ""
    retry_after_s: float | None = None


def backoff_s(attempts: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """The wait after ``attempts`` failed attempts: ``initial_s`` doubling, capped at ``max_s``,
    then drawn between half and all of it, so that many rows failing together spread out."""
    full = min(max_s, initial_s * 2.0 ** min(attempts - 1, 60))
    return float(full * (0.5 + rng.random() / 2))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare, and the backoff is a fine stand-in
        return None


class OutboxSender:
    """Posts the rows of ``notification_outbox`` to their targets, while ``is_leader()``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        targets: Mapping[str, Target],
        policy: NotificationsConfig,
        session: aiohttp.ClientSession,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        poll_s: float = POLL_S,
        rng: random.Random | None = None,
    ) -> None:
        """``targets`` by name, with their secrets; ``policy``: timeout, attempts and backoff."""
        self._pool = pool
        self._targets = dict(targets)
        self._policy = policy
        self._session = session
        self._is_leader = is_leader
        self._poll_s = poll_s
        self._rng = rng or random.Random()
        self.sent = 0  # rows this process marked sent
        self.retried = 0  # failed attempts that will be tried again
        self.dead = 0  # rows this process gave up

    async def run(self) -> None:
        """Send due rows while leading, forever; a database outage is waited out."""
        while True:
            if self._is_leader():
                try:
                    await self.drain()
                except DATABASE_ERRORS as exc:
                    log.warning("notification outbox unavailable (%s); trying again", exc.__class__.__name__)
            await asyncio.sleep(self._poll_s)

    async def drain(self) -> int:
        """Handle every row due now, one transaction each; return how many were handled."""
        handled = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await claim_due(conn)
                if row is None:
                    return handled
                await self._handle(conn, row)
            handled += 1

    async def _handle(self, conn: Conn, row: OutboxRow) -> None:
        target = self._targets.get(row.target)
        attempts = row.attempts + 1
        if target is None:
            await mark_dead(conn, row.id, attempts, f"target {row.target!r} is no longer configured")
            self.dead += 1
            log.error("notification %d (%s) given up: target %r no longer configured", row.id, row.target, row.target)
            return
        result = await self.attempt(target, row)
        what = f"notification {row.id} to {target.name} ({target.kind}, incident {row.incident_id} {row.transition})"
        if result.outcome is Outcome.SENT:
            await mark_sent(conn, row.id, attempts)
            self.sent += 1
            log.info("%s sent (attempt %d)", what, attempts)
        elif result.outcome is Outcome.DEAD or attempts >= self._policy.max_attempts:
            await mark_dead(conn, row.id, attempts, result.error)
            self.dead += 1
            log.error("%s given up after %d attempt(s): %s", what, attempts, result.error)
        else:
            delay = backoff_s(attempts, self._policy.backoff_initial, self._policy.backoff_max, self._rng)
            if result.retry_after_s is not None:
                delay = max(delay, min(result.retry_after_s, self._policy.backoff_max))
            await mark_retry(conn, row.id, attempts, result.error, delay)
            self.retried += 1
            log.warning("%s failed (attempt %d): %s; next in %.1f s", what, attempts, result.error, delay)

    async def attempt(self, target: Target, row: OutboxRow) -> Attempt:
        """Post ``row`` to ``target`` once; never raises for anything the target does."""
        if target.kind == "grafana" and row.attempts > 0 and await self._in_grafana(target, row):
            return Attempt(Outcome.SENT)
        request = render(target, row, int(time.time()))
        try:
            status, text, retry_after = await self._send(request)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Attempt(Outcome.RETRY, self._redact(target, f"{exc.__class__.__name__}: {exc}"))
        if 200 <= status < 300:
            return Attempt(Outcome.SENT)
        error = self._redact(target, f"HTTP {status}: {text}".strip())
        if status in _RETRYABLE or status >= 500:
            return Attempt(Outcome.RETRY, error, _retry_after(retry_after))
        if 300 <= status < 400:
            return Attempt(Outcome.DEAD, f"HTTP {status}: a redirect; configure the URL it points to")
        return Attempt(Outcome.DEAD, error)

    async def _send(self, request: OutgoingRequest) -> tuple[int, str, str | None]:
        timeout = aiohttp.ClientTimeout(total=self._policy.timeout)
        async with self._session.request(
            request.method,
            request.url,
            data=request.body or None,
            headers=request.headers,
            timeout=timeout,
            allow_redirects=False,  # a redirect could carry the token to another host
        ) as response:
            body = await response.content.read(RESPONSE_BYTES)
            return response.status, body.decode("utf-8", "replace"), response.headers.get("Retry-After")

    async def _in_grafana(self, target: Target, row: OutboxRow) -> bool:
        """Whether Grafana already holds this row's annotation (an earlier attempt got there
        but its answer was lost); False when that cannot be told, and the post goes ahead."""
        try:
            status, text, _ = await self._send(grafana_lookup(target, row))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False
        return 200 <= status < 300 and text.strip() not in ("", "[]")

    @staticmethod
    def _redact(target: Target, text: str) -> str:
        whole = redact(" ".join(text.split()), [target.url], max_chars=len(text) + 1)
        return redact(whole, target.keys(), max_chars=ERROR_CHARS, fragments=True)


@asynccontextmanager
async def notification_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The sender's HTTP client: its own connection pool, no cookies kept between targets."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session
