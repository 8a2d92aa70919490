"""The generic webhook's signature: HMAC-SHA256 over a timestamp and the body.

The signed content is ``<timestamp>.<body>``: the Unix time of the attempt
in seconds, a dot, and the exact body bytes. The timestamp travels in
``X-Routewatch-Timestamp`` and the signature, ``v1=`` and 64 hex digits, in
``X-Routewatch-Signature``. A receiver recomputes it with the shared secret,
compares in constant time, and refuses a timestamp further than a few
minutes from its clock, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Routewatch-Timestamp"
SIGNATURE_HEADER = "X-Routewatch-Signature"
SCHEME = "v1="
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The value of ``X-Routewatch-Signature`` for ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return SCHEME + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, received: str, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether ``received`` signs ``body`` at ``timestamp`` and ``timestamp`` is within
    ``tolerance_s`` of ``now`` (what a receiver should check; the tests use it too)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, sent, body), received)
