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
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from enrollstream.domain import ids
from enrollstream.domain.commands import MachineOpen, OpenDetected, OpenDetectedData

_VERSION = "o1"
_SEP = "\x1f"
MAX_TOKEN_LENGTH = 2048
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


class InvalidOpenToken(ValueError):
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


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"enrollstream-open\x00" + payload, hashlib.sha256).digest()


def sign_open_token(claims: OpenClaims, key: bytes) -> str:
    if len(key) < 16:
        raise ValueError("a signing key needs at least 16 bytes")
    ids_ = (claims.account_id, claims.contact_id, claims.enrollment_id)
    if any(not part or _SEP in part for part in ids_):
        raise ValueError("claims must be non-empty and must not contain the separator")
    numbers = (claims.step_index, claims.attempt, claims.sent_at)
    payload = _SEP.join((_VERSION, *ids_, *map(str, numbers))).encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify_open_token(token: str, keys: Sequence[bytes]) -> OpenClaims:
    """The claims of a token signed by one of `keys`; raises InvalidOpenToken otherwise."""
    if not keys:
        raise ValueError("no verification keys")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidOpenToken("token too long")
    encoded_payload, dot, encoded_mac = token.partition(".")
    if not dot or not encoded_payload or not encoded_mac:
        raise InvalidOpenToken("malformed token")
    try:
        payload = _unb64(encoded_payload)
        mac = _unb64(encoded_mac)
    except (binascii.Error, ValueError) as exc:
        raise InvalidOpenToken("malformed token") from exc
    if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in keys):
        raise InvalidOpenToken("bad signature")
    try:
        version, account_id, contact_id, enrollment_id, step, attempt, sent_at = payload.decode().split(_SEP)
        claims = OpenClaims(account_id, contact_id, enrollment_id, int(step), int(attempt), int(sent_at))
    except ValueError as exc:  # also UnicodeDecodeError
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
