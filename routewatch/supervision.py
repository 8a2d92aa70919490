"""Watching the long-lived tasks of a routewatch process.

``routewatch run`` and ``serve`` keep a handful of tasks alive for the whole
run: the batch writer's flush loop, the aggregator's refresh loop, the
maintenance loop, the status reporter, the embedded PostgreSQL's watch. Each
handles the failures it expects (a database outage, a refused batch); an
exception it does not expect ends the task. Without a watch that ends in a
silent hang: the API keeps answering, ``/readyz`` says ready, nothing is
stored. The :class:`Supervisor` turns it into a loud stop: the failure is
logged (redacted), published for ``/readyz``, and the process shuts down in
order and exits non-zero.

:meth:`Supervisor.running` runs such a task for as long as a context is
open, so that the runner can stack it with the other parts it stops in order.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from routewatch.probe.redact import redact

log = logging.getLogger("routewatch")

STOP_WAIT_S = 10.0  # a cancelled task that has not ended by then is reported and left behind


@dataclass(frozen=True)
class Failure:
    """A watched task that ended while the process was meant to keep running."""

    component: str
    error: str  # "ExceptionClass: message", redacted

    def describe(self) -> str:
        """One line for /readyz and the exit message."""
        return f"the {self.component} task failed: {self.error}"


def dsn_secrets(dsn: str) -> list[str]:
    """What of a database URL must never be shown: the URL itself and its password, as written and decoded."""
    password = urlsplit(dsn).password
    return [dsn, *([password, unquote(password)] if password else [])]


class Supervisor:
    """Watches named tasks; the first to end on its own stops the process.

    ``stop`` is the process's shutdown event (SIGINT/SIGTERM set it too).
    ``secrets`` (database URLs, keys) are masked in everything logged.
    ``failures`` is the list ``/readyz`` reads: non-empty means not ready.
    """

    def __init__(self, stop: asyncio.Event, secrets: Iterable[str] = ()) -> None:
        self._stop = stop
        self._secrets = [s for s in secrets if s]
        self._closing = False
        self.failures: list[str] = []
        self.failed: list[Failure] = []

    def watch(
        self, component: str, task: asyncio.Task[object], explained: tuple[type[BaseException], ...] = ()
    ) -> None:
        """Treat the end of ``task`` as a failure of ``component`` unless :meth:`closing` was called first.

        ``explained``: exceptions whose message says all (a deliberate give-up),
        logged without the traceback every other exception gets.
        """
        task.add_done_callback(lambda done: self._ended(component, done, explained))

    @asynccontextmanager
    async def running(
        self,
        component: str,
        run: Callable[[], Coroutine[Any, Any, object]],
        explained: tuple[type[BaseException], ...] = (),
    ) -> AsyncIterator[asyncio.Task[object]]:
        """Run ``run()`` as a task watched as ``component`` (see :meth:`watch`) while the context is open.

        Leaving the context means the process is stopping: :meth:`closing` is
        called, then the task is cancelled and waited for (up to ``STOP_WAIT_S``).
        """
        task = asyncio.get_running_loop().create_task(run(), name=component)
        self.watch(component, task, explained)
        try:
            yield task
        finally:
            self.closing()
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=STOP_WAIT_S)
            if not done:
                log.warning("the %s task had not stopped %gs after it was cancelled", component, STOP_WAIT_S)

    def closing(self) -> None:
        """The process is shutting down: tasks cancelled or ending from now on are expected."""
        self._closing = True

    @property
    def exit_code(self) -> int:
        """0 when every watched task lived until shutdown, 1 when one failed."""
        return 1 if self.failed else 0

    def _ended(self, component: str, task: asyncio.Task[object], explained: tuple[type[BaseException], ...]) -> None:
        if task.cancelled():
            if self._closing:
                return
            error, detail = "CancelledError: cancelled while routewatch was running", ""
        else:
            exc = task.exception()  # retrieved here, so asyncio never reports it as lost
            if exc is None:
                if self._closing:
                    return
                error, detail = "returned although it should run until routewatch stops", ""
            else:
                error = redact(f"{exc.__class__.__name__}: {exc}", self._secrets)
                # Line by line: redact() caps its input's length, a traceback is longer.
                lines = [] if isinstance(exc, explained) else "".join(traceback.format_exception(exc)).splitlines()
                detail = "\n".join(redact(line, self._secrets) for line in lines)
        failure = Failure(component, error)
        self.failed.append(failure)
        self.failures.append(failure.describe())
        log.error("%s; stopping routewatch%s", failure.describe(), f"\n{detail.rstrip()}" if detail else "")
        self._stop.set()
