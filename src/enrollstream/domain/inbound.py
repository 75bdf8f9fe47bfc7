"""Inbound email: the record an inbound mail hook publishes, and the pure rules for reply detection.

`InboundEmailReceived` is what a receiving relay (an MX webhook, an IMAP poller) publishes to the
`inbound-email` topic, one record per received message, keyed by account. The `inbound` role matches
its `In-Reply-To` / `References` against the Message-IDs the dispatcher sent (the delivery ledger) and
turns a real reply into a `ReplyDetected` command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field

from .campaign import Model


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


def auto_reply_reason(email: InboundEmailReceived) -> str | None:
    """Why this is not a person's reply (RFC 3834 Auto-Submitted other than `no`), else None."""
    value = email.auto_submitted
    if value is None:
        value = _header(email.headers, "Auto-Submitted")
    if value is None:
        return None
    keyword = value.split(";", 1)[0].strip().lower()
    if keyword == "no":
        return None
    return f"Auto-Submitted: {value.strip()}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def reply_command_id(inbound_message_id: str) -> str:
    """One ReplyDetected per inbound message: a redelivered inbound record is a duplicate."""
    return f"reply:{inbound_message_id.strip()}"
