"""Inbound email: the record an inbound mail hook publishes, and the pure rules for reply detection.

`InboundEmailReceived` is what a receiving relay (an MX webhook, an IMAP poller) publishes to the
`inbound-email` topic, one record per received message, keyed by account. The `inbound` role matches
its `In-Reply-To` / `References` against the Message-IDs the dispatcher sent (the delivery ledger) and
turns a real reply into a `ReplyDetected` command, and a delivery status notification about one of
our messages into a `BounceDetected` (docs/delivery.md "Receiving replies").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field

from .campaign import Model
from .commands import BounceType

# Bounds of what a receiver copies out of one message (a record on the inbound-email topic stays small).
MAX_HEADER_VALUE = 998  # RFC 5322's line limit
MAX_DSN_RECIPIENTS = 20


class DeliveryStatusRecipient(Model):
    """One per-recipient block of a DSN (RFC 3464): what happened to our message for that address."""

    recipient: str = Field(default="", max_length=MAX_HEADER_VALUE)  # Final-Recipient, type stripped
    action: str = Field(default="", max_length=64)  # failed, delayed, delivered, relayed, expanded
    status: str = Field(default="", max_length=64)  # e.g. 5.1.1
    diagnostic: str = Field(default="", max_length=MAX_HEADER_VALUE)  # Diagnostic-Code


class DeliveryStatus(Model):
    """A delivery status notification (multipart/report; report-type=delivery-status), as parsed by the
    receiver: the Message-ID of the message it reports on (from its returned message or headers part)
    and its per-recipient blocks."""

    original_message_id: str | None = Field(default=None, max_length=MAX_HEADER_VALUE)
    recipients: list[DeliveryStatusRecipient] = Field(default_factory=list, max_length=MAX_DSN_RECIPIENTS)


class InboundEmailReceived(Model):
    """One received email, as the inbound relay saw it (headers decoded, no body needed)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    type: Literal["InboundEmailReceived.v1"] = "InboundEmailReceived.v1"
    account_id: str = Field(min_length=1)
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    subject: str = ""
    message_id: str = Field(min_length=3)  # the inbound message's own Message-ID, <...>
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    auto_submitted: str | None = None  # the Auto-Submitted header (RFC 3834), if present
    received_at: AwareDatetime
    headers: dict[str, str] = Field(default_factory=dict)
    # Set by a receiver for a multipart/report; report-type=delivery-status message (a bounce, not a reply).
    delivery_status: DeliveryStatus | None = None


def referenced_message_ids(email: InboundEmailReceived) -> list[str]:
    """`<id>`s from In-Reply-To, then References newest first (the parent is the likeliest match)."""
    found: list[str] = []
    sources = [email.in_reply_to or "", *reversed(email.references)]
    for source in sources:
        for match in _angle_ids(source):
            if match not in found:
                found.append(match)
    return found


def _angle_ids(text: str) -> list[str]:
    """Every `<id>` in a header value (no whitespace or angle brackets inside); comments ignored."""
    ids: list[str] = []
    start = text.find("<")
    while start != -1:
        end = text.find(">", start + 1)
        if end == -1:
            break
        inner = text[start + 1 : end]
        if inner and "<" not in inner and not any(c.isspace() for c in inner):
            ids.append(f"<{inner}>")
            start = text.find("<", end + 1)
        else:
            start = text.find("<", start + 1)
    return ids


# Auto-reply signals (docs/delivery.md "Receiving replies"). A strong signal alone makes a message an
# auto-reply; weak signals only count together: two or more weak ones make it an auto-reply, one alone
# does not (a person may well write "Re: vacation plans", and a bounce address may be empty for a reason).
AUTO_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
VACATION_SUBJECT_WORDS = (
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "auto response",
    "autoresponse",
    "vacation",
    "on leave",
    "away from the office",
    "abwesenheit",
    "abwesend",
    "réponse automatique",
    "absence",
    "automatische antwort",
    "respuesta automática",
    "fuori sede",
)


