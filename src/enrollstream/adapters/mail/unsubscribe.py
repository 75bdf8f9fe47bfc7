"""Signed one-click unsubscribe tokens (RFC 8058) and the OptOut command a verified token becomes.

A token names the account, the contact and the enrollment, and carries an HMAC-SHA256 signature:

    base64url("v1\\x1f<account>\\x1f<contact>\\x1f<enrollment>") "." base64url(hmac)

It is opaque to the recipient but not secret (the ids are only encoded). Keys rotate: sign with the
first key, verify against all of them. Tokens do not expire: an unsubscribe link must keep working
for as long as the message may be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from enrollstream.adapters.mail import signed_tokens
from enrollstream.domain.commands import OptOut, OptOutData

_VERSION = "v1"
_PURPOSE = b"enrollstream-unsubscribe"


class InvalidUnsubscribeToken(signed_tokens.InvalidToken):
    """Malformed, or not signed by any of our keys."""


@dataclass(frozen=True)
class UnsubscribeClaims:
    account_id: str
    contact_id: str
    enrollment_id: str


def sign_unsubscribe_token(claims: UnsubscribeClaims, key: bytes) -> str:
    fields = (_VERSION, claims.account_id, claims.contact_id, claims.enrollment_id)
    return signed_tokens.sign(_PURPOSE, fields, key)


def verify_unsubscribe_token(token: str, keys: Sequence[bytes]) -> UnsubscribeClaims:
    """The claims of a token signed by one of `keys`; raises InvalidUnsubscribeToken otherwise."""
    try:
        fields = signed_tokens.verify(_PURPOSE, token.strip(), keys)
    except signed_tokens.InvalidToken as exc:
        raise InvalidUnsubscribeToken(str(exc)) from exc
    try:
        version, account_id, contact_id, enrollment_id = fields
    except ValueError as exc:
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
