"""probes.yaml as typed sections: every setting, its type, its limits and its checks.

Each section validates itself (unknown keys are refused) and cross-field
rules point at the offending key, so the loader can report every problem at
once with its line. API keys never appear in the file: a router names the
environment variable that holds its key.
"""

from __future__ import annotations

import fnmatch
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, Protocol
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from routewatch.config.dialects import GENERIC_FACTS, parse_source
from routewatch.config.durations import parse_duration
from routewatch.config.tiers import (
    canonical_tier,
    estimate_chat_tokens,
    nearest_standard_tier,
    parse_tier,
)

SIMULATOR = "simulator"
"""The ``base_url`` that selects routewatch's built-in router simulator."""

KEYS_FROM_ENV = "API keys are read from the environment: set api_key_env to the variable's name"

Loc = tuple[str | int, ...]

# Headers that would put a key into the file; the probe sends the key from api_key_env.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})
# Headers the probe or its HTTP client must own: a fixed value would frame the body wrongly
# (and desynchronise a pooled connection), or change the connection itself.
_BODY_OWNED = "the probe sets it for the JSON body it sends; a fixed value would corrupt the request"
_CONNECTION_OWNED = "a connection header, managed by the HTTP client; it cannot be set per request"
_RESERVED_HEADERS = {
    "content-length": _BODY_OWNED,
    "transfer-encoding": _BODY_OWNED,
    "content-encoding": _BODY_OWNED,
    "content-type": _BODY_OWNED,
    "host": "taken from base_url: put the host there",
    "connection": _CONNECTION_OWNED,
    "keep-alive": _CONNECTION_OWNED,
    "proxy-connection": _CONNECTION_OWNED,
    "te": _CONNECTION_OWNED,
    "trailer": _CONNECTION_OWNED,
    "upgrade": _CONNECTION_OWNED,
    "expect": _CONNECTION_OWNED,
}
# routewatch's own settings (admin token, database URL, ...) must never be sent to a router.
# ROUTEWATCH_API_KEY is the one that exists to hold a router's key.
_OWN_ENV_PREFIX = "ROUTEWATCH_"
_ROUTER_KEY_ENV = "ROUTEWATCH_API_KEY"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Custom pydantic error type whose context carries several (sub-location, message)
# pairs, so a cross-field rule can point at each offending key, not at its parent.
PROBLEMS_ERROR_TYPE = "routewatch_problems"
UNKNOWN_KEY_HINTS = {"api_key": KEYS_FROM_ENV}  # unknown keys that deserve more than "unknown field"


