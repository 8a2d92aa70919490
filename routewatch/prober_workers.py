"""``routewatch run``'s prober workers: N ``routewatch probe`` child processes, started, kept and stopped.

``run`` keeps the aggregator and the API in its own process and probes in
children, one event loop each, which share the configured series through the
shard leases like any ``routewatch probe`` (``shard_coordinator.py``). This
module owns those children:

* **start**: every worker is started at once, each with its own spool
  directory, the database URL in its environment (never on its command
  line, which ``ps`` shows to every user), and the write end of a pipe
  (``--ready-fd``) on which it reports, as one JSON line, that it has joined
  the region's probers and where its ``/metrics`` answers. A worker that
  exits or stays silent for ``start_timeout_s`` fails the start of ``run``.
* **keep**: a worker that exits while ``run`` runs is logged with how it
  ended and restarted after 1, 2, 4, 8, 16 s (``RestartPolicy``, as the
  embedded PostgreSQL's watch); after five restarts of one worker within ten
  minutes :class:`WorkersGaveUp` is raised, which the process supervisor turns
  into a loud stop with exit code 1. Meanwhile its shards' leases run out and
  the other workers take them over (scale-out.md: within 8 s).
* **stop**: SIGTERM to every worker at once; each hands its shards over,
  finishes its probes in flight and stores what it holds, then exits and
  reports on its pipe how many results it stored. One still running after
  ``stop_limit_s`` is killed (its probes in flight are lost, its spool keeps
  the rest for its next start).

Workers run in sessions of their own, so a Ctrl-C in the terminal reaches
``run`` alone, which stops them in order; and they die with ``run``
(``PR_SET_PDEATHSIG``), so a killed ``run`` leaves no prober behind, as a
killed single-process ``run`` left none.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routewatch.config import Config
from routewatch.postgres.watch import RestartPolicy
from routewatch.probe.scheduler import Series
from routewatch.storage.shard_leases import HANDOVER_LEAD_S

log = logging.getLogger("routewatch")

START_TIMEOUT_S = 60.0  # a worker not ready by then failed to start
FINAL_REPORT_S = 1.0  # how long to wait for an exited worker's last line on its pipe
_PR_SET_PDEATHSIG = 1
WRITER_CLOSE_S = 10.0  # what a prober's writer takes at most to store what it holds at exit


def prober_stop_limit_s(config: Config) -> float:
    """The longest a ``routewatch probe`` on ``config`` takes from SIGTERM to its exit.

    It hands its shards over (``HANDOVER_LEAD_S`` ahead), lets its probes in flight run to
    their deadline (a reasoning model's router may give a longer one; the extra second covers a
    probe started just before the stop), stores what its writer holds, and has some slack.
    ``run`` kills a worker still running after this long; an orchestrator's grace period
    (Kubernetes' ``terminationGracePeriodSeconds``, compose's ``stop_grace_period``) shorter
    than it kills probes in flight and may leave the spool undelivered.
    """
    return HANDOVER_LEAD_S + config.longest_probe_s() + 1 + WRITER_CLOSE_S + 5


class WorkerFailed(Exception):
    """A prober worker could not be started: it exited, or did not report ready in time."""


class WorkersGaveUp(Exception):
    """A prober worker kept dying; ``run`` stops rather than probe with fewer processes than asked."""


@dataclass(frozen=True)
class WorkerView:
    """One worker as ``/metrics`` reports it."""

    index: int  # 1..N
    pid: int | None  # None while it is being restarted
    metrics_url: str | None  # its own /metrics; None while it is not running
    restarts: int  # times it was restarted after an exit


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    pipe: asyncio.StreamReader | None = None
    transport: asyncio.BaseTransport | None = None
    metrics_url: str | None = None
    tries: list[float] = field(default_factory=list)  # monotonic times of restarts
    restarts: int = 0
    stored: int = 0  # results stored by its earlier runs (reported on its pipe at exit)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def ended(returncode: int) -> str:
    """How a process ended, for a log line: "exited with code 1", "was killed by signal 9 (SIGKILL)"."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-returncode}{name}"


