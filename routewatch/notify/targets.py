"""Notification targets as the sender uses them: the configuration plus the secrets it names.

Every URL, signing secret, routing key and token is read from the
environment variable the configuration names, once at start
(:func:`resolve_targets`); a variable that is unset or holds no usable URL
stops the process at start, naming the variable and never its value. A
:class:`Target` hides its secrets from ``repr`` and lists them
(:meth:`Target.secrets`) so that every error text can be redacted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from routewatch.config import NotificationTarget

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class TargetSetupError(ValueError):
    """A target's environment is missing or unusable; the message names the variable, never its value."""


@dataclass(frozen=True)
class Target:
    """One configured target with what it needs to send: secrets are not in its repr."""

    name: str
    kind: str  # webhook, slack, pagerduty, grafana
    url: str = field(repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    routing_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    dashboard_uid: str = "routewatch-model"

    def secrets(self) -> list[str]:
        """Every text that must never be shown: the URL, and :meth:`keys`."""
        return [self.url, *self.keys()]

    def keys(self) -> list[str]:
        """The secret parts, any piece of which must not be shown either: the URL's path and
        query (where Slack's token is), the signing secret, the routing key and the token.
        The URL's host is not among them: an error may say which host it could not reach."""
        parts = urlsplit(self.url)
        pieces = [parts.path, parts.query, self.signing_secret, self.routing_key, self.token]
        # The longest first, so that a secret containing another is masked whole.
        return sorted({p for p in pieces if p and len(p) > 1}, key=len, reverse=True)


def _url(value: str, variable: str, target: str) -> str:
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise TargetSetupError(f"notification target {target!r}: {variable} does not hold a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetSetupError(f"notification target {target!r}: {variable} must hold an https:// URL")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise TargetSetupError(
            f"notification target {target!r}: {variable} must hold an https:// URL "
            "(http:// only to a loopback address: the URL and the message would cross the network in clear)"
        )
    return value.strip()


def _value(env: Mapping[str, str], variable: str | None, target: str) -> str | None:
    if variable is None:
        return None
    value = env.get(variable, "").strip()
    if not value:
        raise TargetSetupError(f"notification target {target!r}: environment variable {variable} is not set")
    return value


def resolve_target(config: NotificationTarget, env: Mapping[str, str]) -> Target:
    """``config`` with the values of the variables it names, read from ``env``."""
    name = config.name
    url_value = _value(env, config.url_env, name)
    if url_value is None:  # only PagerDuty has a default endpoint
        url = PAGERDUTY_EVENTS_URL
    else:
        assert config.url_env is not None
        url = _url(url_value, config.url_env, name)
    return Target(
        name=name,
        kind=config.kind,
        url=url,
        signing_secret=_value(env, config.secret_env, name),
        routing_key=_value(env, config.routing_key_env, name),
        token=_value(env, config.token_env, name),
        dashboard_uid=config.dashboard_uid,
    )


def resolve_targets(configs: Sequence[NotificationTarget], env: Mapping[str, str]) -> dict[str, Target]:
    """Every configured target by name; :class:`TargetSetupError` listing each problem, one per line."""
    out: dict[str, Target] = {}
    problems: list[str] = []
    for config in configs:
        try:
            out[config.name] = resolve_target(config, env)
        except TargetSetupError as exc:
            problems.append(str(exc))
    if problems:
        raise TargetSetupError("\n".join(problems))
    return out