# ---------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file; ``line`` is 1-based, None when not known."""

    file: str
    line: int | None
    field: str | None  # e.g. "routers[0].models[2]", "(yaml)"
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config file could not be loaded; ``str()`` lists every issue, one per line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__(issues)
        self.issues = issues

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def format_path(loc: Loc) -> str:
    """``("routers", 0, "prices", "a/b")`` -> ``routers[0].prices["a/b"]``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        elif isinstance(part, str):
            out += f"[{json.dumps(part)}]"
        else:
            out += f"[{part!r}]"
    return out


def _problems(found: Sequence[tuple[Loc, str]]) -> PydanticCustomError:
    summary = "; ".join(f"{format_path(loc)}: {msg}" if loc else msg for loc, msg in found)
    return PydanticCustomError(PROBLEMS_ERROR_TYPE, "{summary}", {"summary": summary, "problems": found})


# ---------------------------------------------------------------- field types


def _seconds(value: object) -> object:
    # Other types fall through so that pydantic names the type error itself.
    return parse_duration(value) if isinstance(value, str | int | float) else value


def _at_least(minimum: float) -> AfterValidator:
    def check(seconds: float) -> float:
        if seconds < minimum:
            raise ValueError(f"must be at least {format_seconds(minimum)}")
        return seconds

    return AfterValidator(check)


def _positive_seconds(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0 s")
    return seconds


def _name(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if not _NAME.fullmatch(value):
        raise ValueError('use only letters, digits, "_", "." and "-"')
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _control_char(text: str, allowed: str = "") -> str | None:
    """A message naming the first control character in ``text`` not in ``allowed``, if any."""
    for i, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in allowed:
            return f"must not contain control characters (U+{ord(char):04X} at character {i + 1})"
    return None


def _one_line(value: str) -> str:
    problem = _control_char(value)
    if problem:
        raise ValueError(problem)
    return value


def _multi_line(value: str) -> str:
    problem = _control_char(value, allowed="\t\n\r")
    if problem:
        raise ValueError(problem)
    return value


def _model_id(value: str) -> str:
    _non_empty(value)
    _one_line(value)
    if any(c.isspace() for c in value):
        raise ValueError("a model id has no spaces")
    return value


def _url_without_credentials(value: str, *, invalid: str, credentials: str) -> SplitResult:
    """``value`` split as a URL: one line, a valid port, no user or password (messages never repeat it)."""
    _one_line(value)  # a NUL or a newline would reach the request line
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(invalid) from None
    if url.username is not None or url.password is not None:
        raise ValueError(credentials)
    return url


def _env_name(value: str, example: str, what: str) -> str:
    # Not echoed: the usual mistake is pasting the secret itself here.
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"must be the name of an environment variable (letters, digits and _, e.g. {example}), "
            f"not the {what} itself"
        )
    return value


def _token_env(value: str) -> str:
    _env_name(value, "EU_WEST_INGEST_TOKEN", "token")
    if value.upper().startswith(_OWN_ENV_PREFIX):
        # Those are routewatch's own settings, which are not looked up by name.
        raise ValueError(f"{value} is one of routewatch's own settings: use a variable of your own")
    return value


TokenEnv = Annotated[str, AfterValidator(_token_env)]
# http:// only where the token cannot cross a network.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _window(value: str) -> str:
    if parse_duration(value) <= 0:
        raise ValueError("a window must be longer than 0 s")
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]
PositiveSeconds = Annotated[float, BeforeValidator(_seconds), AfterValidator(_positive_seconds)]
Name = Annotated[str, AfterValidator(_name)]
ModelId = Annotated[str, AfterValidator(_model_id)]
Label = Annotated[str, AfterValidator(_non_empty), AfterValidator(_one_line)]
Prose = Annotated[str, AfterValidator(_non_empty), AfterValidator(_multi_line)]


class _Section(BaseModel):
    # No inf or NaN anywhere: "1e400" is a typo, and inf poisons every sum it enters.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- models


class Price(_Section):
    """USD per 1M tokens, for cost estimates and badges."""

    input: float = Field(ge=0, le=100_000, description="USD per 1M input (prompt) tokens")
    output: float = Field(ge=0, le=100_000, description="USD per 1M output (completion) tokens")
    cached_input: float | None = Field(
        None,
        ge=0,
        le=100_000,
        description="USD per 1M input tokens the router served from its prompt cache; default: the input price",
    )


def _glob(value: str) -> str:
    _non_empty(value)
    _one_line(value)
    return value


Glob = Annotated[str, AfterValidator(_glob)]


class DiscoverConfig(_Section):
    """Probing the models a router lists at ``GET {base_url}/models``, besides those listed in ``models``."""

    enabled: bool = Field(True, description="read the router's model list; default true")
    include: list[Glob] = Field(
        default_factory=lambda: ["*"],
        description='fnmatch globs over model ids; a listed model is probed if one matches; default ["*"]',
    )
    exclude: list[Glob] = Field(
        default_factory=list, description="globs over model ids never probed, even if included; default none"
    )
    refresh: Annotated[Seconds, _at_least(1)] = Field(
        3600.0, description="seconds between two reads of the list; default 1h"
    )
    max_models: int = Field(
        500,
        ge=1,
        le=10_000,
        description="discovered models probed at most; past it the first by id are kept (and a warning); default 500",
    )
    prompts: list[Name] | None = Field(
        None, description="the prompts discovered models are probed with; default every prompt, as configured models"
    )


REASONING_SLOW_TPS = 16
"""Tokens per second the default reasoning deadlines allow for: ``budget_tokens`` reasoned at this rate
(slower than reasoning models are commonly served) is the silence they add to the ordinary deadlines."""


class PhaseLimits(Protocol):
    """Per-phase limits of a probe in seconds: ``TimeoutsConfig``, or a reasoning model's ``Deadlines``."""

    @property
    def connect(self) -> float: ...
    @property
    def headers(self) -> float: ...
    @property
    def first_token(self) -> float: ...
    @property
    def idle(self) -> float: ...
    @property
    def total(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The per-phase limits a reasoning model's probe runs under (``ReasoningConfig.deadlines``)."""

    connect: float
    headers: float
    first_token: float
    idle: float
    total: float


class ReasoningTimeoutsConfig(_Section):
    """A reasoning model's deadlines, in seconds; each unset one is derived from ``timeouts`` and the budget.

    Only the phases reasoning lengthens: connect and headers come before the
    model starts, so they stay the ordinary ones.
    """

    first_token: PositiveSeconds | None = Field(
        None,
        description="request sent to first token; default timeouts.first_token plus budget_tokens at "
        f"{REASONING_SLOW_TPS} tok/s (60s + 128s = 188s with the defaults)",
    )
    idle: PositiveSeconds | None = Field(
        None, description="longest gap between chunks once tokens flow; default timeouts.idle"
    )
    total: PositiveSeconds | None = Field(
        None,
        description=f"whole probe; default timeouts.total plus budget_tokens at {REASONING_SLOW_TPS} tok/s "
        "(120s + 128s = 248s with the defaults)",
    )


class ReasoningConfig(_Section):
    """The output budget of a router's reasoning models (configured by glob, or seen reasoning)."""

    budget_tokens: int = Field(
        2048,
        ge=1,
        le=131_072,
        description="tokens of room for reasoning, on top of the prompt's max_tokens; default 2048",
    )
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None,
        description="reasoning effort asked for (OpenAI reasoning_effort, OpenRouter reasoning.effort); "
        "default none sent: the model's own",
    )
    models: list[Glob] = Field(
        default_factory=list,
        description="fnmatch globs over model ids treated as reasoning models from their first probe; default none",
    )
    detect: bool = Field(
        True,
        description="treat a model as a reasoning model once a probe of it reasons (per prober process); default true",
    )
    request: Literal["auto", "openai", "openrouter"] = Field(
        "auto",
        description="how the budget is sent: openai (max_completion_tokens, reasoning_effort), openrouter "
        "(max_tokens and a reasoning object), auto (default: openrouter when the router's dialect is)",
    )
    timeouts: ReasoningTimeoutsConfig = Field(
        default_factory=ReasoningTimeoutsConfig,
        description="the deadlines of a probe sent the budget (first_token, idle, total); default: the "
        f"ordinary ones, first_token and total each plus budget_tokens at {REASONING_SLOW_TPS} tok/s",
    )

    def names(self, model: str) -> bool:
        """Whether a ``models`` glob names ``model``: a reasoning model from its first probe."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def applies(self) -> bool:
        """Whether any model of the router can get the budget (and so these deadlines)."""
        return self.detect or bool(self.models)

    def silence_s(self) -> float:
        """Seconds a model reasoning ``budget_tokens`` in silence takes at the slow rate the defaults allow for."""
        return self.budget_tokens / REASONING_SLOW_TPS

    def deadlines(self, ordinary: PhaseLimits) -> Deadlines:
        """The limits of a probe sent the budget: those set here, else ``ordinary`` with room for the reasoning.

        A model that reasons without streaming it sends nothing until its
        answer, so the first-token and total deadlines get the time of a whole
        budget reasoned slowly; connect, headers and (unless set) idle stay as
        they are, since reasoning happens after the headers and before the first token.
        """
        room = self.silence_s()
        set_ = self.timeouts
        return Deadlines(
            connect=ordinary.connect,
            headers=ordinary.headers,
            first_token=ordinary.first_token + room if set_.first_token is None else set_.first_token,
            idle=ordinary.idle if set_.idle is None else set_.idle,
            total=ordinary.total + room if set_.total is None else set_.total,
        )


class RouterConfig(_Section):
    """One OpenAI-compatible router and the models to probe through it."""

    name: Name = Field(description="label stored with every probe: letters, digits, _ . -")
    base_url: str = Field(
        description='"simulator" (the built-in router simulator) or an http(s) URL '
        "ending before /chat/completions; never with credentials in it"
    )
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the API key; default none"
    )
    models: list[ModelId] = Field(
        default_factory=list, description="model ids to probe, no repeats; non-empty unless discover is on"
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="price per model id (each one of models, or any id with discover); default none",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="extra static request headers, e.g. HTTP-Referer; default none",
    )
    dialect: Literal["auto", "openrouter", "litellm", "headers", "generic", "plain"] = Field(
        "auto",
        description="how the router reports provider, attempts, request id and cost: auto (default; "
        "detected from each response), openrouter, litellm, headers (Ngrok-AIG-* style), generic, plain",
    )
    dialect_fields: dict[str, str] | None = Field(
        None,
        description='dialect: generic only: where each fact is, e.g. {provider: "header:X-Upstream", '
        'cost: "field:usage.cost"}; facts: ' + ", ".join(GENERIC_FACTS),
    )
    reasoning: ReasoningConfig = Field(
        default_factory=ReasoningConfig,
        description="the output budget of reasoning models and their deadlines; default: 2048 tokens of room, "
        "detection on, deadlines derived from timeouts",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        # Messages never repeat the URL: it may carry a password.
        if value == SIMULATOR:
            return value
        url = _url_without_credentials(
            value,
            invalid='is not a valid URL: use an http(s) URL or "simulator"',
            credentials="remove the credentials from base_url: "
            "set api_key_env to the name of the environment variable holding the key",
        )
        if url.scheme not in ("http", "https"):
            got = f' (got "{url.scheme}:")' if url.scheme else ""
            raise ValueError(f'must be an http:// or https:// URL, or "simulator"{got}')
        if not url.hostname:
            raise ValueError("the URL has no host name")
        if url.path.rstrip("/").endswith("/chat/completions"):
            raise ValueError("end the URL before /chat/completions: the probe appends it")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None:
            _env_name(value, "ORCAROUTER_API_KEY", "key")
        if value is not None and value.upper().startswith(_OWN_ENV_PREFIX) and value.upper() != _ROUTER_KEY_ENV:
            # A name, not a secret: safe to repeat. Its value would go to the router as the key.
            raise ValueError(
                f"{value} is one of routewatch's own settings, not a router key: the probe would send "
                f"its value to the router. Use {_ROUTER_KEY_ENV} or a variable of your own"
            )
        return value

    discover: DiscoverConfig | None = Field(
        None, description="also probe the models the router lists at GET /models; default off"
    )

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: list[str]) -> list[str]:
        seen: set[str] = set()
        dupes: list[tuple[Loc, str]] = []
        for i, model in enumerate(models):
            if model in seen:
                dupes.append(((i,), f'duplicate model "{model}"'))
            seen.add(model)
        if dupes:
            raise _problems(dupes)
        return models

    @model_validator(mode="after")
    def _check_models_and_prices(self) -> RouterConfig:
        discovers = self.discover is not None and self.discover.enabled
        if not self.models and not discovers:
            raise _problems([(("models",), "list at least one model, or turn on discover")])
        if not discovers:  # with discover a price may be for a model the router lists
            stray = [
                (("prices", m), "no such model in this router's models") for m in self.prices if m not in self.models
            ]
            if stray:
                raise _problems(stray)
        return self

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        bad: list[tuple[Loc, str]] = []
        for name, value in headers.items():
            if name.lower() in _SECRET_HEADERS:
                bad.append(((name,), KEYS_FROM_ENV))
            elif not _HEADER_NAME.fullmatch(name):
                bad.append(((name,), "not a valid HTTP header name"))
            elif name.lower() in _RESERVED_HEADERS:
                bad.append(((name,), f"cannot be set here: {_RESERVED_HEADERS[name.lower()]}"))
            elif "\r" in value or "\n" in value:
                bad.append(((name,), "a header value must be one line"))
            elif problem := _control_char(value, allowed="\t"):
                bad.append(((name,), problem))
        if bad:
            raise _problems(bad)
        return headers

    @field_validator("dialect_fields")
    @classmethod
    def _check_dialect_fields(cls, fields: dict[str, str] | None) -> dict[str, str] | None:
        if fields is None:
            return None
        bad: list[tuple[Loc, str]] = []
        if not fields:
            bad.append(((), "name at least one fact, e.g. provider: header:X-Upstream"))
        for fact, source in fields.items():
            if fact not in GENERIC_FACTS:
                bad.append(((fact,), f"unknown fact (known: {', '.join(GENERIC_FACTS)})"))
                continue
            try:
                kind, name = parse_source(source) if isinstance(source, str) else ("", "")
            except ValueError as exc:
                bad.append(((fact,), str(exc)))
                continue
            if kind == "header" and not _HEADER_NAME.fullmatch(name):
                bad.append(((fact,), f"{name!r} is not a valid HTTP header name"))
        if bad:
            raise _problems(bad)
        return fields

    @model_validator(mode="after")
    def _check_dialect(self) -> RouterConfig:
        if self.dialect == "generic" and self.dialect_fields is None:
            raise _problems([(("dialect",), "dialect: generic needs dialect_fields: where each fact is")])
        if self.dialect != "generic" and self.dialect_fields is not None:
            raise _problems(
                [(("dialect_fields",), f"only dialect: generic takes dialect_fields (this router's is {self.dialect})")]
            )
        return self


class Message(_Section):
    """One chat message of a canary prompt."""

    role: Literal["system", "user", "assistant"]
    content: Prose


def _tier(value: object) -> str:
    return canonical_tier(value)


Tier = Annotated[str, BeforeValidator(_tier)]

# The chat of a generated prompt that names no messages: an answer as long as the
# built-in short prompt's, so that tiers differ in their input alone.
TIER_INSTRUCTION = "Ignore the random words above. Count from 1 to 40 in words, separated by spaces."
# Room the probe's nonce tag ("[probe 0123456789abcdef]") takes in a generated prompt.
NONCE_TAG = "[probe " + "0" * 16 + "]"


class PromptConfig(_Section):
    """A canary prompt; the probe adds a fresh nonce so no cache can answer it.

    With ``tier`` the probe generates the prompt at that input size: nonce-seeded
    words, then the last user message (see docs/prompt-tiers.md).
    """

    name: Name = Field(description="label stored with every probe")
    tier: Tier | None = Field(
        None,
        description="generate the prompt at about this many input tokens: 100, 1k, 10k (50 to 200k); "
        "default none (the messages as written, in the standard tier nearest their size)",
    )
    messages: list[Message] = Field(
        description="the chat, ending with a user message; with tier, the instruction after the generated "
        "words (default: count from 1 to 40)"
    )
    max_tokens: int = Field(128, ge=1, le=32768, description="answer length cap; default 128")
    min_output_tokens: int = Field(
        32, ge=1, description="answer length asked for, so tok/s means something; default 32"
    )

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, messages: list[Message]) -> list[Message]:
        if not messages:
            raise ValueError("list at least one message")
        last = len(messages) - 1
        if messages[last].role != "user":
            raise _problems([((last, "role"), f'the last message must be from "user", not "{messages[last].role}"')])
        return messages

    @field_validator("min_output_tokens")
    @classmethod
    def _check_min_output(cls, value: int, info: ValidationInfo) -> int:
        max_tokens = info.data.get("max_tokens")
        if max_tokens is not None and value > max_tokens:
            raise ValueError(f"must not exceed max_tokens ({max_tokens})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_instruction(cls, data: object) -> object:
        # A generated prompt may leave its chat out: it then asks what the short prompt asks.
        if isinstance(data, dict) and data.get("tier") is not None and "messages" not in data:
            return {**data, "messages": [{"role": "user", "content": TIER_INSTRUCTION}]}
        return data

    @model_validator(mode="after")
    def _check_tier_room(self) -> PromptConfig:
        if self.tier is None:
            return self
        written = self.written_tokens()
        if written > parse_tier(self.tier):
            raise _problems(
                [
                    (
                        ("tier",),
                        f"the messages alone are about {written} tokens, more than tier {self.tier}: "
                        "raise the tier or shorten the messages",
                    )
                ]
            )
        return self

    def written_tokens(self) -> int:
        """Estimated input tokens of the messages as written (with the nonce tag a tier adds)."""
        contents = [m.content for m in self.messages]
        if self.tier is not None:
            contents[-1] = f"{NONCE_TAG}\n\n{contents[-1]}"
        return estimate_chat_tokens(contents)

    def input_tokens(self) -> int:
        """Estimated input tokens of one probe: the tier's size, or the written messages'."""
        return parse_tier(self.tier) if self.tier is not None else self.written_tokens()

    def tier_label(self) -> str:
        """The tier this prompt's probes are stored and published under."""
        return self.tier if self.tier is not None else nearest_standard_tier(self.written_tokens())


