"""Deterministic probe times: each series' shard and phase, the slot grid, and which slots a process owns.

A series with interval ``I`` is probed at its *slots*: ``phase + k·I`` for
whole numbers ``k``, counted from the Unix epoch on a clock every prober
shares (the coordinating database's; see :class:`SharedClock`). Its phase
and its shard come from a stable hash of its key (BLAKE2b, not Python's
``hash()``, which changes from one process to the next), so every process
computes the same slots for a series, starts are spread evenly over the
interval, and a restart keeps them where they were.

Whichever process owns a series' shard at a slot probes that slot, so a
hand-over between processes is a point in time: the old owner probes the
slots before it, the new owner the slots from it. All times here are
integer microseconds, so two processes comparing a slot with a hand-over
point always agree.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

US = 1_000_000
FOREVER_US = 2**62  # later than any slot: an ownership without end
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_PERSON = b"routewatch-slots"  # keeps these hashes apart from any other use of BLAKE2b on the same keys


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16, person=_PERSON).digest()


def shard_of(key: str, shards: int) -> int:
    """The shard (0 to shards - 1) of the series ``key``: the same in every process and release."""
    return int.from_bytes(_digest(key)[:8], "big") % shards


def phase_us(key: str, interval: int) -> int:
    """The series' offset within each interval (µs, 0 to interval - 1), from other bits than its shard's."""
    return int.from_bytes(_digest(key)[8:], "big") % interval


def interval_us(seconds: float) -> int:
    """An interval in whole microseconds (at least one)."""
    return max(1, round(seconds * US))


def slot_at_or_before(t_us: int, phase: int, interval: int) -> int:
    """The number ``k`` of the last slot at or before ``t_us``."""
    return (t_us - phase) // interval


def slot_time(k: int, phase: int, interval: int) -> int:
    """When slot ``k`` is due (µs since the epoch)."""
    return phase + k * interval


def first_slot_from(t_us: int, phase: int, interval: int) -> int:
    """When the first slot at or after ``t_us`` is due."""
    return slot_time(-((phase - t_us) // interval), phase, interval)


def to_us(moment: datetime) -> int:
    """A timezone-aware datetime in µs since the epoch, exactly (no float on the way)."""
    return (moment - _EPOCH) // _ONE_US


def from_us(t_us: int) -> datetime:
    """µs since the epoch as a UTC datetime."""
    return _EPOCH + timedelta(microseconds=t_us)


@dataclass(frozen=True, slots=True)
class Tenure:
    """A process owns a shard's slots due in [start_us, end_us)."""

    start_us: int
    end_us: int = FOREVER_US

    def covers(self, t_us: int) -> bool:
        """Whether the slot due at ``t_us`` is owned."""
        return self.start_us <= t_us < self.end_us


@dataclass(frozen=True)
class Ownership:
    """Which slots this process may probe now.

    ``tenures``: per shard, the spans of slots it owns (on the shared clock),
    in time order; more than one when a shard given away comes back before
    the hand-over point. A shard missing is not owned. ``deadline``: a ``time.monotonic()`` value after
    which nothing is owned, whatever the tenures say: the end of leases that
    could not be renewed, kept on this machine's monotonic clock so that a
    stepped or skewed wall clock cannot stretch it. None: no deadline.
    """

    tenures: Mapping[int, tuple[Tenure, ...]] = field(default_factory=dict)
    deadline: float | None = None

    @classmethod
    def everything(cls, shards: Iterable[int]) -> Ownership:
        """Every slot of every shard, for ever: a process probing on its own."""
        return cls({shard: (Tenure(-FOREVER_US),) for shard in shards})

    def owns(self, shard: int, slot_us: int, mono: float) -> bool:
        """Whether the slot of ``shard`` due at ``slot_us`` is this process's to probe at monotonic time ``mono``."""
        if self.deadline is not None and mono >= self.deadline:
            return False
        return any(tenure.covers(slot_us) for tenure in self.tenures.get(shard, ()))


class SharedClock:
    """The clock slots are counted on: this machine's wall clock plus a measured offset.

    The offset is the coordinating database's clock minus this machine's, so
    that processes on machines whose clocks disagree still probe a slot at the
    same moment, and compare it with hand-over points written by the database.
    """

    def __init__(self, offset_us: int = 0) -> None:
        self.offset_us = offset_us

    def now_us(self) -> int:
        """Now on the shared clock."""
        return time.time_ns() // 1000 + self.offset_us

    def to_local(self, t_us: int) -> datetime:
        """The local wall-clock moment at which the shared clock reads ``t_us``."""
        return from_us(t_us - self.offset_us)

    def from_local(self, moment: datetime) -> int:
        """What the shared clock reads at the local wall-clock ``moment``."""
        return to_us(moment) + self.offset_us