def auto_reply_reason(email: InboundEmailReceived) -> str | None:
    """Why this is not a person's reply, else None.

    Strong signals, each enough alone: `Auto-Submitted` other than `no` (RFC 3834), `Precedence:
    bulk/junk/list/auto_reply`, an `X-Autoreply` or `X-Autorespond` header (any value but `no`/`false`).
    Weak signals, enough only two together: a vacation-like subject, an empty `Return-Path` (`<>`, what
    RFC 3834 asks auto-responders to send from), an `X-Auto-Response-Suppress` header (Exchange sets it
    on its own automatic messages)."""
    value = email.auto_submitted
    if value is None:
        value = _header(email.headers, "Auto-Submitted")
    if value is not None and value.split(";", 1)[0].strip().lower() != "no":
        return f"Auto-Submitted: {value.strip()[:200]}"
    precedence = _header(email.headers, "Precedence")
    if precedence is not None and precedence.strip().lower() in AUTO_PRECEDENCE:
        return f"Precedence: {precedence.strip()[:200]}"
    for name in ("X-Autoreply", "X-Autorespond"):
        flag = _header(email.headers, name)
        if flag is not None and flag.strip().lower() not in ("no", "false", "0"):
            return f"{name}: {flag.strip()[:200]}"
    weak = weak_auto_reply_signals(email)
    if len(weak) >= 2:
        return "weak signals: " + ", ".join(weak)
    return None


def weak_auto_reply_signals(email: InboundEmailReceived) -> list[str]:
    """The weak signals present, by name (see auto_reply_reason)."""
    found: list[str] = []
    subject = email.subject.lower()
    if any(word in subject for word in VACATION_SUBJECT_WORDS):
        found.append("vacation subject")
    return_path = _header(email.headers, "Return-Path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        found.append("empty Return-Path")
    if _header(email.headers, "X-Auto-Response-Suppress") is not None:
        found.append("X-Auto-Response-Suppress")
    return found


def bounce_of(report: DeliveryStatus) -> tuple[BounceType, str] | None:
    """What a DSN says of our message: a hard bounce (a 5.x.x status, or `failed` without a status), a
    soft one (4.x.x, or `delayed`), with a detail line; None when it reports a delivery (2.x.x, relayed,
    expanded), which is no bounce. The most severe recipient block decides."""
    kinds: list[tuple[BounceType, str]] = []
    for block in report.recipients:
        status = block.status.strip()
        action = block.action.strip().lower()
        detail = " ".join(part for part in (status, block.recipient, block.diagnostic) if part)[:500]
        if status.startswith("5.") or (not status and action == "failed"):
            kinds.append((BounceType.HARD, detail))
        elif status.startswith("4.") or (not status and action == "delayed"):
            kinds.append((BounceType.SOFT, detail))
    hard = [kind for kind in kinds if kind[0] is BounceType.HARD]
    ranked = hard or kinds
    return ranked[0] if ranked else None


def dsn_referenced_message_ids(email: InboundEmailReceived) -> list[str]:
    """For a DSN: the id of the message it reports on first, then its own In-Reply-To / References."""
    found: list[str] = []
    report = email.delivery_status
    if report is not None and report.original_message_id:
        found.extend(_angle_ids(report.original_message_id))
    for candidate in referenced_message_ids(email):
        if candidate not in found:
            found.append(candidate)
    return found


def printable(text: str, limit: int) -> str:
    """`text` without control characters, on one line, at most `limit` characters (a command's Text)."""
    return " ".join("".join(c if c.isprintable() or c.isspace() else " " for c in text).split())[:limit]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def reply_command_id(inbound_message_id: str) -> str:
    """One ReplyDetected per inbound message: a redelivered inbound record is a duplicate."""
    return f"reply:{inbound_message_id.strip()}"


def bounce_command_id(inbound_message_id: str) -> str:
    """One BounceDetected per received DSN: a redelivered or re-polled DSN is a duplicate."""
    return f"dsn:{inbound_message_id.strip()}"


def inbound_record_key(account_id: str, message_id: str) -> str:
    """The inbound-email record's key: the same received message always has the same key, so a repeat
    (an SMTP retry, an IMAP re-poll) is recognisable downstream as well as by the command ids above."""
    return f"{account_id}/{message_id.strip()}"
