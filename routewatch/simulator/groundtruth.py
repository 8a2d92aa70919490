"""The simulator's record of what it actually sent, for comparing with what a probe measured."""

from __future__ import annotations

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
    model: str = ""
    """Model asked for ("" until the body was read)."""
    nonce_prompt: str = ""
    """Content of the last user message, to match a probe to its request."""
    status: int | None = None
    """HTTP status sent (None until decided)."""
    fault: str | None = None
    """Injected fault kind, or None."""
    injected_ttft_ms: float | None = None
    """The drawn TTFT, once the first token was sent; None when no token was sent."""
    token_times_ns: list[int] = field(default_factory=list)
    """When each token chunk (reasoning and content) was written."""
    output_tokens: int = 0
    """Tokens sent, reasoning included (what usage.completion_tokens reports)."""
    reasoning_tokens: int = 0
    """Of `output_tokens`, those sent as reasoning."""
    prompt_tokens: int = 0
    """Prompt size the simulator estimated and reports in usage."""
    usage_sent: bool = False
    """A usage chunk was sent."""
    finished: bool = False
    """The response was complete (`[DONE]` for streams)."""


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
