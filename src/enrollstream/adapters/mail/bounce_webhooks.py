"""Provider bounce and complaint callbacks (docs/delivery.md "Bounce webhooks"): who may call, what a
callback says, and the commands it becomes. No I/O here: the unsubscribe role's HTTP server reads the
request, asks the delivery ledger which message a notice names, and publishes what `bounce_commands`
answers.

- An *endpoint* (`ENROLLSTREAM_BOUNCE_WEBHOOKS`) is a URL name bound to ONE account, a payload format
  (`smtp2go` or `generic`) and one or more shared secrets (several: rotation). A callback can only ever
  name messages of its endpoint's account.
- A caller proves it knows a secret with `Authorization: Bearer <secret>`, `Authorization: Basic`
  (any user, the secret as password; SMTP2GO's "Authorization header" option, or credentials in the
  webhook URL), or a signature of the body, `X-Enrollstream-Signature: t=<unix time>,v1=<hex
  HMAC-SHA256(secret, "<t>." + body)>` within `SIGNATURE_TOLERANCE` of our clock. Every comparison is
  constant-time and every secret is tried (no early exit).
- Every value is bounded where it enters: the body (`MAX_BODY_BYTES`), each string field, timestamps.
  A callback that breaks a bound or is not one of the formats raises `CallbackRejected` with a coded
  reason and the HTTP status to answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enrollstream.domain.bounds import EARLIEST, LATEST, Instant, Line, Text
from enrollstream.domain.commands import (
    BounceDetected,
    BounceDetectedData,
    BounceType,
    Command,
    OptOut,
    OptOutData,
)

MAX_BODY_BYTES = 16 * 1024  # a bounce callback is a few hundred bytes; SMTP2GO's are under 2 KiB
MAX_FIELD = 998  # an address, a Message-ID, an event id: at most a header line
MAX_DETAIL = 500  # the provider's message and context, cut to this in the command
SIGNATURE_TOLERANCE = timedelta(minutes=5)
MIN_SECRET_LENGTH = 16
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SIGNATURE_HEADER = "X-Enrollstream-Signature"
ACTOR = "bounce-webhook"

# SMTP2GO events that are not bounces or complaints: answered 200 (so SMTP2GO does not retry them) and
# counted `ignored`. `reject` is SMTP2GO refusing to send to an address it suppressed after an earlier
# hard bounce or complaint, which reached us then.
SMTP2GO_IGNORED = frozenset(
    {"processed", "delivered", "open", "opened", "click", "clicked", "unsubscribe", "unsubscribed"}
    | {"resubscribe", "reject", "rejected"}
)
SMTP2GO_COMPLAINTS = frozenset({"spam", "spam_complaint"})


class Reason(StrEnum):
    """Why a callback was refused (the `reason` of the answer and of the metric)."""

    UNKNOWN_ENDPOINT = "unknown_endpoint"  # 404
    UNAUTHORIZED = "unauthorized"  # 401: no credentials
    BAD_CREDENTIALS = "bad_credentials"  # 403: a secret or signature that is none of the endpoint's
    BODY_TOO_LARGE = "body_too_large"  # 413
    BODY_TIMEOUT = "body_timeout"  # 408: the body did not arrive within the body timeout
    MALFORMED = "malformed"  # 400: not JSON / form data, or not the format's shape
    INVALID_FIELD = "invalid_field"  # 422: a field too long, with control characters, of the wrong type
    BAD_TIMESTAMP = "bad_timestamp"  # 422: unparseable or out of range
    UNKNOWN_EVENT = "unknown_event"  # 422: an event type or bounce class we do not know
    UNMATCHED = "unmatched"  # 422: no message of this endpoint's account has that Message-ID / recipient


STATUS = {
    Reason.UNKNOWN_ENDPOINT: 404,
    Reason.UNAUTHORIZED: 401,
    Reason.BAD_CREDENTIALS: 403,
    Reason.BODY_TOO_LARGE: 413,
    Reason.BODY_TIMEOUT: 408,
    Reason.MALFORMED: 400,
    Reason.INVALID_FIELD: 422,
    Reason.BAD_TIMESTAMP: 422,
    Reason.UNKNOWN_EVENT: 422,
    Reason.UNMATCHED: 422,
}


class CallbackRejected(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.status = STATUS[reason]
        self.detail = detail[:300]
        super().__init__(f"{reason}: {self.detail}")


class InvalidWebhookSettings(ValueError):
    """ENROLLSTREAM_BOUNCE_WEBHOOKS cannot be used (the message says why)."""


class NoticeKind(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"


@dataclass(frozen=True)
class WebhookEndpoint:
    name: str  # the last segment of its URL, /webhooks/bounces/<name>
    account_id: str  # the only account its callbacks can affect
    format: Literal["smtp2go", "generic"]
    secrets: tuple[bytes, ...]  # any of them authenticates (rotation)


class _EndpointSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=ENDPOINT_NAME.pattern)
    account_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f/]+$")
    format: Literal["smtp2go", "generic"]
    secrets: list[str] = Field(min_length=1, max_length=8)


def parse_endpoints(value: str) -> dict[str, WebhookEndpoint]:
    """`ENROLLSTREAM_BOUNCE_WEBHOOKS`: a JSON list of {name, account_id, format, secrets}; "" is none."""
    if not value.strip():
        return {}
    try:
        raw = json.loads(value)
        if not isinstance(raw, list):
            raise InvalidWebhookSettings("ENROLLSTREAM_BOUNCE_WEBHOOKS must be a JSON list")
        settings = [_EndpointSetting.model_validate(item) for item in raw]
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidWebhookSettings(f"ENROLLSTREAM_BOUNCE_WEBHOOKS is not usable: {exc}") from None
    endpoints: dict[str, WebhookEndpoint] = {}
    for s in settings:
        if s.name in endpoints:
            raise InvalidWebhookSettings(f"ENROLLSTREAM_BOUNCE_WEBHOOKS names {s.name!r} twice")
        if any(len(secret.encode()) < MIN_SECRET_LENGTH for secret in s.secrets):
            raise InvalidWebhookSettings(
                f"ENROLLSTREAM_BOUNCE_WEBHOOKS: {s.name!r} has a secret under {MIN_SECRET_LENGTH} bytes"
            )
        secrets = tuple(secret.encode() for secret in s.secrets)
        endpoints[s.name] = WebhookEndpoint(s.name, s.account_id, s.format, secrets)
    return endpoints


# --- Who is calling ------------------------------------------------------------------------------


def _matches_any(candidate: bytes, secrets: Sequence[bytes]) -> bool:
    # Every secret is compared, each in constant time, so the time taken does not say which one (or how
    # much of one) matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(candidate, secret)
    return matched


def body_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `v1` of `X-Enrollstream-Signature` for this body at this time."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def has_credentials(headers: Mapping[str, str]) -> bool:
    return bool(headers.get("Authorization", "").strip() or headers.get(SIGNATURE_HEADER, "").strip())


def authenticate(endpoint: WebhookEndpoint, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
    """Raise CallbackRejected unless the request carries one of the endpoint's secrets or a signature of
    `body` by one of them (docstring of the module)."""
    authorization = headers.get("Authorization", "").strip()[:MAX_FIELD]
    signature = headers.get(SIGNATURE_HEADER, "").strip()[:MAX_FIELD]
    if not authorization and not signature:
        raise CallbackRejected(Reason.UNAUTHORIZED, "no Authorization or signature header")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        candidate = credentials.strip().encode()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(candidate, validate=True)
            except (binascii.Error, ValueError):
                raise CallbackRejected(Reason.BAD_CREDENTIALS, "malformed Basic credentials") from None
            candidate = decoded.partition(b":")[2]
        elif scheme.lower() != "bearer":
            raise CallbackRejected(Reason.BAD_CREDENTIALS, "Authorization is neither Bearer nor Basic")
        if _matches_any(candidate, endpoint.secrets):
            return
        raise CallbackRejected(Reason.BAD_CREDENTIALS, "not a secret of this endpoint")
    parts = dict(p.strip().partition("=")[::2] for p in signature.split(","))
    try:
        timestamp = int(parts.get("t", ""))
        mac = bytes.fromhex(parts.get("v1", ""))
    except ValueError:
        raise CallbackRejected(Reason.BAD_CREDENTIALS, "malformed signature header") from None
    if abs(now.timestamp() - timestamp) > SIGNATURE_TOLERANCE.total_seconds():
        raise CallbackRejected(Reason.BAD_CREDENTIALS, "signature timestamp too far from now")
    expected = [bytes.fromhex(body_signature(secret, timestamp, body)) for secret in endpoint.secrets]
    if not _matches_any(mac, expected):
        raise CallbackRejected(Reason.BAD_CREDENTIALS, "signature does not match")


# --- What it says -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BounceNotice:
    """One callback's news about one message, bounded."""

    kind: NoticeKind
    event_id: str | None  # the provider's id of the event or email, if any
    message_id_header: str | None  # <…> as we sent it, if the callback carries it
    recipient: str | None
    occurred_at: datetime | None
    detail: str


