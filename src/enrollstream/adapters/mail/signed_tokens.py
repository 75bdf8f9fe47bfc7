"""Signed, opaque tokens for links in messages (one-click unsubscribe, the open-tracking pixel).

A token is its fields joined by a separator, base64url-encoded, then "." and the base64url HMAC-SHA256
of them under a purpose label, so a token made for one purpose is never valid for another. Keys rotate:
sign with the first key, verify against all of them. Opaque to the recipient but not secret (the
fields are only encoded); it cannot be forged or enumerated without a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

SEPARATOR = "\x1f"
MAX_TOKEN_LENGTH = 2048


class InvalidToken(ValueError):
    """Malformed, too long, or not signed by any of our keys for this purpose."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(purpose: bytes, key: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, purpose + b"\x00" + payload, hashlib.sha256)  # one shot: no HMAC object


def sign(purpose: bytes, fields: Sequence[str], key: bytes) -> str:
    if len(key) < 16:
        raise ValueError("a signing key needs at least 16 bytes")
    if any(not field or SEPARATOR in field for field in fields):
        raise ValueError("fields must be non-empty and must not contain the separator")
    payload = SEPARATOR.join(fields).encode()
    return f"{_b64(payload)}.{_b64(_mac(purpose, key, payload))}"


def verify(purpose: bytes, token: str, keys: Sequence[bytes]) -> list[str]:
    """The fields of a token signed for `purpose` by one of `keys`; raises InvalidToken otherwise."""
    if not keys:
        raise ValueError("no verification keys")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("token too long")
    encoded_payload, dot, encoded_mac = token.partition(".")
    if not dot or not encoded_payload or not encoded_mac:
        raise InvalidToken("malformed token")
    try:
        payload = _unb64(encoded_payload)
        mac = _unb64(encoded_mac)
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("malformed token") from exc
    if not any(hmac.compare_digest(mac, _mac(purpose, key, payload)) for key in keys):
        raise InvalidToken("bad signature")
    try:
        return payload.decode().split(SEPARATOR)
    except UnicodeDecodeError as exc:
        raise InvalidToken("malformed claims") from exc
