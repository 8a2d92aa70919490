"""Sending a pushing prober's model list reads to the central catalog: ``POST {ingest.url}/catalog``.

A prober with ``ingest:`` holds no database, so the catalog a prober with a
database writes itself (``model_catalog``: first and last seen, retirements,
listed prices) is written for it by the central server
(``aggregator/publish/ingest_catalog.py``). Each complete or truncated read of a
discovering router's list is sent once, with the region's token, by a task of
its own on a client of its own: result delivery (the spool and its one
connection) neither waits for it nor shares a connection with it.

Nothing is spooled: the list is read again at the next ``discover.refresh``
and that read is sent then, which is the retry. A read that comes while the
previous one of the same router is still being sent replaces it (the older
list says nothing the newer does not). A failure is logged once per router
until a send succeeds again, never with the token.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import aiohttp

from routewatch.delivery.push import (
    CONNECT_TIMEOUT_S,
    MAX_ANSWER_BYTES,
    REQUEST_TIMEOUT_S,
    central_error_message,
    central_session,
    clip_line,
)

log = logging.getLogger(__name__)

CATALOG_SUFFIX = "/catalog"

# (model, input, output and cached-input price, USD per 1M tokens), None where the list gave none.
ListedModel = tuple[str, float | None, float | None, float | None]


def catalog_url(ingest_url: str) -> str:
    """The catalog endpoint beside ``ingest_url`` (``https://c.example/v1/ingest`` -> ``…/v1/ingest/catalog``)."""
    return ingest_url.rstrip("/") + CATALOG_SUFFIX


def encode_listing(
    router: str, seen: datetime, complete: bool, listed: Sequence[ListedModel], keep: Sequence[str]
) -> bytes:
    """The request body: ``{router, seen, complete, models: [{id, input, output, cached_input}], keep}``.

    Prices left out where the list gave none; UTF-8 as it is (an escaped id could take 6 bytes a character).
    """
    models = []
    for model, given, output, cached in listed:
        entry: dict[str, object] = {"id": model}
        if given is not None and output is not None:
            entry["input"], entry["output"] = given, output
            if cached is not None:
                entry["cached_input"] = cached
        models.append(entry)
    body = {"router": router, "seen": seen.isoformat(), "complete": complete, "models": models, "keep": list(keep)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class CatalogPusher:
    """Sends each list read to the central server's catalog endpoint, in the background."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        token_env: str,
        timeout_s: float = REQUEST_TIMEOUT_S,
        ca_file: Path | None = None,
    ) -> None:
        """``url``: the catalog endpoint (:func:`catalog_url`); ``token`` the region's ingest token, from
        the variable ``token_env`` (named in log lines; the token never is)."""
        self._url = url
        self._token = token
        self._token_env = token_env
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=CONNECT_TIMEOUT_S)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()  # routers whose last send failed (logged once until one succeeds)
        self.sent = 0  # lists the central server recorded
        self.failed = 0  # sends that did not get a 200
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (router, "recorded" | "failed") -> sends

    def __repr__(self) -> str:
        return f"CatalogPusher({self._url!r}, token from ${self._token_env})"

    async def open(self) -> None:
        """Create the HTTP client (certificates always verified: against ``ca_file``, else the system's)."""
        self._session = central_session(self._ca_file, self._timeout, connections=2)

    async def close(self) -> None:
        """Abandon the sends under way (the next start reads and sends the lists again) and close the client."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def submit(
        self, router: str, seen: datetime, listed: Sequence[ListedModel], *, complete: bool, keep: Sequence[str]
    ) -> None:
        """Send ``router``'s list read at ``seen`` in the background; a send of its previous read still
        under way is cancelled (this one supersedes it)."""
        if self._session is None:
            return
        previous = self._tasks.pop(router, None)
        if previous is not None and not previous.done():
            previous.cancel()
        task = asyncio.get_running_loop().create_task(
            self._send(router, seen, list(listed), complete, list(keep)), name=f"catalog push {router}"
        )
        self._tasks[router] = task
        task.add_done_callback(lambda t: self._tasks.pop(router, None) if self._tasks.get(router) is t else None)

    async def wait(self) -> None:
        """Until every send under way has ended (tests, and a clean stop that wants them through)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def _send(
        self, router: str, seen: datetime, listed: list[ListedModel], complete: bool, keep: list[str]
    ) -> None:
        try:
            # 20,000 entries take a few tens of milliseconds to encode: not on the loop that times the probes.
            body = await asyncio.to_thread(encode_listing, router, seen, complete, listed, keep)
            status, answer = await self._post(body)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = f"no answer within {self._timeout.total:g} s" if isinstance(exc, TimeoutError) else None
            self._failed(router, reason or clip_line(f"{type(exc).__name__}: {exc}"))
            return
        if status == 200:
            self.sent += 1
            self.outcomes[(router, "recorded")] += 1
            if router in self._failing:
                self._failing.discard(router)
                log.info("model list of router %s recorded by the central catalog again", router)
            return
        if status in (401, 403):
            reason = f"HTTP {status}: the central server refuses this prober's token (check ${self._token_env})"
        elif 300 <= status < 400:
            reason = f"HTTP {status}: a redirect, not followed"
        else:
            reason = f"HTTP {status}: {central_error_message(answer)}"
        self._failed(router, reason)

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None, "open() first"
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        async with self._session.post(self._url, data=io.BytesIO(body), headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.content.read(MAX_ANSWER_BYTES + 1)

    def _failed(self, router: str, reason: str) -> None:
        self.failed += 1
        self.outcomes[(router, "failed")] += 1
        if router in self._failing:
            log.debug("model list of router %s not recorded centrally: %s", router, reason)
            return
        self._failing.add(router)
        log.warning(
            "model list of router %s not recorded by the central catalog at %s: %s; sent again at its next read",
            router,
            self._url,
            reason,
        )