class ScheduleConfig(_Section):
    """How often each model x prompt series is probed."""

    interval: Annotated[Seconds, _at_least(0.1)] = Field(
        60.0, description="seconds between probes of one series; default 60s"
    )
    jitter: Seconds = Field(10.0, description="random delay up to this many seconds, below interval; default 10s")
    concurrency: int = Field(64, ge=1, le=10000, description="probes in flight at most; default 64")
    max_loop_lag: PositiveSeconds = Field(
        0.05,
        description="a probe during which the prober's event loop fell further behind than this "
        "is stored flagged and left out of published latency; default 50ms",
    )

    @model_validator(mode="after")
    def _check_jitter(self) -> ScheduleConfig:
        if self.jitter >= self.interval:
            default = "" if "jitter" in self.model_fields_set else " (the default)"
            raise _problems(
                [
                    (
                        ("jitter",),
                        f"{format_seconds(self.jitter)}{default} must be less than "
                        f"interval ({format_seconds(self.interval)})",
                    )
                ]
            )
        return self


class TimeoutsConfig(_Section):
    """Per-phase limits of one probe, in seconds; none may exceed total."""

    connect: PositiveSeconds = Field(5.0, description="TCP + TLS set-up; default 5s")
    headers: PositiveSeconds = Field(30.0, description="request sent to headers; default 30s")
    first_token: PositiveSeconds = Field(60.0, description="request sent to first token; default 60s")
    idle: PositiveSeconds = Field(30.0, description="longest gap between chunks; default 30s")
    total: PositiveSeconds = Field(120.0, description="whole probe; default 120s")

    @model_validator(mode="after")
    def _check_total(self) -> TimeoutsConfig:
        over: list[tuple[Loc, str]] = []
        for name in ("connect", "headers", "first_token", "idle"):
            seconds: float = getattr(self, name)
            if seconds > self.total:
                default = "" if name in self.model_fields_set else " (the default)"
                over.append(
                    (
                        (name,),
                        f"{format_seconds(seconds)}{default} exceeds total ({format_seconds(self.total)})",
                    )
                )
        if over:
            raise _problems(over)
        return self


