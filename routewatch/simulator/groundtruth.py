"""The simulator's record of what it actually sent, for comparing with what a probe measured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

# A demo simulator may run for days; keep memory bounded.
MAX_RECORDS = 50_000


@dataclass
class ServedRequest:
    """One chat-completions request as served; updated while the response goes out.

    Times are `time.perf_counter_ns()` values of the simulator's process.
    """

    seq: int
    """Increasing number of the request, from 1."""
    request_id: str
    """The `X-Request-Id` header and chunk id sent back."""
    received_ns: int
    """When the handler started; the injected TTFT counts from here."""
    headers_ns: int | None = None
    """When the response headers were handed to the socket: just before `await resp.prepare` for
    streams; for whole responses (errors, non-streaming, not_sse), when the handler returned them."""
    model: str = ""
    """Model asked for ("" until the body was read)."""
    nonce_prompt: str = ""
    """Content of the last user message, to match a probe to its request."""
    status: int | None = None
    """HTTP status sent (None until decided)."""
    fault: str | None = None
    """Injected fault kind, or None."""
    max_tokens_asked: int | None = None
    """The output cap the request asked for: max_completion_tokens, else max_tokens (None: no cap)."""
    reasoning_asked: str | None = None
    """The reasoning control the request sent, e.g. "reasoning_effort=low" (None: none)."""
    drawn_ttft_ms: float | None = None
    """The TTFT drawn from the profile (also for requests that then got an HTTP fault)."""
    injected_ttft_ms: float | None = None
    """The TTFT served, from `received_ns` to when the first token was due, set once it was sent:
    the drawn TTFT, plus stall_s for slow_headers; for trickle the real time of its first token.
    None when no token was sent."""
    token_times_ns: list[int] = field(default_factory=list)
    """When each token-bearing event (reasoning and content) was written: `perf_counter_ns()` taken
    immediately before the `await resp.write(...)` that completed the event. aiohttp hands the bytes
    to the kernel inside that call, before it can yield; a stamp taken after it would add the await's
    scheduling delay. A token is listed only once that write succeeded."""
    output_tokens: int = 0
    """Tokens sent, reasoning included (what usage.completion_tokens reports)."""
    reasoning_tokens: int = 0
    """Of `output_tokens`, those sent as reasoning."""
    prompt_tokens: int = 0
    """Prompt size the simulator estimated (plus the profile's overhead) and reports in usage."""
    cached_prompt_tokens: int = 0
    """Of `prompt_tokens`, those usage reports as cached (prompt_tokens_details.cached_tokens)."""
    usage_sent: bool = False
    """A usage chunk was sent."""
    finished: bool = False
    """The response was complete (`[DONE]` for streams)."""
    dialect: str | None = None
    """The router dialect the answer was announced in."""
    provider: str | None = None
    """The upstream that answered (or, when every call failed, the last one tried)."""
    provider_label: str | None = None
    """The provider as the dialect announces it: what a reader should publish (None: not announced)."""
    served_model: str | None = None
    """The model named in the answer."""
    attempts: int | None = None
    """Upstream calls the router made, the answering one included."""
    fallbacks: int | None = None
    """Of those calls, the ones to the fallback upstream."""
    attempts_sent: int | None = None
    """The attempts the dialect announced (None: the dialect does not announce them)."""
    fallbacks_sent: int | None = None
    """The fallbacks the dialect announced (None: the dialect does not announce them)."""
    upstream_delay_ms: float = 0.0
    """Time spent on failed upstream calls before the answering one; the first token waits for it."""
    router_request_id: str | None = None
    """The router's own id, when its dialect sends one distinct from `request_id`."""
    cost_usd: float | None = None
    """The cost the dialect announced (None: not announced)."""

    def note_hidden_reasoning(self) -> None:
        """Count one reasoning token generated but not streamed (usage reports it)."""
        self.output_tokens += 1
        self.reasoning_tokens += 1

    def note_token(self, kind: str, sent_ns: int) -> None:
        """Count one token of `kind` ("content" or "reasoning") whose event was written at `sent_ns`."""
        self.token_times_ns.append(sent_ns)
        self.output_tokens += 1
        if kind == "reasoning":
            self.reasoning_tokens += 1


class GroundTruthLog:
    """Records of served requests in arrival order, with lookup by request id."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.records: list[ServedRequest] = []
        self._by_id: dict[str, ServedRequest] = {}
        self._next_seq = 1
        self._max_records = max_records

    def open(self, request_id: str, received_ns: int) -> ServedRequest:
        """Start the record of a request that just arrived."""
        record = ServedRequest(seq=self._next_seq, request_id=request_id, received_ns=received_ns)
        self._next_seq += 1
        self.records.append(record)
        self._by_id[request_id] = record
        if len(self.records) > self._max_records:
            for old in self.records[: -self._max_records]:
                del self._by_id[old.request_id]
            del self.records[: -self._max_records]
        return record

    def by_request_id(self, request_id: str) -> ServedRequest | None:
        """The record of one request, or None."""
        return self._by_id.get(request_id)

    def since(self, seq: int) -> list[ServedRequest]:
        """Records with a sequence number greater than `seq`."""
        return [r for r in self.records if r.seq > seq]

    def clear(self) -> int:
        """Forget every record (sequence numbers keep counting); returns how many were dropped.

        Requests still in flight keep their record object but are no longer listed.
        """
        dropped = len(self.records)
        self.records.clear()
        self._by_id.clear()
        return dropped


def json_batches(records: list[ServedRequest], batch_values: int = 50_000) -> Iterator[bytes]:
    """The records as one JSON array, in pieces of about `batch_values` token times each.

    `vars()` instead of `dataclasses.asdict`: asdict deep-copies every token list and is about
    seven times slower; pieces let a server yield to its streams between them.
    """
    yield b"["
    batch: list[dict[str, object]] = []
    values = 0
    separator = b""
    for i, record in enumerate(records):
        batch.append(vars(record))
        values += 16 + len(record.token_times_ns)  # a record's other fields weigh about 16 values
        if values >= batch_values or i == len(records) - 1:
            yield separator + json.dumps(batch, separators=(",", ":"))[1:-1].encode()
            batch, values, separator = [], 0, b","
    yield b"]"
