"""Pushing results to a central routewatch: ``POST /v1/ingest`` as a spool destination.

A prober configured with ``ingest: {url, token_env}`` holds no database
credentials: its :class:`~routewatch.delivery.spooled.SpooledDelivery` delivers
each batch to the central server's ingest endpoint instead, with the region's
bearer token. The spool guarantees are the database writer's: a result is on
local disk before it is sent, a batch is confirmed only once the central
server answered that it stored it, and whatever is not confirmed is replayed
(after an outage, a restart or a crash). The endpoint stores by probe id, so
a replayed batch is stored once.

How each answer is taken:

* ``200``: the ingest report; its ``stored`` count is added to the writer's,
  and each entry of ``rejected`` (a record the server refused, with the
  reason) goes to the dead-letter file. An answer that is not a report is an
  outage: the batch is sent again, which costs nothing.
* ``413``: the batch is over the server's limits; it is split in halves,
  each sent on its own. A single result still too large is rejected.
* ``400``: the server could not read the request at all (not a per-record
  problem); the batch is rejected with the server's message.
* ``401``/``403``: the token is wrong or the server takes no pushes. Nothing
  is rejected: the results wait in the spool, and the error is logged, once
  per episode, until an operator fixes the token.
* Anything else (connection refused, a timeout, ``5xx``, ``404``, a redirect,
  which is never followed, so the token never goes to another address) is an
  outage: retried with a backoff while the spool keeps the results.

The token is sent only in the ``Authorization`` header, never logged, and
never part of an exception's message.
"""

from __future__ import annotations

import io
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from routewatch.delivery.spool import encode_result
from routewatch.delivery.spooled import Rejected, SpooledDelivery
from routewatch.results.probe_result import ProbeResult

log = logging.getLogger(__name__)

INGEST_PATH = "/v1/ingest"
REQUEST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 1024 * 1024  # an ingest report is small; more is not one
MAX_PAUSED = 20_000  # paused series read from one report: more than a prober can hold in its 1 MiB answer
RETRY_S = 1.0
MAX_RETRY_S = 15.0  # the longest wait between attempts while the central server is unreachable
_CLIP = 200


class IngestUnavailable(Exception):
    """The central server did not take the batch now; ``reason`` says why (no secret in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clip_line(text: str) -> str:
    """``text`` as one printable ASCII line of at most _CLIP characters (the server is not trusted to be tidy)."""
    flat = text.encode("ascii", "backslashreplace").decode("ascii")
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat if len(flat) <= _CLIP else flat[:_CLIP] + "..."


def central_session(ca_file: Path | None, timeout: aiohttp.ClientTimeout, *, connections: int) -> aiohttp.ClientSession:
    """An HTTP client for the central server: certificates always verified, against ``ca_file``, else the
    system's authorities; at most ``connections`` at once."""
    tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, ssl=tls),
        timeout=timeout,
        headers={"User-Agent": "routewatch-prober"},
    )


def central_error_message(body: bytes) -> str:
    """The ``error.message`` of a JSON error body, or the start of whatever the body is."""
    try:
        message = json.loads(body)["error"]["message"]
        if isinstance(message, str):
            return clip_line(message)
    except (ValueError, KeyError, TypeError):
        pass
    return clip_line(body[:_CLIP].decode("utf-8", "replace"))


def encode_batch(results: list[ProbeResult]) -> tuple[bytes, list[ProbeResult], list[Rejected]]:
    """The request body ``{"results": [...]}``: each record as the spool writes it.

    Returns the body, the results in it (in order: a report's indexes refer to
    them) and those that cannot be encoded at all (a field that is not JSON),
    with the reason; those are left out.
    """
    records: list[bytes] = []
    sent: list[ProbeResult] = []
    unencodable: list[Rejected] = []
    for r in results:
        try:
            records.append(encode_result(r))
        except Exception as exc:  # noqa: BLE001 - one result that cannot be sent must not stop the rest
            unencodable.append((r, f"cannot be encoded as JSON ({type(exc).__name__}: {exc})"))
        else:
            sent.append(r)
    return b'{"results":[' + b",".join(records) + b"]}", sent, unencodable