class SLOConfig(_Section):
    """Targets that decide a model's status, and the hysteresis that keeps it from flapping."""

    ttft_p95_ms: float = Field(5000.0, gt=0, description="p95 time to first token, ms; default 5000")
    error_rate: float = Field(0.05, ge=0, le=1, description="failed / attempted; default 0.05")
    retried_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="successes the router answered only after retrying, of those it reported attempts for; "
        "above it a model is degraded; default 0.1",
    )
    window: PositiveSeconds = Field(
        900.0, description="recent span the error rate and p95 TTFT are judged over; default 15m"
    )
    down_after: int = Field(3, ge=1, description="consecutive failed probes that make a model down; default 3")
    up_after: int = Field(2, ge=1, description="consecutive ok probes that bring a down model back; default 2")
    min_samples: int = Field(
        5,
        ge=1,
        description="probes in the window needed to judge the error rate, and ok probes to judge p95 TTFT; default 5",
    )


def _aware(value: datetime) -> datetime:
    # A naive time would silently mean the prober's local zone; make the writer say which.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("add a UTC offset, e.g. 2025-06-01T02:00:00Z or 2025-06-01T04:00:00+02:00")
    return value


OffsetDatetime = Annotated[datetime, AfterValidator(_aware)]


class MaintenanceWindow(_Section):
    """Planned work: status changes inside it do not page (their incidents are marked suppressed)."""

    start: OffsetDatetime = Field(description="ISO-8601 date and time with a UTC offset")
    end: OffsetDatetime = Field(description="ISO-8601 date and time with a UTC offset, after start")
    models: list[ModelId] | None = Field(
        None, description="model ids covered, each probed by some router; default all models"
    )
    reason: Prose = Field(description="shown on the status page")

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: list[str] | None) -> list[str] | None:
        if models is not None and not models:
            raise ValueError("list at least one model, or leave models out to cover all")
        return models

    @model_validator(mode="after")
    def _check_end(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise _problems([(("end",), f"must be after start ({self.start.isoformat()})")])
        return self

    def covers(self, model: str, at: datetime) -> bool:
        """Whether ``at`` (timezone-aware) falls in [start, end) for ``model``."""
        return self.start <= at < self.end and (self.models is None or model in self.models)


class IngestToken(_Section):
    """A region whose probers may push results to this server's ``POST /v1/ingest``."""

    region: Label = Field(description="the region every result sent with this token is stored under")
    token_env: TokenEnv = Field(description="name of the environment variable holding the region's token")


class ApiConfig(_Section):
    """Where the HTTP API listens, and which regions may push results to it."""

    host: Annotated[str, AfterValidator(_one_line)] = Field(
        "127.0.0.1", description="listen address; default 127.0.0.1 (local only)"
    )
    port: int = Field(8321, ge=0, le=65535, description="listen port, 0 = any free; default 8321")
    public_url: str | None = Field(
        None,
        description="the address readers reach this API at, e.g. https://status.example.org; the model "
        "pages' embed snippets link there; default none (the snippets use paths relative to the server)",
    )
    ingest_tokens: list[IngestToken] = Field(
        default_factory=list,
        description="regions that may push results (POST /v1/ingest), each with its own token; default none",
    )

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = _url_without_credentials(
            value,
            invalid="is not a valid URL: use an http(s) URL such as https://status.example.org",
            credentials="remove the credentials: this address is published in every embed snippet",
        )
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, such as https://status.example.org")
        if url.query or url.fragment:
            raise ValueError("must not have a query or fragment: page and badge paths are appended to it")
        return value.rstrip("/")

    @field_validator("ingest_tokens")
    @classmethod
    def _check_ingest_tokens(cls, tokens: list[IngestToken]) -> list[IngestToken]:
        # One token per region, and a token decides its region: neither may repeat.
        dupes: list[tuple[Loc, str]] = []
        for key in ("region", "token_env"):
            first: dict[str, int] = {}
            for i, token in enumerate(tokens):
                value = getattr(token, key)
                if value in first:
                    dupes.append(((i, key), f'duplicate {key} "{value}" (also ingest_tokens[{first[value]}])'))
                first.setdefault(value, i)
        if dupes:
            raise _problems(dupes)
        return tokens


class IngestConfig(_Section):
    """Push results to a central routewatch (``POST /v1/ingest``) instead of writing to a database."""

    url: str = Field(
        description="the central server's ingest endpoint, e.g. https://central.example.com/v1/ingest; "
        "https, or http to a loopback address only"
    )
    token_env: TokenEnv = Field(description="name of the environment variable holding this region's ingest token")
    ca_file: Annotated[str, AfterValidator(_non_empty), AfterValidator(_one_line)] | None = Field(
        None,
        description="PEM file of the certificate authorities to trust for url (a private CA); default the system's",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = _url_without_credentials(
            value,
            invalid="is not a valid URL",
            credentials="remove the credentials from the URL: the token comes from token_env",
        )
        if not url.hostname:
            raise ValueError("the URL has no host name")
        if url.scheme == "http" and url.hostname not in _LOOPBACK_HOSTS:
            raise ValueError(
                "must be https:// (over http the token would cross the network in clear); "
                "http:// is allowed to a loopback address only"
            )
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an https:// URL")
        if url.query or url.fragment:
            raise ValueError("must have no query or fragment")
        return value


class MetricsConfig(_Section):
    """Which of the published stats ``GET /metrics`` exports as gauges.

    Every (router, model) gets 12 gauges per exported window, and each
    breakdown adds 9 per window and per provider (or region) of that model,
    so the default (the shortest window, no breakdown) keeps a model at 12
    stats series, plus 4 ``routewatch_model_state`` series per model id. The
    JSON API publishes every window and breakdown whatever is chosen here.
    """

    windows: list[Label] | None = Field(
        None,
        description="which of aggregator.windows get gauges; default the shortest (the first to show a change)",
    )
    breakdowns: list[Literal["provider", "region", "tier"]] = Field(
        default_factory=list,
        description="also export the per-provider, per-region and/or per-prompt-tier gauges "
        "(9 per window and value each); default none",
    )

    @field_validator("windows", "breakdowns")
    @classmethod
    def _check_unique(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        first: dict[str, int] = {}
        dupes: list[tuple[Loc, str]] = []
        for i, value in enumerate(values):
            if value in first:
                dupes.append(((i,), f'"{value}" is listed twice (also [{first[value]}])'))
            first.setdefault(value, i)
        if dupes:
            raise _problems(dupes)
        return values


class AggregatorConfig(_Section):
    """Rolling stats."""

    refresh: Annotated[Seconds, _at_least(0.1)] = Field(
        15.0, description="seconds between stats refreshes; default 15s"
    )
    windows: list[Annotated[str, AfterValidator(_window)]] = Field(
        default_factory=lambda: ["1h", "24h", "7d"],
        description='rolling windows as durations; default ["1h", "24h", "7d"]',
    )
    snapshot_every: Annotated[Seconds, _at_least(1)] = Field(
        300.0, description="how often the published figures are recorded in stats_history; default 5m"
    )
    max_providers_per_model: int = Field(
        5, ge=1, description="distinct providers published per model, the rest counted as 'other'; default 5"
    )
    headline_tier: Tier | None = Field(
        None,
        description="the prompt tier the headline figures (listing, status page, badges) are computed "
        "from, one of the prompts' tiers; default the smallest of them",
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="what GET /metrics exports; default the shortest window, per model"
    )

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, windows: list[str]) -> list[str]:
        # "1h" and "60m" are one window published twice under two names.
        first: dict[float, int] = {}
        dupes: list[tuple[Loc, str]] = []
        for i, window in enumerate(windows):
            seconds = parse_duration(window)
            if seconds in first:
                j = first[seconds]
                dupes.append(((i,), f'duplicate window "{window}" (the same as windows[{j}], "{windows[j]}")'))
            first.setdefault(seconds, i)
        if dupes:
            raise _problems(dupes)
        return windows

    @field_validator("metrics")
    @classmethod
    def _check_metrics_windows(cls, metrics: MetricsConfig, info: ValidationInfo) -> MetricsConfig:
        windows = info.data.get("windows")
        if windows is None or metrics.windows is None:  # windows itself is invalid and already reported
            return metrics
        stray: list[tuple[Loc, str]] = [
            (("windows", i), f'"{window}" is not one of aggregator.windows ({", ".join(windows) or "none"})')
            for i, window in enumerate(metrics.windows)
            if window not in windows
        ]
        if stray:
            raise _problems(stray)
        return metrics

    def metrics_windows(self) -> list[str]:
        """The windows ``/metrics`` exports: ``metrics.windows``, or the shortest of ``windows``."""
        if self.metrics.windows is not None:
            return list(self.metrics.windows)
        return [min(self.windows, key=parse_duration)] if self.windows else []


# Variables holding routewatch's own secrets: never sent to a notification target.
_NOT_FOR_TARGETS = frozenset(
    {"ROUTEWATCH_DATABASE_URL", "ROUTEWATCH_ADMIN_TOKEN", "ROUTEWATCH_API_KEY", "ROUTEWATCH_GRAFANA_DB_URL"}
)
NOTIFY_KINDS = ("webhook", "slack", "pagerduty", "grafana")
# Which *_env fields each kind needs, and which it may take.
_KIND_NEEDS: dict[str, tuple[str, ...]] = {
    "webhook": ("url_env",),
    "slack": ("url_env",),
    "pagerduty": ("routing_key_env",),
    "grafana": ("url_env", "token_env"),
}
_KIND_MAY: dict[str, tuple[str, ...]] = {
    "webhook": ("url_env", "secret_env"),
    "slack": ("url_env",),
    "pagerduty": ("routing_key_env", "url_env"),
    "grafana": ("url_env", "token_env", "dashboard_uid"),
}
_KIND_ENV_HELP = {
    "url_env": "the variable holding the URL to post to",
    "secret_env": "the variable holding the HMAC-SHA256 signing secret",
    "routing_key_env": "the variable holding the PagerDuty integration (routing) key",
    "token_env": "the variable holding a Grafana service-account token",
    "dashboard_uid": "the dashboard the annotations belong to",
}


def _target_env(value: str) -> str:
    _env_name(value, "SLACK_WEBHOOK_URL", "URL or secret")
    if value in _NOT_FOR_TARGETS:
        raise ValueError(f"{value} holds one of routewatch's own secrets; it is never sent to a notification target")
    return value


TargetEnv = Annotated[str, AfterValidator(_target_env)]


class NotificationTarget(_Section):
    """Where incident opens and resolves are posted; every URL, key and token comes from the environment."""

    name: Name = Field(description="label of the target in logs, /metrics and db status: letters, digits, _ . -")
    kind: Literal["webhook", "slack", "pagerduty", "grafana"] = Field(
        description="webhook (generic JSON, HMAC-signed with secret_env), slack (incoming webhook), "
        "pagerduty (Events API v2) or grafana (annotations)"
    )
    url_env: TargetEnv | None = Field(
        None,
        description="variable holding the URL: the webhook's or Slack's; Grafana's base URL; "
        "PagerDuty's events endpoint (optional, default https://events.pagerduty.com/v2/enqueue)",
    )
    secret_env: TargetEnv | None = Field(None, description="webhook: variable holding the HMAC-SHA256 secret")
    routing_key_env: TargetEnv | None = Field(
        None, description="pagerduty: variable holding the integration (routing) key"
    )
    token_env: TargetEnv | None = Field(None, description="grafana: variable holding a service-account token")
    dashboard_uid: Annotated[str, AfterValidator(_name)] = Field(
        "routewatch-model", description="grafana: the dashboard the annotations belong to; default routewatch-model"
    )

    @model_validator(mode="after")
    def _check_kind(self) -> NotificationTarget:
        problems: list[tuple[Loc, str]] = [
            ((field,), f"a {self.kind} target needs {field}: {_KIND_ENV_HELP[field]}")
            for field in _KIND_NEEDS[self.kind]
            if getattr(self, field) is None
        ]
        for field in ("url_env", "secret_env", "routing_key_env", "token_env"):
            if getattr(self, field) is not None and field not in _KIND_MAY[self.kind]:
                unsigned = field == "secret_env" and self.kind == "slack"
                hint = " (Slack's incoming webhooks are not signed: the URL is the secret)" if unsigned else ""
                problems.append(((field,), f"a {self.kind} target takes no {field}{hint}"))
        if "dashboard_uid" in self.model_fields_set and self.kind != "grafana":
            problems.append((("dashboard_uid",), f"a {self.kind} target takes no dashboard_uid"))
        if problems:
            raise _problems(problems)
        return self

    def env_names(self) -> list[str]:
        """The environment variables this target reads."""
        return [v for v in (self.url_env, self.secret_env, self.routing_key_env, self.token_env) if v is not None]


class NotificationsConfig(_Section):
    """Incident opens and resolves posted to webhooks, Slack, PagerDuty or Grafana, from a durable outbox."""

    targets: list[NotificationTarget] = Field(default_factory=list, description="where to post; default none")
    timeout: PositiveSeconds = Field(10.0, description="for one request, connecting included; default 10s")
    max_attempts: int = Field(
        12, ge=1, le=1000, description="attempts of one notification before it is given up (dead); default 12"
    )
    backoff_initial: PositiveSeconds = Field(2.0, description="wait after the first failed attempt; default 2s")
    backoff_max: PositiveSeconds = Field(600.0, description="longest wait between two attempts; default 10m")

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, targets: list[NotificationTarget]) -> list[NotificationTarget]:
        _unique_names([t.name for t in targets], "target")
        return targets

    @model_validator(mode="after")
    def _check_backoff(self) -> NotificationsConfig:
        if self.backoff_max < self.backoff_initial:
            least = format_seconds(self.backoff_initial)
            raise _problems([(("backoff_max",), f"must be at least backoff_initial ({least})")])
        return self


class BudgetConfig(_Section):
    """What probing may spend per day, in USD, priced with ``routers[].prices``."""

    usd_per_day: float | None = Field(
        None,
        gt=0,
        le=10_000_000,
        description="the planned cost above this is refused at start; a measured spend above it pauses "
        "the most expensive series until the UTC day turns; default none (no limit)",
    )


class StorageConfig(_Section):
    """How long results are kept, and the local spool's limit."""

    retention: Annotated[Seconds, _at_least(86400)] = Field(
        90 * 86400.0, description="raw probe results are dropped after this; default 90d"
    )
    compress_after: Annotated[Seconds, _at_least(3600)] = Field(
        3 * 86400.0, description="TimescaleDB: chunks older than this are compressed; default 3d"
    )
    spool_max_mb: int = Field(1024, ge=1, description="the local spool's limit in MiB (a warning at 80%); default 1024")


class Config(_Section):
    """A whole probes.yaml. Only routers and prompts are required."""

    region: Label = Field(
        "local", description="label of this prober; ROUTEWATCH_REGION, when set, replaces it; default local"
    )
    routers: list[RouterConfig] = Field(description="at least one; names unique")
    prompts: list[PromptConfig] = Field(description="at least one; names unique")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list, description="planned maintenance windows; default none"
    )
    ingest: IngestConfig | None = Field(
        None,
        description="push results to a central routewatch instead of writing to a database "
        "(`routewatch probe`); default none",
    )
    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig, description="where incident opens and resolves are posted; default none"
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="the daily spending limit; default none")

    @field_validator("routers")
    @classmethod
    def _check_routers(cls, routers: list[RouterConfig]) -> list[RouterConfig]:
        if not routers:
            raise ValueError("list at least one router")
        _unique_names([r.name for r in routers], "router")
        return routers

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, prompts: list[PromptConfig]) -> list[PromptConfig]:
        if not prompts:
            raise ValueError("list at least one prompt")
        _unique_names([p.name for p in prompts], "prompt")
        return prompts

    @field_validator("maintenance")
    @classmethod
    def _check_maintenance(cls, windows: list[MaintenanceWindow], info: ValidationInfo) -> list[MaintenanceWindow]:
        routers = info.data.get("routers")
        if routers is None:  # routers itself is invalid and already reported
            return windows
        if any(r.discover is not None and r.discover.enabled for r in routers):
            return windows  # a window may name a model a router will list
        probed = {model for router in routers for model in router.models}
        stray: list[tuple[Loc, str]] = [
            ((i, "models", j), f'no router probes "{model}"')
            for i, window in enumerate(windows)
            for j, model in enumerate(window.models or ())
            if model not in probed
        ]
        if stray:
            raise _problems(stray)
        return windows

    @model_validator(mode="after")
    def _check_headline_tier(self) -> Config:
        chosen = self.aggregator.headline_tier
        tiers = self.prompt_tiers()
        if chosen is not None and chosen not in tiers:
            raise _problems(
                [
                    (
                        ("aggregator", "headline_tier"),
                        f"no prompt is at tier {chosen} (the prompts' tiers: {', '.join(tiers)}): "
                        "the headline would never have a figure",
                    )
                ]
            )
        return self

    @model_validator(mode="after")
    def _check_reasoning_deadlines(self) -> Config:
        # Across sections: a reasoning deadline's default and its floor are the ordinary timeouts.
        found: list[tuple[Loc, str]] = []
        for i, router in enumerate(self.routers):
            found += [
                (("routers", i, "reasoning", "timeouts", *sub), msg)
                for sub, msg in _deadline_problems(router.reasoning, self.timeouts)
            ]
        if found:
            raise _problems(found)
        return self

    def longest_probe_s(self) -> float:
        """The longest a probe may run: ``timeouts.total``, or a router's reasoning total when longer."""
        reasoning = [r.reasoning.deadlines(self.timeouts).total for r in self.routers if r.reasoning.applies()]
        return max([self.timeouts.total, *reasoning])

    def prompt_tiers(self) -> list[str]:
        """The prompts' tiers, each once, smallest first."""
        return sorted({p.tier_label() for p in self.prompts}, key=parse_tier)

    def headline_tier(self) -> str:
        """The tier of the headline figures: ``aggregator.headline_tier``, or the prompts' smallest."""
        return self.aggregator.headline_tier or self.prompt_tiers()[0]

    @model_validator(mode="after")
    def _check_discover_prompts(self) -> Config:
        names = {p.name for p in self.prompts}
        stray: list[tuple[Loc, str]] = [
            (("routers", i, "discover", "prompts", j), f'no prompt named "{name}" in prompts')
            for i, router in enumerate(self.routers)
            if router.discover is not None
            for j, name in enumerate(router.discover.prompts or ())
            if name not in names
        ]
        if stray:
            raise _problems(stray)
        return self


