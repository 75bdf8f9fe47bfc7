"""Received mail, as bytes, into `InboundEmailReceived` (the receiver's SMTP listener and IMAP poller).

Never raises for what a sender can put in a message: headers that do not decode are taken as they come
(undecodable bytes replaced), every value is cut at 998 characters, and only the headers the inbound
rules read are copied (`KEPT_HEADERS`), so a record stays small whatever arrived.

The account a message belongs to comes from the address it was sent *to*, never from what it says of
itself: `AccountResolver` maps a reply address of the configured domain to an account (docs/delivery.md
"Receiving replies").
"""

from __future__ import annotations

import email.header
import email.message
import email.parser
import email.policy
import email.utils
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from enrollstream.adapters.mail.message import ACCOUNT_TAG
from enrollstream.domain.bounds import MAX_ID_LENGTH
from enrollstream.domain.inbound import (
    MAX_DSN_RECIPIENTS,
    MAX_HEADER_VALUE,
    DeliveryStatus,
    DeliveryStatusRecipient,
    InboundEmailReceived,
)

# What the inbound rules read besides the fields of their own (docs/delivery.md "Receiving replies").
KEPT_HEADERS = (
    "Auto-Submitted",
    "Precedence",
    "X-Autoreply",
    "X-Autorespond",
    "X-Auto-Response-Suppress",
    "Return-Path",
    "Content-Type",
    "Delivered-To",
    "X-Original-To",
    "List-Id",
)
MAX_REFERENCES = 50  # the newest ones: the parent is the likeliest match


def _text(value: Any) -> str:
    """A header value as one line of text: RFC 2047 words decoded where they decode, cut at 998."""
    if value is None:
        return ""
    raw = str(value)
    try:
        decoded = str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, UnicodeError):
        decoded = raw
    return " ".join(decoded.split())[:MAX_HEADER_VALUE]


def synthetic_message_id(raw: bytes) -> str:
    """For a message without a usable Message-ID: one derived from its bytes, so the same message
    received again gets the same id."""
    return f"<{hashlib.sha256(raw).hexdigest()[:40]}@no-message-id.enrollstream>"


def _message_id(message: email.message.Message, raw: bytes) -> str:
    value = _text(message.get("Message-ID")).strip()
    if 3 <= len(value) <= MAX_ID_LENGTH and value.startswith("<") and value.endswith(">"):
        return value
    return synthetic_message_id(raw)


def _delivery_status(message: email.message.Message) -> DeliveryStatus | None:
    """The DSN in a multipart/report; report-type=delivery-status (RFC 3464), else None."""
    if message.get_content_type() != "multipart/report":
        return None
    if str(message.get_param("report-type", "")).lower() != "delivery-status":
        return None
    original: str | None = None
    recipients: list[DeliveryStatusRecipient] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            blocks = part.get_payload()
            # The first block is per message; each one after it is per recipient.
            listed = (
                [b for b in blocks if isinstance(b, email.message.Message)]
                if isinstance(blocks, list)
                else []
            )
            for block in listed[1 : 1 + MAX_DSN_RECIPIENTS]:
                recipients.append(
                    DeliveryStatusRecipient(
                        recipient=_text(block.get("Final-Recipient") or block.get("Original-Recipient"))
                        .split(";", 1)[-1]
                        .strip(),
                        action=_text(block.get("Action"))[:64],
                        status=_text(block.get("Status")).split(" ", 1)[0][:64],
                        diagnostic=_text(block.get("Diagnostic-Code")),
                    )
                )
        elif kind == "message/rfc822" and original is None:
            returned = part.get_payload()
            if isinstance(returned, list) and returned and isinstance(returned[0], email.message.Message):
                original = _text(returned[0].get("Message-ID")) or None
        elif kind == "text/rfc822-headers" and original is None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                headers = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
                    payload, headersonly=True
                )
                original = _text(headers.get("Message-ID")) or None
    return DeliveryStatus(original_message_id=original, recipients=recipients)


def parse_inbound(
    raw: bytes,
    *,
    account_id: str,
    received_at: datetime,
    recipient: str | None = None,
    envelope_from: str | None = None,
) -> InboundEmailReceived:
    """The record for one received message. `recipient`: the address it was delivered to (SMTP RCPT),
    else its To header; `envelope_from`: the SMTP MAIL FROM, kept as Return-Path when the message has none
    (an empty one, `<>`, is a weak auto-reply signal)."""
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    headers: dict[str, str] = {}
    for name in KEPT_HEADERS:
        value = message.get(name)
        if value is not None:
            headers[name] = _text(value)
    if "Return-Path" not in headers and envelope_from is not None:
        headers["Return-Path"] = f"<{envelope_from.strip()[: MAX_HEADER_VALUE - 2]}>"
    references = _text(message.get("References")).split()[-MAX_REFERENCES:]
    auto_submitted = message.get("Auto-Submitted")
    return InboundEmailReceived.model_validate(
        {
            "account_id": account_id,
            "from": _text(message.get("From")) or (envelope_from or "") or "<>",
            "to": (recipient or _text(message.get("To")) or "undisclosed-recipients:;")[:MAX_HEADER_VALUE],
            "subject": _text(message.get("Subject")),
            "message_id": _message_id(message, raw),
            "in_reply_to": _text(message.get("In-Reply-To")) or None,
            "references": references,
            "auto_submitted": _text(auto_submitted) if auto_submitted is not None else None,
            "received_at": received_at,
            "headers": headers,
            "delivery_status": _delivery_status(message),
        }
    )


def header_recipients(raw: bytes) -> list[str]:
    """The addresses a stored message was delivered to, likeliest first (Delivered-To, X-Original-To,
    To, Cc): where an IMAP poller finds the reply address, hence the account."""
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    values: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "To", "Cc"):
        values.extend(_text(v) for v in message.get_all(name) or [])
    return [address for _, address in email.utils.getaddresses(values) if address][:100]


@dataclass(frozen=True)
class AccountResolver:
    """Which account a reply address belongs to.

    `domain`: the reply domain (only addresses there are ours). An address is resolved, in order, by
    `mailboxes` (local part -> account, e.g. `jobs=acme`), then by a `+tag` (`reply+acme@domain`: the
    tag is the account id), then `default_account`; else it names no account."""

    domain: str
    mailboxes: dict[str, str] = field(default_factory=dict)
    default_account: str | None = None

    @classmethod
    def from_settings(cls, domain: str, mailboxes: str, default_account: str | None) -> AccountResolver:
        pairs = (item.split("=", 1) for item in mailboxes.split(",") if "=" in item)
        return cls(
            domain=domain.strip().lower(),
            mailboxes={local.strip().lower(): account.strip() for local, account in pairs},
            default_account=default_account or None,
        )

    def in_domain(self, address: str) -> bool:
        _, _, domain = address.strip().strip("<>").rpartition("@")
        return domain.lower() == self.domain

    def account_for(self, address: str) -> str | None:
        if not self.in_domain(address):
            return None
        local = address.strip().strip("<>").rpartition("@")[0]
        if local.lower() in self.mailboxes:
            return self.mailboxes[local.lower()]
        _, plus, tag = local.partition("+")  # the tag keeps its case: account ids are case-sensitive
        if plus and 0 < len(tag) <= MAX_ID_LENGTH and ACCOUNT_TAG.match(tag):
            return tag
        return self.default_account

    def first_account(self, addresses: Iterable[str]) -> str | None:
        for address in addresses:
            account = self.account_for(address)
            if account is not None:
                return account
        return None
