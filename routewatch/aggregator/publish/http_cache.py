"""HTTP caching for everything the API serves: ETag, 304 and Cache-Control.

Every public read (JSON, the status page, badges) changes only when the
aggregator publishes a new snapshot, so each response carries a validator
(a weak ETag over the body) and ``Cache-Control: public, max-age=<refresh
interval>``. A client that sends the ETag back in ``If-None-Match`` gets
``304 Not Modified`` with no body. Bodies are gzip-compressed when the client
accepts it; the ETag is weak because the compressed and plain bodies are the
same representation (RFC 9110, 8.8.1), and ``Vary: Accept-Encoding`` keeps
shared caches from mixing them up.

Callers that cache their bodies per snapshot hand the same ``bytes`` object
in on every request; the gzip form of such a body is compressed once and
kept (keyed by the body itself), so the hot path never re-compresses.
"""

from __future__ import annotations

import gzip
import hashlib

from aiohttp import web

# Bodies smaller than this are sent as they are: gzip's header and the CPU
# are not worth it for a badge or a one-model stats object.
GZIP_MIN_BYTES = 1024
# Compressed bodies kept; a snapshot has a few hundred distinct large bodies
# at most (listings, breakdowns, series), and older ones age out first.
GZIP_CACHE_ENTRIES = 512
GZIP_CACHE_BYTES = 64 * 1024 * 1024  # plain and compressed bodies held, together

# Header sets kept, per (ETag, max-age, content type): one per cached body.
HEADER_CACHE_ENTRIES = 4096

# body -> its gzip form. A bytes object caches its own hash, so a lookup with
# the very object that was stored is a pointer comparison, not a memcmp.
_gzipped: dict[bytes, bytes] = {}
_gzipped_bytes = 0
_headers: dict[tuple[str, int, str], tuple[dict[str, str], dict[str, str], dict[str, str]]] = {}
ACCEPT_CACHE_ENTRIES = 256
_accepts: dict[str, bool] = {}


def etag_for(body: bytes) -> str:
    """A weak entity tag for ``body``: ``W/"<first 16 hex digits of its SHA-1>"``."""
    return 'W/"' + hashlib.sha1(body, usedforsecurity=False).hexdigest()[:16] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    # Weak comparison (RFC 9110, 13.1.2): W/ prefixes do not matter.
    opaque = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip`` or ``*`` with q > 0)."""
    if "gzip" not in accept_encoding and "*" not in accept_encoding:
        return False  # the common cases ("", "identity", "br") without parsing
    # Clients send a handful of distinct values: parse each once.
    known = _accepts.get(accept_encoding)
    if known is None:
        known = _parse_accepts_gzip(accept_encoding)
        if len(_accepts) < ACCEPT_CACHE_ENTRIES:
            _accepts[accept_encoding] = known
    return known


def _parse_accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        if not q.startswith("q="):
            return True
        try:
            return float(q[2:]) > 0
        except ValueError:
            return False  # a malformed weight: send the body as it is
    return False


def gzipped(body: bytes) -> bytes:
    """``body`` compressed with gzip, from the cache when it was compressed before."""
    global _gzipped_bytes
    out = _gzipped.get(body)
    if out is None:
        # mtime=0: the same body always compresses to the same bytes.
        out = gzip.compress(body, compresslevel=6, mtime=0)
        size = len(body) + len(out)
        if size <= GZIP_CACHE_BYTES // 4:  # a huge one-off body would flush everything else
            while _gzipped and (len(_gzipped) >= GZIP_CACHE_ENTRIES or _gzipped_bytes + size > GZIP_CACHE_BYTES):
                old = next(iter(_gzipped))  # oldest first (dicts keep insertion order)
                _gzipped_bytes -= len(old) + len(_gzipped.pop(old))
            _gzipped[body] = out
            _gzipped_bytes += size
    return out


def _header_sets(tag: str, max_age: int, content_type: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The 304, plain 200 and gzip 200 headers for one representation, built once."""
    key = (tag, max_age, content_type)
    sets = _headers.get(key)
    if sets is None:
        not_modified = {"ETag": tag, "Cache-Control": f"public, max-age={max_age}", "Vary": "Accept-Encoding"}
        plain = {**not_modified, "Content-Type": content_type}
        sets = (not_modified, plain, {**plain, "Content-Encoding": "gzip"})
        if len(_headers) >= HEADER_CACHE_ENTRIES:
            del _headers[next(iter(_headers))]
        _headers[key] = sets
    return sets


def cached_response(
    request: web.Request,
    body: bytes,
    *,
    content_type: str,
    max_age: float,
    etag: str | None = None,
) -> web.Response:
    """A 200 with ``body`` (or a 304 when ``If-None-Match`` matches), cacheable for ``max_age`` s.

    ``content_type`` is the full header value (with charset where it applies).
    ``etag`` may be passed when the caller already computed it (bodies cached
    per snapshot); otherwise it is computed from ``body``.
    """
    tag = etag or etag_for(body)
    not_modified, plain, packed = _header_sets(tag, max(0, int(max_age)), content_type)
    headers = request.headers
    inm = headers.get("If-None-Match")
    if inm is not None and _matches(inm, tag):
        return web.Response(status=304, headers=not_modified)
    # web.Response copies the headers it is given, so the shared dicts stay as built.
    if len(body) >= GZIP_MIN_BYTES and accepts_gzip(headers.get("Accept-Encoding", "")):
        return web.Response(body=gzipped(body), headers=packed)
    return web.Response(body=body, headers=plain)
