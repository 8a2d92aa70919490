"""Removing secrets from text that leaves a probe (error details, logs)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

# Bearer tokens and the common API-key shapes (sk-..., sk-or-v1-..., etc.):
# routers sometimes echo a rejected key back in their error body.
_TOKENISH = re.compile(r"(?i)(bearer\s+)[^\s\"',]+|\b(sk|rk|pk)-[A-Za-z0-9_\-]{8,}")
# user:password@ in any URL.
_URL_CREDENTIALS = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@")

MAX_DETAIL_CHARS = 300


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets, key-like tokens and URL credentials masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _TOKENISH.sub(lambda m: (m.group(1) or "") + "***", text)
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    return text


def redact_dsn(dsn: str) -> str:
    """A database URL with its password replaced by ``***``, for humans."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
