"""Signed one-click unsubscribe tokens (RFC 8058) and the OptOut command a verified token becomes.

A token names the account, the contact and the enrollment, and carries an HMAC-SHA256 signature:

    base64url("v1\\x1f<account>\\x1f<contact>\\x1f<enrollment>") "." base64url(hmac)

It is opaque to the recipient but not secret (the ids are only encoded). Keys rotate: sign with the
first key, verify against all of them. Tokens do not expire: an unsubscribe link must keep working
for as long as the message may be read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from enrollstream.domain.commands import OptOut, OptOutData

_VERSION = "v1"
_SEP = "\x1f"


class InvalidUnsubscribeToken(ValueError):
    """Malformed, or not signed by any of our keys."""


@dataclass(frozen=True)
class UnsubscribeClaims:
    account_id: str
    contact_id: str
    enrollment_id: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"enrollstream-unsubscribe\x00" + payload, hashlib.sha256).digest()


def sign_unsubscribe_token(claims: UnsubscribeClaims, key: bytes) -> str:
    if len(key) < 16:
        raise ValueError("an unsubscribe signing key needs at least 16 bytes")
    parts = (claims.account_id, claims.contact_id, claims.enrollment_id)
    if any(not part or _SEP in part for part in parts):
        raise ValueError("claims must be non-empty and must not contain the separator")
    payload = _SEP.join((_VERSION, *parts)).encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify_unsubscribe_token(token: str, keys: Sequence[bytes]) -> UnsubscribeClaims:
    """The claims of a token signed by one of `keys`; raises InvalidUnsubscribeToken otherwise."""
    if not keys:
        raise ValueError("no verification keys")
    encoded_payload, dot, encoded_mac = token.strip().partition(".")
    if not dot or not encoded_payload or not encoded_mac or len(token) > 2048:
        raise InvalidUnsubscribeToken("malformed token")
    try:
        payload = _unb64(encoded_payload)
        mac = _unb64(encoded_mac)
    except (binascii.Error, ValueError) as exc:
        raise InvalidUnsubscribeToken("malformed token") from exc
    if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in keys):
        raise InvalidUnsubscribeToken("bad signature")
    try:
        version, account_id, contact_id, enrollment_id = payload.decode().split(_SEP)
    except ValueError as exc:  # also UnicodeDecodeError
        raise InvalidUnsubscribeToken("malformed claims") from exc
    if version != _VERSION:
        raise InvalidUnsubscribeToken(f"unknown token version {version!r}")
    return UnsubscribeClaims(account_id, contact_id, enrollment_id)


def unsubscribe_command_id(claims: UnsubscribeClaims) -> str:
    """Deterministic: clicking twice (or a mail client POSTing twice) is one OptOut."""
    return f"unsubscribe:{claims.account_id}/{claims.contact_id}:{claims.enrollment_id}"


def opt_out_command(claims: UnsubscribeClaims, issued_at: datetime, channel: str = "email") -> OptOut:
    """The command a verified one-click POST (`List-Unsubscribe=One-Click`) turns into."""
    return OptOut(
        command_id=unsubscribe_command_id(claims),
        account_id=claims.account_id,
        issued_at=issued_at,
        actor="unsubscribe",
        data=OptOutData(
            contact_id=claims.contact_id,
            channel=channel,
            detail=f"one-click unsubscribe from enrollment {claims.enrollment_id}",
        ),
    )
