"""Checking a chat-completions request and turning failures into OpenAI-style errors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from routewatch.simulator.profiles import ModelProfile

_BEARER = re.compile(r"Bearer \S+")


class ApiError(Exception):
    """A client error, answered as `{"error": {...}}` the way OpenAI does."""

    def __init__(
        self, status: int, message: str, *, error_type: str = "invalid_request_error", code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code

    def response(self, headers: Mapping[str, str]) -> web.Response:
        body = {"error": {"message": self.message, "type": self.error_type, "param": None, "code": self.code}}
        return web.json_response(body, status=self.status, headers=headers)


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a valid request that shape the simulated answer."""

    profile: ModelProfile
    stream: bool
    max_tokens: int | None
    wants_usage: bool
    prompt_tokens: int
    nonce_prompt: str
    reasoning_asked: str | None = None
    """The reasoning control the request sent, as `field=value` (e.g. "reasoning_effort=low",
    "reasoning.max_tokens=2048"); None: none."""


def _text(content: Any) -> str:
    # Content is a string or a list of parts; only text parts count here.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def estimate_prompt_tokens(messages: list[Mapping[str, Any]]) -> int:
    """About four characters a token, plus a few tokens of framing per message."""
    chars = sum(len(_text(m.get("content"))) for m in messages)
    return math.ceil(chars / 4) + 4 * len(messages)


def _reasoning_asked(body: Mapping[str, Any]) -> str | None:
    """The reasoning control in an OpenAI (reasoning_effort) or OpenRouter (reasoning object) request."""
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        return f"reasoning_effort={effort}"
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        for key in ("effort", "max_tokens"):
            if key in reasoning:
                return f"reasoning.{key}={reasoning[key]}"
    return None


def check_authorization(header: str | None) -> None:
    """No key is needed, but one that is sent must be a bearer token; the key is never echoed."""
    if header is not None and not _BEARER.fullmatch(header):
        raise ApiError(
            401,
            "Authorization header must be 'Bearer <key>'",
            error_type="authentication_error",
            code="invalid_api_key",
        )


def parse_chat_request(body: Any, profiles: Mapping[str, ModelProfile]) -> ChatRequest:
    """Validate a decoded JSON body against the served models."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required and must be a non-empty list")
    if not all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages):
        raise ApiError(400, "each message must be an object with a string 'role'")
    profile = profiles.get(model)
    if profile is None:
        raise ApiError(404, f"The model `{model}` does not exist", code="model_not_found")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise ApiError(400, "'max_tokens' must be a positive integer")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise ApiError(400, "'stream_options' must be an object")
    users = [m for m in messages if m.get("role") == "user"]
    return ChatRequest(
        profile=profile,
        stream=stream,
        max_tokens=max_tokens,
        reasoning_asked=_reasoning_asked(body),
        # Outside streams OpenAI always reports usage.
        wants_usage=bool(options.get("include_usage")) if stream else True,
        prompt_tokens=estimate_prompt_tokens(messages),
        nonce_prompt=_text(users[-1].get("content")) if users else "",
    )