class GenericBounceCallback(BaseModel):
    """The generic bounce webhook body (`format: generic`), one event per request: what a relay for any
    provider posts to /webhooks/bounces/<endpoint>. `message_id` (the Message-ID header we sent, with or
    without <>) or else `recipient` names the message: given a Message-ID, only the message with that
    Message-ID of the endpoint's account matches (the recipient is not tried)."""

    model_config = ConfigDict(extra="ignore", title="GenericBounceCallback")
    event_id: Line = Field(min_length=1, max_length=MAX_FIELD, description="The provider's event id")
    type: NoticeKind = Field(description="hard_bounce, soft_bounce or complaint (a spam report)")
    message_id: Line | None = Field(default=None, min_length=1, max_length=MAX_FIELD)
    recipient: Line | None = Field(default=None, min_length=3, max_length=MAX_FIELD)
    occurred_at: Instant | None = None
    detail: Text = Field(default="", max_length=4 * MAX_DETAIL)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _field(payload: Mapping[str, Any], *names: str, text: bool = False) -> str | None:
    """The first of `names` present (case-insensitively), as a bounded string; None if absent/empty."""
    lowered = {str(k).lower(): v for k, v in payload.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value is None or value == "":
            continue
        if isinstance(value, list) and len(value) == 1:  # form data, or SMTP2GO's `recipients`
            value = value[0]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CallbackRejected(Reason.INVALID_FIELD, f"{name} is not a string")
        value = str(value).strip()
        limit = 4 * MAX_DETAIL if text else MAX_FIELD
        if len(value) > limit:
            raise CallbackRejected(Reason.INVALID_FIELD, f"{name} is longer than {limit} characters")
        if _CONTROL.search(value) or (not text and ("\r" in value or "\n" in value or "\t" in value)):
            raise CallbackRejected(Reason.INVALID_FIELD, f"{name} has control characters")
        return value
    return None


def parse_time(value: str | None) -> datetime | None:
    """ISO 8601 (SMTP2GO's live callbacks) or Unix seconds (its documentation), within the bounds."""
    if value is None:
        return None
    try:
        if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", value):
            at = datetime.fromtimestamp(float(value), UTC)
        else:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)  # SMTP2GO's times are UTC
            at = at.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise CallbackRejected(Reason.BAD_TIMESTAMP, f"not a time: {value[:40]!r}") from None
    if not EARLIEST <= at < LATEST:
        raise CallbackRejected(Reason.BAD_TIMESTAMP, f"time out of range: {value[:40]!r}")
    return at


