"""A prober process's ``/healthz`` and ``/readyz``, served beside its ``/metrics``.

They mean what ``serve``'s do, for a process whose job is probing instead of
publishing:

- ``/healthz`` (liveness): the process and its event loop are alive. It is
  answered on the event loop that times the probes, so a loop that is stuck
  (or a process that is gone) fails it; nothing else does, and in particular
  not the database being away, which a restart would not cure.
- ``/readyz`` (readiness): the process is doing its job, 200 only when all of
  these hold, else 503 with the first reason that fails:

  1. no long-lived task of the process has died (the process is stopping);
  2. with a database: its shard leases are current, i.e. its last heartbeat
     renewed them and their deadline has not passed, so it probes the series
     of the shards it holds (none, when the region has more probers than
     shards); without one (results pushed to a central server) it probes
     every series of its region and this does not apply;
  3. its last attempt to store results reached the destination (the database,
     or the central server's ingest endpoint); while it does not, results are
     kept in the spool and delivered later, and the process is not ready.

Both answer JSON with ``Cache-Control: no-store``, like ``serve``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from routewatch.delivery.spooled import SpooledDelivery
from routewatch.probe.scheduler import PhasedSchedule
from routewatch.shard_coordinator import ShardCoordinator
from routewatch.storage import shard_leases


@dataclass(frozen=True)
class Readiness:
    """The answer of ``/readyz``: ready or not, why not, and what it was decided on."""

    ready: bool
    body: dict[str, Any]


def liveness(region: str, schedule: PhasedSchedule, coordinator: ShardCoordinator | None) -> dict[str, Any]:
    """The body of ``/healthz``: the process is up; what it probes now."""
    return {
        "status": "ok",
        "role": "prober",
        "region": region,
        "pid": os.getpid(),
        "series_scheduled": schedule.scheduled,
        "shards_held": coordinator.held if coordinator is not None else None,
    }


def readiness(
    region: str, writer: SpooledDelivery, coordinator: ShardCoordinator | None, failures: Sequence[str]
) -> Readiness:
    """The body of ``/readyz`` and whether it is 200 (see the module's docstring for the rules)."""
    lease_left = coordinator.lease_left_s() if coordinator is not None else None
    body: dict[str, Any] = {
        "status": "ready",
        "reason": None,
        "region": region,
        "results_to": writer.destination.name,
        "destination_ok": writer.destination_ok,
        "shards_held": coordinator.held if coordinator is not None else None,
        "shards": shard_leases.SHARDS,
        "lease_left_s": None if lease_left is None else round(max(lease_left, 0.0), 3),
    }
    reason = _not_ready_because(writer, coordinator, lease_left, failures)
    if reason is not None:
        body["status"] = "not_ready"
        body["reason"] = reason
    return Readiness(reason is None, body)


def _not_ready_because(
    writer: SpooledDelivery, coordinator: ShardCoordinator | None, lease_left: float | None, failures: Sequence[str]
) -> str | None:
    if failures:
        return "; ".join(failures)
    if coordinator is not None and (lease_left is None or lease_left <= 0):
        return (
            "its shard leases have lapsed: no heartbeat has renewed them in the last"
            f" {shard_leases.LEASE_TTL_S:g} s, so it probes nothing (the database is unreachable?)"
        )
    if not writer.destination_ok:
        return f"the last attempt to store results in the {writer.destination.name} failed: they wait in the spool"
    return None