def _die_with_parent() -> Callable[[], None]:
    """Run in the forked child before exec: the kernel kills it when ``run`` dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)  # resolved in the parent: the child does the least
    parent = os.getpid()

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


class ProberWorkers:
    """``count`` prober workers, each ``argv(i)`` (i = 1..count) with ``env``."""

    def __init__(
        self,
        count: int,
        argv: Callable[[int], list[str]],
        env: Mapping[str, str],
        *,
        stop_limit_s: float,
        policy: RestartPolicy | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if count < 1:
            raise ValueError("at least one prober worker")
        self._argv = argv
        self._env = dict(env)
        self._stop_limit_s = stop_limit_s
        self._policy = policy or RestartPolicy()
        self._start_timeout_s = start_timeout_s
        self._workers = [_Worker(i) for i in range(1, count + 1)]
        self.stopping = False

    @property
    def count(self) -> int:
        """How many workers ``run`` keeps."""
        return len(self._workers)

    @property
    def stopped(self) -> bool:
        """Stopping or stopped: a reload has nothing to apply to (``admin.LiveProbes``)."""
        return self.stopping

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.running]

    @property
    def stored(self) -> int:
        """Results the workers reported stored when they exited, over every run of each."""
        return sum(w.stored for w in self._workers)

    def views(self) -> list[WorkerView]:
        """Every worker now, for ``/metrics``."""
        return [
            WorkerView(
                w.index,
                w.proc.pid if w.proc is not None and w.running else None,
                w.metrics_url if w.running else None,
                w.restarts,
            )
            for w in self._workers
        ]

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        """Start every worker and wait until each has reported ready.

        :raises WorkerFailed: one exited or stayed silent; those started stay
            running until :meth:`stop`, which the caller calls in any case.
        """
        outcomes = await asyncio.gather(*(self._start(w) for w in self._workers), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _start(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            w.proc = await asyncio.create_subprocess_exec(
                *self._argv(w.index),
                "--ready-fd",
                str(write_fd),
                env=self._env,
                stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                start_new_session=True,  # a Ctrl-C in the terminal is run's to pass on, in order
                preexec_fn=_die_with_parent(),  # only prctl and getppid: nothing that takes a lock
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        w.pipe = asyncio.StreamReader()
        pipe = w.pipe
        w.transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(pipe), os.fdopen(read_fd, "rb", buffering=0)
        )
        pid = w.proc.pid
        try:
            line = await asyncio.wait_for(w.pipe.readline(), self._start_timeout_s)
        except TimeoutError:
            w.proc.kill()
            raise WorkerFailed(
                f"prober worker {w.index} (pid {pid}) did not report ready within {self._start_timeout_s:g} s"
            ) from None
        if not line:
            code = await w.proc.wait()
            raise WorkerFailed(
                f"prober worker {w.index} (pid {pid}) {ended(code)} while starting (see its lines above)"
            )
        try:
            ready: dict[str, Any] = json.loads(line)
            w.metrics_url = str(ready["metrics"])
        except (ValueError, KeyError, TypeError):
            w.proc.kill()
            raise WorkerFailed(
                f"prober worker {w.index} (pid {pid}) reported something unreadable: {line[:200]!r}"
            ) from None
        log.info("prober worker %d is running (pid %d, metrics %s)", w.index, pid, w.metrics_url)

    # ------------------------------------------------------------ keep

    async def run(self) -> None:
        """Restart workers that exit; runs until cancelled.

        :raises WorkersGaveUp: a worker's restarts are used up.
        """
        tasks = [asyncio.create_task(self._keep(w), name=f"prober worker {w.index}") for w in self._workers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, w: _Worker) -> None:
        while True:
            assert w.proc is not None
            pid = w.proc.pid
            code = await w.proc.wait()
            await self._final_report(w)
            why = ended(code)
            log.error("prober worker %d (pid %d) %s; the others take its shards over within seconds", w.index, pid, why)
            await self._bring_back(w, f"it {why}")

    async def _bring_back(self, w: _Worker, why: str) -> None:
        while True:
            delay = self._policy.delay(w.tries, time.monotonic())
            if delay is None:
                raise WorkersGaveUp(
                    f"prober worker {w.index} could not be kept running: {len(w.tries)} restarts within"
                    f" {self._policy.window_s:g} s; last: {why}"
                )
            log.warning(
                "restarting prober worker %d in %g s (try %d of %d within %g s)",
                w.index,
                delay,
                len(w.tries) + 1,
                self._policy.max_tries,
                self._policy.window_s,
            )
            await asyncio.sleep(delay)
            w.tries.append(time.monotonic())
            try:
                await self._start(w)
            except WorkerFailed as exc:
                why = str(exc)
                log.error("%s", why)
                await self._final_report(w)
                continue
            w.restarts += 1
            assert w.proc is not None
            log.warning("prober worker %d is running again (pid %d) after %s", w.index, w.proc.pid, why)
            return

    async def _final_report(self, w: _Worker) -> None:
        """Read what an exited worker wrote last on its pipe (results stored), and close the pipe."""
        if w.pipe is not None:
            with contextlib.suppress(TimeoutError):
                rest = await asyncio.wait_for(w.pipe.read(), FINAL_REPORT_S)
                for line in rest.splitlines():
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        w.stored += int(json.loads(line).get("stored", 0))
        if w.transport is not None:
            w.transport.close()
        w.pipe = w.transport = None

    # ------------------------------------------------------------ reload and stop

    def apply(self, config: Config, series: Sequence[Series]) -> None:
        """A configuration reload (``admin.LiveProbes``): each worker re-reads the file and applies it.

        ``config`` and ``series`` are what ``run`` read from that file; the
        workers read it again, so they apply the same unless it changed again
        in between. Each logs what it applied.
        """
        told = self.reload()
        log.info("told %d prober worker(s) to re-read the configuration (%d series)", told, len(series))

    def reload(self) -> int:
        """SIGHUP to every running worker: each re-reads the configuration file; returns how many were told."""
        told = 0
        for w in self._workers:
            if w.proc is not None and w.running:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGHUP)
                    told += 1
        return told

    async def stop(self) -> None:
        """SIGTERM to every worker; wait for them (killing any past the limit), then read their last reports."""
        self.stopping = True
        live = [w for w in self._workers if w.proc is not None and w.running]
        for w in live:
            assert w.proc is not None
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        waits = {asyncio.ensure_future(w.proc.wait()): w for w in live if w.proc is not None}
        if waits:
            _, late = await asyncio.wait(waits, timeout=self._stop_limit_s)
            for task in late:
                w = waits[task]
                assert w.proc is not None
                log.warning(
                    "prober worker %d (pid %d) had not stopped %g s after SIGTERM; killing it"
                    " (its probes in flight are lost, its spool keeps the rest)",
                    w.index,
                    w.proc.pid,
                    self._stop_limit_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
            await asyncio.wait(waits)
        for w in self._workers:
            await self._final_report(w)
