"""Chat-completion chunks and their server-sent-event framing, as OpenAI-compatible routers send them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": OPENROUTER PROCESSING\n\n"

# Single short words with a leading space, so a text tokenizer counts about one token each.
_CONTENT_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_REASONING_WORDS = "let me count the numbers in words one by one".split()
CONTENT_PERIOD = len(_CONTENT_WORDS)
"""Content tokens repeat after this many."""


def content_token(index: int) -> str:
    """Text of the index-th content token."""
    return " " + _CONTENT_WORDS[index % len(_CONTENT_WORDS)]


def reasoning_token(index: int) -> str:
    """Text of the index-th reasoning token."""
    return " " + _REASONING_WORDS[index % len(_REASONING_WORDS)]


def event(payload: Any) -> bytes:
    """One `data:` event carrying a JSON payload."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage_body(
    prompt_tokens: int, completion_tokens: int, reasoning_tokens: int, cached_tokens: int = 0
) -> dict[str, Any]:
    """OpenAI usage object; completion tokens include reasoning, and prompt tokens the cached ones, as OpenAI
    counts them."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


@dataclass(frozen=True)
class ChunkMaker:
    """Builds the chunks of one completion; they share id, timestamp, model and provider."""

    id: str
    created: int
    model: str
    provider: str | None  # None: the chunks carry no `provider` field
    usage_fields: Mapping[str, Any] = field(default_factory=dict)  # extra fields of the usage object
    usage_chunk_fields: Mapping[str, Any] = field(default_factory=dict)  # extra fields of the usage chunk
    # delta field -> (bytes before, bytes after) its JSON string in a token event
    _templates: dict[str, tuple[bytes, bytes]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _base(self) -> dict[str, Any]:
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        if self.provider is not None:
            base["provider"] = self.provider
        return base

    def delta(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        """A chunk with one choice carrying `delta`."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {**self._base(), "choices": [choice]}

    def token_event(self, kind: str, text: str) -> bytes:
        """The event of one token, byte for byte `event(self.delta({kind: text}))`, but cheaper."""
        return self.raw_token_event(kind, json.dumps(text).encode())

    def raw_token_event(self, kind: str, json_string: bytes) -> bytes:
        """A token event whose delta value is `json_string` as given, even if it is not valid JSON."""
        template = self._templates.get(kind)
        if template is None:
            # Split a rendered event around a marker, so both paths always produce the same bytes.
            before, _, after = event(self.delta({kind: "\0"})).rpartition(b'"\\u0000"')
            template = self._templates[kind] = (before, after)
        return template[0] + json_string + template[1]

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The trailing usage chunk, with no choices."""
        return {**self._base(), "choices": [], "usage": {**usage, **self.usage_fields}, **self.usage_chunk_fields}

    def error(self, message: str, code: int) -> dict[str, Any]:
        """An error event inside a 200 stream, shaped like OpenRouter's mid-stream errors."""
        choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
        return {**self._base(), "error": {"message": message, "code": code}, "choices": [choice]}

    def malformed(self) -> bytes:
        """An event whose data is cut off in the middle of its JSON."""
        return (
            b'data: {"id":"'
            + self.id.encode()
            + b'","object":"chat.completion.chunk","choices":[{"delta":{"content":" el\n\n'
        )

    def completion(
        self, content: str, reasoning: str, finish_reason: str, usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A whole non-streaming chat completion."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning"] = reasoning
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            **({} if self.provider is None else {"provider": self.provider}),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        }
        if usage is not None:
            body["usage"] = usage
        return body