def normalise_message_id(value: str | None) -> str | None:
    if value is None:
        return None
    bare = value.strip().removeprefix("<").removesuffix(">").strip()
    if not bare or any(c in bare for c in "<> ,"):
        raise CallbackRejected(Reason.INVALID_FIELD, "message id is not one <id>")
    return f"<{bare}>"


def _decode(body: bytes, content_type: str) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise CallbackRejected(Reason.BODY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise CallbackRejected(Reason.MALFORMED, "body is not UTF-8") from None
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=200)
        except ValueError:
            raise CallbackRejected(Reason.MALFORMED, "not form data") from None
        form: dict[str, Any] = {}
        for key, value in pairs:
            form.setdefault(key, []).append(value)
        return form
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise CallbackRejected(Reason.MALFORMED, "not JSON") from None
    if not isinstance(payload, dict):
        raise CallbackRejected(Reason.MALFORMED, "not a JSON object")
    return payload


def _smtp2go_message_id(payload: Mapping[str, Any]) -> str | None:
    # SMTP2GO sends the headers named in the webhook's "Email headers" setting with the event data: as
    # a field of their own, or in a `headers` object or list of {name, value}.
    found = _field(payload, "message-id", "message_id")
    if found is not None:
        return found
    headers = next((v for k, v in payload.items() if str(k).lower() == "headers"), None)
    if isinstance(headers, dict):
        return _field(headers, "message-id")
    if isinstance(headers, list):
        for header in headers[:100]:
            if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
                return _field(header, "value")
    return None


