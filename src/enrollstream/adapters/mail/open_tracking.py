"""Signed open-tracking pixel tokens, the OpenDetected command a verified load becomes, and how a load
that looks like a machine's is recognised.

Same key scheme as the unsubscribe tokens (`unsubscribe.py`): HMAC-SHA256, signed with the first key,
verified against all of them, so keys rotate together. The MAC has its own purpose label, so an
unsubscribe token is never a valid pixel token or the other way round. A token names one message:

    base64url("o1\\x1f<account>\\x1f<contact>\\x1f<enrollment>\\x1f<step>\\x1f<attempt>\\x1f<sent epoch s>")
    "." base64url(hmac)

Opaque to the recipient but not secret; it cannot be forged or enumerated without a key.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from enrollstream.adapters.mail import signed_tokens
from enrollstream.domain import ids
from enrollstream.domain.commands import MachineOpen, OpenDetected, OpenDetectedData

_VERSION = "o1"
_PURPOSE = b"enrollstream-open"
# A load this soon after the message was built is a machine's (a provider's or scanner's fetch on
# receipt): nobody has opened the message yet.
SOON_AFTER_SENDING_S = 10.0
# The smallest transparent GIF (43 bytes): what the endpoint answers every load with.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

# Apple Mail Privacy Protection fetches remote content through Apple's proxy as soon as the message
# arrives, with a bare "Mozilla/5.0" user agent (no platform, no engine).
_APPLE_PROXY = re.compile(r"^Mozilla/5\.0$")
# Security scanners and link previewers that fetch what a message links to.
_SCANNER = re.compile(
    r"bot\b|crawler|spider|preview|scan|barracuda|mimecast|proofpoint|symantec|forcepoint|"
    r"trendmicro|safelinks|python-requests|curl/|wget/|go-http-client|headless",
    re.IGNORECASE,
)


class InvalidOpenToken(signed_tokens.InvalidToken):
    """Malformed, or not signed by any of our keys."""


@dataclass(frozen=True)
class OpenClaims:
    account_id: str
    contact_id: str
    enrollment_id: str
    step_index: int
    attempt: int
    sent_at: int  # epoch seconds the message was built, for SOON_AFTER_SENDING_S

    @property
    def message_id(self) -> str:
        return ids.message_id(self.enrollment_id, self.step_index, self.attempt)


def sign_open_token(claims: OpenClaims, key: bytes) -> str:
    numbers = (claims.step_index, claims.attempt, claims.sent_at)
    fields = (_VERSION, claims.account_id, claims.contact_id, claims.enrollment_id, *map(str, numbers))
    return signed_tokens.sign(_PURPOSE, fields, key)


def verify_open_token(token: str, keys: Sequence[bytes]) -> OpenClaims:
    """The claims of a token signed by one of `keys`; raises InvalidOpenToken otherwise."""
    try:
        fields = signed_tokens.verify(_PURPOSE, token, keys)
    except signed_tokens.InvalidToken as exc:
        raise InvalidOpenToken(str(exc)) from exc
    try:
        version, account_id, contact_id, enrollment_id, step, attempt, sent_at = fields
        claims = OpenClaims(account_id, contact_id, enrollment_id, int(step), int(attempt), int(sent_at))
    except ValueError as exc:
        raise InvalidOpenToken("malformed claims") from exc
    if version != _VERSION:
        raise InvalidOpenToken(f"unknown token version {version!r}")
    return claims


def pixel_url(base_url: str, claims: OpenClaims, key: bytes) -> str:
    """`<base_url>/<token>.gif`, e.g. https://t.acme.example/o/<token>.gif."""
    return f"{base_url.rstrip('/')}/{sign_open_token(claims, key)}.gif"


def machine_open(user_agent: str, claims: OpenClaims, now: datetime) -> MachineOpen | None:
    """Why this load looks like a machine's, or None (a person, as far as we can tell)."""
    agent = user_agent.strip()
    if _APPLE_PROXY.match(agent):
        return MachineOpen.PRIVACY_PREFETCH
    if not agent or _SCANNER.search(agent):
        return MachineOpen.SCANNER
    if now.timestamp() - claims.sent_at < SOON_AFTER_SENDING_S:
        return MachineOpen.SOON_AFTER_SENDING
    return None


def open_command_id(claims: OpenClaims) -> str:
    """Deterministic per message: however often the pixel is loaded, one OpenDetected (the decider
    answers repeats `duplicate`)."""
    return f"open:{claims.account_id}/{claims.contact_id}:{claims.message_id}"


def open_detected_command(
    claims: OpenClaims, issued_at: datetime, machine: MachineOpen | None
) -> OpenDetected:
    return OpenDetected(
        command_id=open_command_id(claims),
        account_id=claims.account_id,
        issued_at=issued_at.astimezone(UTC),
        actor="open-tracking",
        data=OpenDetectedData(
            contact_id=claims.contact_id,
            enrollment_id=claims.enrollment_id,
            step_index=claims.step_index,
            machine=machine,
        ),
    )