class IngestDestination:
    """The ingest endpoint of a central routewatch as a :class:`~routewatch.delivery.spooled.Destination`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        token_env: str,
        timeout_s: float = REQUEST_TIMEOUT_S,
        ca_file: Path | None = None,
    ) -> None:
        """``url`` is the endpoint (``https://central.example/v1/ingest``), ``token`` the region's token
        and ``token_env`` the variable it came from (named in log lines; the token never is).
        ``ca_file``: the certificate authorities to trust for ``url`` (PEM); default the system's."""
        self._url = url
        self._ca_file = ca_file
        self._token = token
        self._token_env = token_env
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=CONNECT_TIMEOUT_S)
        self._session: aiohttp.ClientSession | None = None
        self._refused_logged = False
        self._region: str | None = None  # what the server says the token is for, once it answered
        # The central server's word on which series the daily budget paused, as of its last report.
        self.budget_paused: BudgetPaused | None = None

    def __repr__(self) -> str:
        return f"IngestDestination({self._url!r}, token from ${self._token_env})"

    @property
    def name(self) -> str:
        """``ingest endpoint <url>``: the URL holds no credentials (the config refuses them)."""
        return f"ingest endpoint {self._url}"

    async def open(self) -> None:
        """Create the HTTP client: one connection, reused between batches."""
        self._session = central_session(self._ca_file, self._timeout, connections=1)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def outage(self, exc: BaseException) -> str | None:
        """Why the batch was not taken, for an unavailable server, a refused token or a network error."""
        if isinstance(exc, IngestUnavailable):
            return exc.reason
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._timeout.total:g} s"
        if isinstance(exc, aiohttp.ClientError | OSError):
            return clip_line(f"{type(exc).__name__}: {exc}")
        return None

    async def deliver(self, results: list[ProbeResult], count_stored: Callable[[int], None]) -> list[Rejected]:
        """POST ``results`` (split in halves while the server answers 413); return what it rejected."""
        body, sent, rejected = encode_batch(results)
        if sent:
            rejected += await self._post(sent, body, count_stored)
        return rejected

    async def _post(
        self, results: list[ProbeResult], body: bytes, count_stored: Callable[[int], None]
    ) -> list[Rejected]:
        assert self._session is not None, "open() first"
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        # A file object: aiohttp warns about large bytes bodies (they are written in one go).
        data = io.BytesIO(body)
        async with self._session.post(self._url, data=data, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            answer = await resp.content.read(MAX_ANSWER_BYTES + 1)
        if status == 200:
            self._accepted()
            return self._report(results, answer, count_stored)
        if status == 413:
            if len(results) == 1:
                return [(results[0], f"too large for the central server: {central_error_message(answer)}")]
            half = len(results) // 2
            rejected: list[Rejected] = []
            for part in (results[:half], results[half:]):
                rejected += await self._post(part, encode_batch(part)[0], count_stored)
            return rejected
        if status == 400:
            reason = f"the central server could not read the batch: {central_error_message(answer)}"
            return [(r, reason) for r in results]
        if status in (401, 403):
            self._refused(status, central_error_message(answer))
            raise IngestUnavailable(f"HTTP {status}: the central server refuses this prober's token")
        if 300 <= status < 400:
            raise IngestUnavailable(f"HTTP {status}: a redirect, not followed; set ingest.url to the final address")
        raise IngestUnavailable(f"HTTP {status}: {central_error_message(answer)}")

    def _report(self, results: list[ProbeResult], answer: bytes, count_stored: Callable[[int], None]) -> list[Rejected]:
        """The rejected results of a 200 answer; an answer that is not an ingest report is an outage."""
        try:
            report = json.loads(answer)
            stored = _count(report["stored"], len(results))
            entries: list[Any] = report["rejected"]
            reasons = {_count(e["index"], len(results) - 1): clip_line(str(e["reason"])) for e in entries}
            region = str(report["region"])
        except (ValueError, KeyError, TypeError, IndexError):
            raise IngestUnavailable("HTTP 200 with an answer that is not an ingest report") from None
        if region != self._region:
            self._region = region
            log.info("%s takes this prober's results as region %r", self.name, region)
        count_stored(stored)
        self.budget_paused = read_budget_paused(report.get("budget_paused"), self.budget_paused)
        return [(results[i], reason) for i, reason in sorted(reasons.items())]

    def _refused(self, status: int, message: str) -> None:
        if not self._refused_logged:
            self._refused_logged = True
            log.error(
                "%s refuses this prober's token (HTTP %d: %s): check the value of $%s and the central "
                "server's api.ingest_tokens; results are kept in the spool and sent once it is accepted",
                self.name,
                status,
                message,
                self._token_env,
            )

    def _accepted(self) -> None:
        if self._refused_logged:
            self._refused_logged = False
            log.info("%s accepts this prober's token again", self.name)


@dataclass(frozen=True, slots=True)
class BudgetPaused:
    """The series (router, model, prompt) the central server's budget paused for ``day`` (UTC)."""

    day: date
    series: frozenset[tuple[str, str, str]]


def read_budget_paused(raw: object, previous: BudgetPaused | None) -> BudgetPaused | None:
    """An ingest report's ``budget_paused``; ``previous`` when absent (an older server) or malformed.

    Advisory only: a malformed value never makes the batch fail.
    """
    if raw is None:
        return previous
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("series"), list) or len(raw["series"]) > MAX_PAUSED:
            raise ValueError("not {day, series}")
        keys = frozenset(_paused_series(entry) for entry in raw["series"])
        return BudgetPaused(date.fromisoformat(str(raw["day"])), keys)
    except (KeyError, ValueError):
        log.debug("an ingest report's budget_paused is not what this version reads; ignored")
        return previous


def _paused_series(entry: object) -> tuple[str, str, str]:
    if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(part, str) for part in entry)):
        raise ValueError("not [router, model, prompt]")
    return (entry[0], entry[1], entry[2])


def _count(value: Any, most: int) -> int:
    """``value`` as an int in 0..``most``; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ValueError(f"{value!r} is not a count in 0..{most}")
    return value


def push_writer(
    url: str,
    token: str,
    spool_dir: Path,
    *,
    token_env: str,
    spool_max_bytes: int = 1024**3,
    retry_s: float = RETRY_S,
    max_retry_s: float = MAX_RETRY_S,
    flush_s: float = 0.5,
    timeout_s: float = REQUEST_TIMEOUT_S,
    ca_file: Path | None = None,
) -> SpooledDelivery:
    """A spooled writer that pushes to the ingest endpoint at ``url`` (``start()`` it, ``close()`` it)."""
    return SpooledDelivery(
        IngestDestination(url, token, token_env=token_env, timeout_s=timeout_s, ca_file=ca_file),
        spool_dir,
        label="push writer",
        flush_s=flush_s,
        retry_s=retry_s,
        max_retry_s=max_retry_s,
        spool_max_bytes=spool_max_bytes,
    )
