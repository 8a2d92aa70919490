"""A prober process's shard leases, turned into the slots its schedule may probe.

The bridge between storage (``storage/shard_leases.py``: the SQL of joining,
heartbeats, claims, offers and leaving) and the prober (``PhasedSchedule``:
which slots to probe), which never sees the database. After every heartbeat
the schedule gets, per shard held, the slots from its start to the lease's
end (or to the hand-over point of an offer), and a deadline on this
machine's monotonic clock past which nothing is owned: the lease's length
counted from before the heartbeat's transaction began, so it passes before
the lease ends in the database, however far this machine's wall clock is off.
A heartbeat that fails changes nothing: the deadline stands, and probing
stops there unless a later heartbeat succeeds.

Each heartbeat also reads the database's clock, and slots are counted on it
(this machine's wall clock plus the measured offset), so that processes on
machines whose clocks disagree probe a slot at the same moment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg

from routewatch.probe.redact import redact
from routewatch.probe.scheduler import PhasedSchedule
from routewatch.probe.slots import Ownership, Tenure, to_us
from routewatch.storage import shard_leases
from routewatch.storage.clock import db_clock
from routewatch.storage.connection import Conn
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.session_name import session_settings
from routewatch.supervision import Supervisor

log = logging.getLogger("routewatch")

# A heartbeat that has not finished by then failed (its lease deadline stands).
BEAT_TIMEOUT_S = shard_leases.LEASE_TTL_S / 2
# The clock offset comes from the quickest of this many recent readings (the
# one whose round trip leaves the least doubt), and is changed only when it
# moves by more than the slack, so that network noise does not shift slots.
OFFSET_READINGS = 30
OFFSET_SLACK_US = 20_000
# How far the shared clock may be off the database's (half a round trip, plus the slack above),
# with room to spare: what is decided from the shared clock alone keeps this margin.
CLOCK_DOUBT_S = 1.0


class ShardCoordinator:
    """Joins the region's prober group, beats every ``HEARTBEAT_S``, leaves on a clean stop."""

    def __init__(self, dsn: str, region: str, schedule: PhasedSchedule, secrets: Sequence[str] = ()) -> None:
        """``secrets`` (the database URL and password) are masked in what is logged."""
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._secrets = list(secrets)
        self.region = region
        self._schedule = schedule
        self.member = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._tenures: dict[int, tuple[Tenure, ...]] = {}
        self._deadline: float | None = None
        self._readings: deque[tuple[int, int]] = deque(maxlen=OFFSET_READINGS)  # (round trip ns, offset µs)
        self._failing = False
        self._rng = random.Random()
        self.last: shard_leases.Beat | None = None

    @property
    def held(self) -> int:
        """Shards held after the last heartbeat."""
        return 0 if self.last is None else len(self.last.leases)

    def lease_left_s(self) -> float | None:
        """Seconds until the leases of the last successful heartbeat end (negative: they have);
        None before the first. On this machine's monotonic clock, so wall-clock jumps do not count."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    async def join(self) -> shard_leases.Beat:
        """Register in the group and take a first share; raises what the database raises."""
        async with self._connection() as conn:
            await shard_leases.join(conn, self.region)
        return await self.beat()

    async def beat(self) -> shard_leases.Beat:
        """One heartbeat; the schedule is told what it holds now. Raises what the database raises."""
        started = time.monotonic()
        started_us = self._schedule.clock.now_us()
        try:
            async with self._connection() as conn:
                await self._read_clock(conn)
                beat = await shard_leases.beat(conn, self.region, self.member, self._host, self._pid)
        except Exception:
            await self._distrust(started_us)
            raise
        await self._take(beat, started)
        return beat

    async def _distrust(self, started_us: int) -> None:
        """A heartbeat failed, but may have committed all the same (its answer lost on the way):
        it may have offered shards this process did not hear of. Such an offer's hand-over point
        lies a lead after the heartbeat began, so no slot from there on is probed until a
        heartbeat says which shards are still this process's."""
        cap = started_us + int((shard_leases.HANDOVER_LEAD_S - CLOCK_DOUBT_S) * 1_000_000)
        held = {lease.shard for lease in self.last.leases} if self.last else set()
        self._tenures = {  # shards already given away end at their known hand-over point
            shard: tuple(Tenure(t.start_us, min(t.end_us, cap)) for t in spans if t.start_us < cap)
            if shard in held
            else spans
            for shard, spans in self._tenures.items()
        }
        await self._schedule.apply(Ownership(self._tenures, self._deadline))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The heartbeats' own connection, for at most ``BEAT_TIMEOUT_S``.

        Its own, so that heartbeats never queue behind the writer for a pooled
        one. Past the time limit it is closed at once (what waits on it fails
        then, rather than when TCP gives up on a partitioned server) and a new
        one is made next time. The server ends a transaction left idle for as
        long (``idle_in_transaction_session_timeout``), so a heartbeat cut off
        mid-way cannot keep lease rows locked from the other members.
        """
        if self._conn is None or self._conn.is_closed():
            limit_ms = str(int(BEAT_TIMEOUT_S * 1000))
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=BEAT_TIMEOUT_S,
                server_settings={
                    "idle_in_transaction_session_timeout": limit_ms,
                    "statement_timeout": limit_ms,
                    **session_settings(self._dsn, "probe"),
                },
            )
        conn = self._conn
        late = asyncio.Event()

        def cut() -> None:
            late.set()
            conn.terminate()

        timer = asyncio.get_running_loop().call_later(BEAT_TIMEOUT_S, cut)
        try:
            yield conn
        except BaseException:
            conn.terminate()  # in whatever state it was left: start afresh next time
            if late.is_set():
                raise TimeoutError(f"no answer from the database within {BEAT_TIMEOUT_S:g} s") from None
            raise
        finally:
            timer.cancel()
        if late.is_set():  # cut as the last statement returned: its answer may be lost
            raise TimeoutError(f"no answer from the database within {BEAT_TIMEOUT_S:g} s")

    async def close(self) -> None:
        """Close the heartbeats' connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _read_clock(self, conn: Conn) -> None:
        before = time.time_ns()
        db = await db_clock(conn)
        after = time.time_ns()
        self._readings.append((after - before, to_us(db) - (before + after) // 2000))
        offset = min(self._readings)[1]
        clock = self._schedule.clock
        if abs(offset - clock.offset_us) > OFFSET_SLACK_US or len(self._readings) == 1:
            if len(self._readings) > 1:
                log.info("the database's clock is %+.3f s from this machine's", offset / 1e6)
            clock.offset_us = offset

    async def _take(self, beat: shard_leases.Beat, started: float) -> None:
        # The leases end TTL after the transaction's now(), which came after `started`.
        self._deadline = started + (beat.expires_at - beat.now).total_seconds()
        now = to_us(beat.now)
        held = {lease.shard: Tenure(to_us(lease.owned_from), to_us(lease.until)) for lease in beat.leases}
        tenures: dict[int, tuple[Tenure, ...]] = {}
        for shard in held.keys() | self._tenures.keys():
            # A shard handed over stays ours up to its hand-over point, even if it has come
            # back since (from a later point): a lease renewed keeps its start and replaces its span.
            lease = held.get(shard)
            spans = [
                t
                for t in self._tenures.get(shard, ())
                if t.end_us > now and (lease is None or t.start_us != lease.start_us)
            ]
            if lease is not None:
                spans.append(lease)
            if spans:
                tenures[shard] = tuple(sorted(spans, key=lambda t: t.start_us))
        self._tenures = tenures
        await self._schedule.apply(Ownership(tenures, self._deadline))
        before, self.last = self.last, beat
        if (
            before is None
            or (beat.claimed, beat.offered, beat.withdrawn) != ((), (), ())
            or (beat.members != before.members)
        ):
            log.info(
                "shards: holding %d of %d (target %d, %d live member%s in region %r)%s%s%s",
                len(beat.leases),
                shard_leases.SHARDS,
                beat.target,
                beat.members,
                "" if beat.members == 1 else "s",
                self.region,
                f"; claimed {len(beat.claimed)}" if beat.claimed else "",
                f"; offered {len(beat.offered)}" if beat.offered else "",
                f"; kept {len(beat.withdrawn)} offered before" if beat.withdrawn else "",
            )

    async def run(self) -> None:
        """Beat every ``HEARTBEAT_S`` until cancelled; a failed heartbeat is logged and retried at the next."""
        next_at = time.monotonic()  # join() has just beaten
        while True:
            next_at = max(next_at + self._period(), time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())
            try:
                await self.beat()
            except DATABASE_ERRORS as exc:  # TimeoutError too: an OSError
                if not self._failing:
                    left = max(0.0, (self._deadline or 0.0) - time.monotonic())
                    log.warning(
                        "cannot renew the shard leases (%s); probing stops in %.1f s unless a heartbeat succeeds",
                        self._describe(exc),
                        left,
                    )
                self._failing = True
            else:
                if self._failing:
                    log.info("shard leases renewed again")
                self._failing = False

    def _describe(self, exc: BaseException) -> str:
        return redact(f"{exc.__class__.__name__}: {exc}", self._secrets)

    def _period(self) -> float:
        """The time to the next heartbeat: up to a quarter shorter than ``HEARTBEAT_S``, at random.

        A claim skips the rows another member's heartbeat holds locked at that
        moment; members started together would otherwise beat in step for ever,
        and one could never take the shards another offers. Never longer, so
        a heartbeat still comes within ``HEARTBEAT_S`` (the takeover bound).
        """
        return shard_leases.HEARTBEAT_S * self._rng.uniform(0.75, 1.0)

    async def leave(self) -> None:
        """Hand every shard over and keep probing the slots before the hand-over point, then return.

        If the database cannot be reached, probing stops now and the others
        take the shards over when the leases expire.
        """
        try:
            async with self._connection() as conn:
                point = to_us(await shard_leases.leave(conn, self.region, self.member))
        except DATABASE_ERRORS as exc:  # TimeoutError too: an OSError
            log.warning(
                "could not hand the shards over (%s); the other probers take them over within %g s",
                self._describe(exc),
                shard_leases.TAKEOVER_S,
            )
            await self._schedule.apply(Ownership())
            return
        self._tenures = {
            shard: tuple(Tenure(t.start_us, min(t.end_us, point)) for t in spans if t.start_us < point)
            for shard, spans in self._tenures.items()
        }
        await self._schedule.apply(Ownership(self._tenures, self._deadline))
        wait = (point - self._schedule.clock.now_us()) / 1e6
        if self._deadline is not None:
            wait = min(wait, self._deadline - time.monotonic())
        if wait > 0:
            log.info("handing %d shards over: probing their slots for %.1f s more", len(self._tenures), wait)
            await asyncio.sleep(wait)


@asynccontextmanager
async def holding_shards(coordinator: ShardCoordinator, supervisor: Supervisor) -> AsyncIterator[ShardCoordinator]:
    """Join (a first share at once), beat while open (watched as "shard leases"), leave at exit."""
    try:
        await coordinator.join()
        try:
            async with supervisor.running("shard leases", coordinator.run):
                yield coordinator
        finally:
            await coordinator.leave()
    finally:
        await coordinator.close()
