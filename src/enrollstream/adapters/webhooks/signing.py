"""Webhook request signatures: HMAC-SHA256 over `<timestamp>.<body>`, sent as

    Enrollstream-Signature: t=<unix seconds>,v1=<hex digest>

Subscribers call `verify_signature` with the raw request body (the bytes, before any JSON parsing).
The timestamp is signed too, so a captured request cannot be replayed outside the tolerance window.
Several `v1=` entries may appear (one per secret while a secret is being rotated); one match suffices.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

SIGNATURE_HEADER = "Enrollstream-Signature"
EVENT_ID_HEADER = "Enrollstream-Event-Id"
EVENT_TYPE_HEADER = "Enrollstream-Event-Type"
ATTEMPT_HEADER = "Enrollstream-Delivery-Attempt"
DEFAULT_TOLERANCE_S = 300.0


class InvalidSignature(ValueError):
    """The header is malformed, the timestamp is outside the tolerance, or no signature matches."""


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The `Enrollstream-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def _seconds(value: float | datetime | timedelta) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    now: float | datetime,
    tolerance: float | timedelta = DEFAULT_TOLERANCE_S,
) -> int:
    """Check an `Enrollstream-Signature` header against the raw body; return its timestamp.

    `now` is the receiver's clock (unix seconds or an aware datetime); `tolerance` how far the signed
    timestamp may be from it (seconds or a timedelta). Raises InvalidSignature otherwise.
    """
    if not header:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq:
            raise InvalidSignature(f"malformed {SIGNATURE_HEADER} header")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise InvalidSignature("malformed timestamp") from exc
        elif name == "v1":
            candidates.append(value)
        # other schemes (v0, v2, ...) are ignored: a new scheme is added beside v1, never instead of it
    if timestamp is None:
        raise InvalidSignature("no timestamp (t=) in the signature header")
    if not candidates:
        raise InvalidSignature("no v1 signature in the signature header")
    if abs(_seconds(now) - timestamp) > _seconds(tolerance):
        raise InvalidSignature("timestamp outside the tolerance (replayed or clock skew)")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise InvalidSignature("no signature matches the body")
    return timestamp
