"""The interface every router dialect implements, and the facts it reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

# How much of a raw string a dialect keeps until the result is built: more than
# router_values stores, so that redaction still sees a secret crossing the cut.
RAW_CHARS = 800


@dataclass(frozen=True, slots=True)
class RouterFacts:
    """What one response said about how the router served it, as sent (not yet normalised).

    Each value is whatever the router put there (a header string, a JSON
    value) or None when it said nothing; ``router_values.reported_facts``
    turns them into storable values or None.
    """

    dialect: str  # the dialect that read them ("litellm", ...)
    provider: object = None  # the upstream that served the answer
    served_model: object = None  # the model that answered
    attempts: object = None  # upstream calls made, the successful one included
    retries: object = None  # calls after the first one (when the router counts those instead)
    fallbacks: object = None  # of the calls, those to another deployment or model
    router_request_id: object = None  # the router's own id for the request
    cost_usd: object = None  # what the router says the request cost


class Dialect(Protocol):
    """Reads one response: ``headers`` once, ``chunk`` for each parsed stream chunk, then ``facts``.

    ``headers`` must look names up case-insensitively (aiohttp's do). A dialect
    keeps single values only, never the chunks, and never raises for what a
    router sends: a value of the wrong type is passed on and refused by
    normalisation.
    """

    def headers(self, headers: Mapping[str, str]) -> None:
        """Take what the response headers say."""

    def chunk(self, chunk: Mapping[str, Any]) -> None:
        """Take what one parsed stream chunk (a JSON object) says."""

    def facts(self) -> RouterFacts:
        """Everything read so far."""


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, cut to ``RAW_CHARS``; None when absent or blank."""
    value = (headers.get(name) or "").strip()
    return value[:RAW_CHARS] or None


def raw(value: object) -> object:
    """A JSON value as kept until normalisation: strings cut to ``RAW_CHARS``."""
    return value[:RAW_CHARS] if isinstance(value, str) else value


class ChunkLabels:
    """The OpenAI-shaped part every dialect reads: the first ``model``, ``provider`` and ``id`` of the chunks.

    The fields are read until each has been seen once, so that a long stream
    costs one check per chunk.
    """

    def __init__(self) -> None:
        self.model: object = None
        self.provider: object = None
        self.id: object = None
        self._complete = False

    def take(self, chunk: Mapping[str, Any]) -> None:
        """Note the labels of one chunk that are still missing."""
        if self._complete:
            return
        if self.model is None:
            self.model = raw(chunk.get("model"))
        if self.provider is None:
            self.provider = raw(chunk.get("provider"))
        if self.id is None:
            self.id = raw(chunk.get("id"))
        self._complete = self.model is not None and self.provider is not None and self.id is not None


class HeaderDialect:
    """A dialect that reads its facts from named response headers, and the served model from the chunks.

    Subclasses name their headers in ``HEADERS`` (fact -> header name) and the
    prefix that marks them in ``MARK_PREFIX``; ``facts`` hands on what was read.
    """

    name = "headers"
    MARK_PREFIX: ClassVar[str] = ""
    HEADERS: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        self.labels = ChunkLabels()
        self.read: dict[str, str | None] = {}
        self.saw_marks = False  # a header with MARK_PREFIX was present

    def headers(self, headers: Mapping[str, str]) -> None:
        """Take the headers named in ``HEADERS``."""
        self.saw_marks = any(name.lower().startswith(self.MARK_PREFIX) for name in headers)
        self.read = {fact: header(headers, name) for fact, name in self.HEADERS.items()}

    def chunk(self, chunk: Mapping[str, Any]) -> None:
        """Take the chunks' labels."""
        self.labels.take(chunk)

    def facts(self) -> RouterFacts:
        """The facts read from the headers; the served model from a header if named, else from the chunks."""
        return facts_from(self.name, self.read, self.labels)


def facts_from(dialect: str, values: Mapping[str, object], labels: ChunkLabels) -> RouterFacts:
    """``RouterFacts`` from values keyed by fact name (as in probes.yaml's ``dialect_fields``).

    The served model falls back to the chunks' ``model``: every OpenAI-shaped answer names one.
    """
    served = values.get("served_model")
    return RouterFacts(
        dialect=dialect,
        provider=values.get("provider"),
        served_model=served if served is not None else labels.model,
        attempts=values.get("attempts"),
        retries=values.get("retries"),
        fallbacks=values.get("fallbacks"),
        router_request_id=values.get("request_id"),
        cost_usd=values.get("cost"),
    )