def _deadline_problems(settings: ReasoningConfig, ordinary: TimeoutsConfig) -> list[tuple[Loc, str]]:
    """What is wrong with a router's reasoning deadlines: one shorter than the ordinary one, or past its total."""
    given = {name for name in ("first_token", "idle", "total") if getattr(settings.timeouts, name) is not None}
    resolved = settings.deadlines(ordinary)
    found: list[tuple[Loc, str]] = []
    for name in ("first_token", "idle", "total"):
        seconds: float = getattr(resolved, name)
        floor: float = getattr(ordinary, name)
        if name in given and seconds < floor:
            # Shorter would fail a reasoning model sooner than any other: the opposite of the point.
            found.append(
                (
                    (name,),
                    f"{format_seconds(seconds)} is shorter than timeouts.{name} ({format_seconds(floor)}): "
                    "a reasoning model's deadlines add room to the ordinary ones",
                )
            )
    for name in ("first_token", "idle"):
        seconds = getattr(resolved, name)
        if seconds > resolved.total:
            default = "" if name in given else _DEADLINE_DEFAULTS[name]
            found.append(
                ((name,), f"{format_seconds(seconds)}{default} exceeds total ({format_seconds(resolved.total)})")
            )
    return found


_DEADLINE_DEFAULTS = {
    "first_token": f" (the default: timeouts.first_token + budget_tokens at {REASONING_SLOW_TPS} tok/s)",
    "idle": " (the default: timeouts.idle)",
}


def _unique_names(names: list[str], kind: str) -> None:
    first: dict[str, int] = {}
    dupes: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if name in first:
            dupes.append(((i, "name"), f'duplicate {kind} name "{name}" (also {kind}s[{first[name]}])'))
        first.setdefault(name, i)
    if dupes:
        raise _problems(dupes)


def format_seconds(seconds: float) -> str:
    """A duration in seconds as messages show it: ``30 s``, ``0.5 s``."""
    return f"{seconds:g} s"