def parse_smtp2go(body: bytes, content_type: str) -> BounceNotice | None:
    """An SMTP2GO webhook (JSON or form-encoded): a notice for `bounce` and `spam`, None for the events
    that are neither (SMTP2GO_IGNORED)."""
    payload = _decode(body, content_type)
    event = (_field(payload, "event") or "").lower()
    if event in SMTP2GO_IGNORED:
        return None
    if event == "bounce":
        bounce = (_field(payload, "bounce") or "").lower()
        kinds = {"hard": NoticeKind.HARD_BOUNCE, "soft": NoticeKind.SOFT_BOUNCE}
        if bounce not in kinds:
            raise CallbackRejected(Reason.UNKNOWN_EVENT, f"bounce class {bounce[:40]!r} is not hard or soft")
        kind = kinds[bounce]
    elif event in SMTP2GO_COMPLAINTS:
        kind = NoticeKind.COMPLAINT
    else:
        raise CallbackRejected(Reason.UNKNOWN_EVENT, f"event {event[:40]!r}")
    message = _field(payload, "message", text=True) or ""
    context = _field(payload, "context", text=True) or ""
    host = _field(payload, "host") or ""
    detail = "; ".join(part for part in (message, context, host and f"host {host}") if part)
    return BounceNotice(
        kind=kind,
        event_id=_field(payload, "email_id", "email-id"),
        message_id_header=normalise_message_id(_smtp2go_message_id(payload)),
        recipient=_field(payload, "rcpt", "recipients", "email"),
        occurred_at=parse_time(_field(payload, "time")),
        detail=detail,
    )


def parse_generic(body: bytes, content_type: str) -> BounceNotice:
    payload = _decode(body, "application/json")
    try:
        callback = GenericBounceCallback.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors()
        fields = ", ".join(".".join(map(str, e["loc"])) for e in errors[:5])
        reason = Reason.BAD_TIMESTAMP if any(e["loc"][:1] == ("occurred_at",) for e in errors) else None
        if reason is None:
            missing = any(e["type"] == "missing" for e in errors)
            reason = Reason.MALFORMED if missing else Reason.INVALID_FIELD
        raise CallbackRejected(reason, f"invalid {fields}") from None
    if callback.message_id is None and callback.recipient is None:
        raise CallbackRejected(Reason.MALFORMED, "neither message_id nor recipient")
    return BounceNotice(
        kind=callback.type,
        event_id=callback.event_id,
        message_id_header=normalise_message_id(callback.message_id),
        recipient=callback.recipient,
        occurred_at=callback.occurred_at,
        detail=callback.detail,
    )


def parse_callback(endpoint: WebhookEndpoint, body: bytes, content_type: str) -> BounceNotice | None:
    if endpoint.format == "smtp2go":
        return parse_smtp2go(body, content_type)
    return parse_generic(body, content_type)


# --- What it becomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchedMessage:
    """The delivery ledger's row of the message a notice names (always of the endpoint's account)."""

    account_id: str
    contact_id: str
    enrollment_id: str
    step_index: int
    message_id: str  # ids.message_id, es-…


def bounce_command_id(message: MatchedMessage, kind: NoticeKind) -> str:
    """One per message and kind, whichever provider event, format or endpoint reported it: a repeated
    callback is a duplicate for the decider."""
    return f"bounce:{message.account_id}/{message.contact_id}:{message.message_id}:{kind.value}"


def bounce_commands(
    notice: BounceNotice, message: MatchedMessage, now: datetime, provider: str
) -> list[Command]:
    """BounceDetected for every notice (hard: the enrollment fails, reason bounced; soft and complaint:
    recorded); a complaint also opts the contact out, account-wide."""
    when = f" at {notice.occurred_at.isoformat()}" if notice.occurred_at else ""
    label = {
        NoticeKind.HARD_BOUNCE: "hard bounce",
        NoticeKind.SOFT_BOUNCE: "soft bounce",
        NoticeKind.COMPLAINT: "spam complaint",
    }[notice.kind]
    detail = f"{provider} {label}{when}: {notice.detail}"[:MAX_DETAIL]
    issued_at = now.astimezone(UTC)
    bounce = BounceDetected(
        command_id=bounce_command_id(message, notice.kind),
        account_id=message.account_id,
        issued_at=issued_at,
        actor=ACTOR,
        data=BounceDetectedData(
            contact_id=message.contact_id,
            enrollment_id=message.enrollment_id,
            bounce_type=BounceType.HARD if notice.kind is NoticeKind.HARD_BOUNCE else BounceType.SOFT,
            step_index=message.step_index,
            detail=detail,
        ),
    )
    if notice.kind is not NoticeKind.COMPLAINT:
        return [bounce]
    opt_out = OptOut(
        command_id=f"complaint:{message.account_id}/{message.contact_id}:{message.message_id}",
        account_id=message.account_id,
        issued_at=issued_at,
        actor=ACTOR,
        data=OptOutData(contact_id=message.contact_id, channel="complaint", detail=detail),
    )
    return [bounce, opt_out]
