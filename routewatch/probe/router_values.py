"""Values a router sent, checked and made storable before they reach a ``ProbeResult``.

A router is untrusted input. Everything it controls ends up in a
PostgreSQL column, the spool, the API and the status page, so each value is
normalised here, in one place, with pure functions:

* counts must fit the ``integer`` (int4) columns of ``probe_results`` and be
  non-negative; anything else is refused with ``UnusableValue`` (the probe
  classifies that as ``bad_response``);
* strings become valid UTF-8 (lone surrogates, which JSON escapes and
  undecodable header bytes both produce, turn into U+FFFD), lose NUL (which a
  ``text`` column cannot hold) and other control characters, have secrets
  redacted and are cut to a bounded length; an empty one is ``None``;
* floats must be finite;
* ``Retry-After`` is a sane number of seconds or nothing;
* what a router dialect read (``reported_facts``): labels as above, counts of
  attempts within ``MAX_ATTEMPTS``, a cost within ``MAX_COST_USD``. These are
  the router's account of itself, not the measurement: a value that cannot be
  one is dropped (None), and the probe keeps its result.

``storable`` applies the same rules to a whole result, as the last step of
building one, so a result cannot carry a value the database would refuse.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from routewatch.probe.dialects import RouterFacts
from routewatch.probe.redact import MAX_DETAIL_CHARS, redact
from routewatch.results.probe_result import ProbeResult

INT4_MAX = 2**31 - 1  # the `integer` columns of probe_results
# Model ids, provider names and request ids are short labels; a longer one is
# not a label any more.
MAX_LABEL_CHARS = 200
# A Retry-After longer than a day is not advice a prober can use.
MAX_RETRY_AFTER_S = 86_400.0
# More upstream calls than this for one request is no count a router makes.
MAX_ATTEMPTS = 1000
# A canary costs fractions of a cent; a claim above this is not a price.
MAX_COST_USD = 1000.0

_SURROGATES = re.compile("[\ud800-\udfff]")
# ESC (or one-byte C1) sequences a terminal acts on: CSI (cursor, colour, clear
# screen), OSC (window title, hyperlinks; ended by BEL or ST), DCS/SOS/PM/APC
# strings and two-byte escapes. Removed whole, so that what a router wrote
# around them stays readable instead of turning into "\ufffd[2J".
_TERMINAL_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|[\x90\x98\x9e\x9f][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# What is left of C0 and C1 controls and DEL: they end lines, move cursors or
# recolour a terminal wherever the value is shown; the bidirectional overrides
# reorder what a page displays. NUL is dropped, the rest replaced.
_CONTROLS = re.compile("[\x01-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_DETAIL_CONTROLS = re.compile("[\x01-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # keeps tab, newline
_REPLACEMENT = "\ufffd"


class UnusableValue(ValueError):
    """A router value that cannot be stored as the field it claims to be."""


def valid_text(value: str, *, multiline: bool = False) -> str:
    """``value`` as text PostgreSQL and a terminal accept: valid UTF-8, no NUL, no escape
    sequences, no control characters or bidirectional overrides.

    Tab and newline are kept when ``multiline``.
    """
    value = _SURROGATES.sub(_REPLACEMENT, value).replace("\x00", "")
    value = _TERMINAL_SEQUENCE.sub("", value)
    return (_DETAIL_CONTROLS if multiline else _CONTROLS).sub(_REPLACEMENT, value)


def label(value: object, secrets: Iterable[str] = ()) -> str | None:
    """A router-sent label (model id, provider, request id), storable and redacted; None if absent or blank."""
    if not isinstance(value, str):
        return None
    # Cut before the regexes run: a label is short, and whatever lies past
    # the cut (plus a margin for a secret straddling it) is never shown.
    text = valid_text(value[: 4 * MAX_LABEL_CHARS]).strip()
    if not text:
        return None
    return redact(text, secrets, max_chars=MAX_LABEL_CHARS, fragments=True)


def detail(text: str, secrets: Iterable[str] = ()) -> str:
    """An error detail, storable and redacted as a whole before it is cut to ``MAX_DETAIL_CHARS``."""
    return redact(valid_text(text, multiline=True), secrets, max_chars=MAX_DETAIL_CHARS, fragments=True)


def token_count(value: object, field: str) -> int | None:
    """A ``usage`` count as an int; None if absent; ``UnusableValue`` if it is not a count an int4 holds."""
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # JSON has one number type: 12.0 is 12
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnusableValue(f"{field} is {_describe(value)}, not a whole number")
    if not 0 <= value <= INT4_MAX:
        raise UnusableValue(f"{field} is {_describe(value)}, outside 0..{INT4_MAX}")
    return value


def finite(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None."""
    return value if value is not None and math.isfinite(value) else None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delay-seconds or an HTTP-date.

    None for anything that is not a finite delay between 0 and a day:
    routers send negative, NaN and 1e308 values, and none of them is advice.
    """
    if value is None:
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, now or datetime.now(UTC))
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_RETRY_AFTER_S:
        return None
    return seconds


def _seconds_until(http_date: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone information
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclasses.dataclass(frozen=True, slots=True)
class ReportedFacts:
    """``RouterFacts`` made storable: labels, counts and a cost, each None where unusable."""

    dialect: str
    provider: str | None = None
    served_model: str | None = None
    attempts: int | None = None  # upstream calls, the one that answered included (>= 1)
    fallbacks: int | None = None
    router_request_id: str | None = None
    cost_usd: float | None = None


def reported_count(value: object, *, minimum: int = 0) -> int | None:
    """A count a router reported (an int, or the decimal digits of a header), if within ``minimum..MAX_ATTEMPTS``."""
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isascii() and text.isdecimal() and len(text) <= 9 else None
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if minimum <= value <= MAX_ATTEMPTS else None


def reported_cost(value: object) -> float | None:
    """A cost in USD a router reported (a number, or one as header text), if finite and within ``0..MAX_COST_USD``."""
    if isinstance(value, str):
        try:
            value = float(value.strip()[:40])
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and 0.0 <= cost <= MAX_COST_USD else None


def reported_facts(facts: RouterFacts, secrets: Iterable[str] = ()) -> ReportedFacts:
    """``facts`` normalised; attempts counted from retries and fallbacks where the router sends those instead."""
    secrets = [s for s in secrets if s]
    fallbacks = reported_count(facts.fallbacks)
    attempts = reported_count(facts.attempts, minimum=1)
    retries = reported_count(facts.retries)
    if attempts is None and retries is not None:
        # LiteLLM counts the calls after the first: retries, then fallbacks.
        attempts = 1 + retries + (fallbacks or 0)
        attempts = attempts if attempts <= MAX_ATTEMPTS else None
    return ReportedFacts(
        dialect=facts.dialect,
        provider=label(facts.provider, secrets),
        served_model=label(facts.served_model, secrets),
        attempts=attempts,
        fallbacks=fallbacks,
        router_request_id=label(facts.router_request_id, secrets),
        cost_usd=reported_cost(facts.cost_usd),
    )


def storable(result: ProbeResult, secrets: Iterable[str] = ()) -> ProbeResult:
    """``result`` with every router-controlled field normalised (see the module docstring)."""
    secrets = [s for s in secrets if s]
    return dataclasses.replace(
        result,
        error_detail=None if result.error_detail is None else detail(result.error_detail, secrets),
        model_served=label(result.model_served, secrets),
        provider=label(result.provider, secrets),
        request_id=label(result.request_id, secrets),
        dialect=label(result.dialect, secrets),
        router_request_id=label(result.router_request_id, secrets),
        # The bounds of reported_facts again: a pushed result did not pass through it here.
        attempts=reported_count(result.attempts, minimum=1),
        fallbacks=reported_count(result.fallbacks),
        reported_cost_usd=reported_cost(result.reported_cost_usd),
        http_status=_int4_or_none(result.http_status),
        input_tokens=_int4_or_none(result.input_tokens),
        output_tokens=_int4_or_none(result.output_tokens),
        cached_input_tokens=_int4_or_none(result.cached_input_tokens),
        reasoning_tokens=_int4_or_none(result.reasoning_tokens),
        chunks=min(max(result.chunks, 0), INT4_MAX),
        # Every float field, by name, so that the type checker sees each one.
        connect_ms=finite(result.connect_ms),
        ttfb_ms=finite(result.ttfb_ms),
        ttft_ms=finite(result.ttft_ms),
        ttfat_ms=finite(result.ttfat_ms),
        e2e_ms=finite(result.e2e_ms),
        output_tps=finite(result.output_tps),
        chunk_gap_max_ms=finite(result.chunk_gap_max_ms),
        chunk_gap_p95_ms=finite(result.chunk_gap_p95_ms),
        retry_after_s=finite(result.retry_after_s),
        loop_lag_ms=finite(result.loop_lag_ms),
        # Negative only in a pushed record: a prober computes it from counts of 0 or more.
        cost_usd=None if result.cost_usd is None or result.cost_usd < 0 else finite(result.cost_usd),
    )


def _int4_or_none(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= INT4_MAX else None


def _describe(value: object) -> str:
    """A short, safe rendering of a router value for an error detail."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
