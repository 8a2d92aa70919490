"""Removing secrets from text that leaves a probe (error details, logs)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Bearer tokens and the common API-key shapes (sk-..., sk-or-v1-..., etc.):
# routers sometimes echo a rejected key back in their error body.
_TOKENISH = re.compile(r"(?i)(bearer\s+)[^\s\"',]+|\b(sk|rk|pk)-[A-Za-z0-9_\-]{8,}")
# user:password@ in any URL. The scheme may only start where a run of scheme
# characters starts: tried at every letter of a long word, the search would
# take time quadratic in its length (seconds for 20 KB of router text).
_URL_CREDENTIALS = re.compile(r"(?i)(?<![a-z0-9+.\-])([a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@")
# A piece of a known secret at least this long is masked too: routers echo a
# key shortened ("sk-or-v1-3f9a..."), and a cut can leave its beginning.
MIN_FRAGMENT_CHARS = 8

MAX_DETAIL_CHARS = 300


def redact(
    text: str, secrets: Iterable[str] = (), *, max_chars: int = MAX_DETAIL_CHARS, fragments: bool = False
) -> str:
    """``text`` with the given secrets, key-like tokens and URL credentials masked, then cut to ``max_chars``.

    The whole text is redacted before it is cut, so a secret that straddles
    the cut cannot leave its first characters behind. With ``fragments``,
    any run of at least ``MIN_FRAGMENT_CHARS`` characters of a secret is
    masked as well (for keys, whose pieces are as sensitive as the whole).
    """
    secrets = [s for s in secrets if s]
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _TOKENISH.sub(lambda m: (m.group(1) or "") + MASK, text)
    if fragments:
        # Only what can survive the cut needs searching, plus enough to see
        # a fragment that crosses it.
        text = _mask_fragments(text[: max_chars + MIN_FRAGMENT_CHARS], secrets)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text


def _mask_fragments(text: str, secrets: list[str]) -> str:
    """``text`` with every stretch made of ``MIN_FRAGMENT_CHARS``-long pieces of a secret masked."""
    n = MIN_FRAGMENT_CHARS
    grams = {s[i : i + n] for s in secrets for i in range(len(s) - n + 1)}
    if not grams:
        return text
    covered = bytearray(len(text))
    for i in range(len(text) - n + 1):
        if text[i : i + n] in grams:
            covered[i : i + n] = b"\x01" * n
    if not any(covered):
        return text
    out: list[str] = []
    for i, ch in enumerate(text):
        if not covered[i]:
            out.append(ch)
        elif i == 0 or not covered[i - 1]:
            out.append(MASK)
    return "".join(out)


def redact_dsn(dsn: str) -> str:
    """A database URL with its password replaced by ``***``, for humans."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
