"""Building a step's email: template rendering, header-injection refusal, deterministic Message-ID,
RFC 8058 one-click List-Unsubscribe, and the policy messages are serialised with for SMTP.

Headers go out folded at whitespace only (lines up to RFC 5322's 998 characters, `WIRE_POLICY`), never
turned into RFC 2047 encoded-words just to fit 78 columns: `List-Unsubscribe: <https://...>` must reach
the mailbox provider as written, or it will not offer one-click unsubscribe. Non-ASCII text (a Subject,
a display name) is still encoded, as it must be without SMTPUTF8.

Templates use `{{ field }}` placeholders (with an optional fallback, `{{ first_name | there }}`),
replaced in a single pass by plain string lookup: nothing is evaluated, and a value that itself looks
like a placeholder is inserted literally. A placeholder with no value and no fallback raises
`TemplateFieldMissing` rather than sending "Hi {{ first_name }}" to a real person.
"""

from __future__ import annotations

import email.policy
import html
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses
from functools import cached_property
from urllib.parse import quote

from enrollstream.domain import ids
from enrollstream.domain.events import StepDispatchedData

from .open_tracking import OpenClaims, pixel_url
from .unsubscribe import UnsubscribeClaims, sign_unsubscribe_token


class HeaderInjectionRefused(ValueError):
    """A header value carries CR, LF or another control / line-separator character."""


class TemplateFieldMissing(ValueError):
    """A template names a field that has no value and no fallback."""


class InvalidAddress(ValueError):
    def __init__(self, message: str, header: str = "") -> None:
        super().__init__(message)
        self.header = header  # "To": the recipient's address is the problem, not our configuration


# RFC 5322 2.1.1: a line MUST NOT exceed 998 characters. email.policy.SMTP folds at 78 and, when a
# word (a long URI) cannot fit, encodes it as =?utf-8?q?...?= to be able to wrap it.
MAX_HEADER_LINE = 998
WIRE_POLICY = email.policy.SMTP.clone(max_line_length=MAX_HEADER_LINE)
# Each List-Unsubscribe URI must fit on a line of its own ("List-Unsubscribe: " + "<uri>,").
_MAX_UNSUBSCRIBE_URI = MAX_HEADER_LINE - len("List-Unsubscribe: ") - 1
# Characters a URI in List-Unsubscribe cannot carry (RFC 2369: angle brackets delimit, commas separate).
_URI_FORBIDDEN = re.compile(r"[\s<>,\x00-\x1f\x7f]")

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|\s*([^{}]*?)\s*)?\}\}")


def render(template: str, fields: Mapping[str, str]) -> str:
    """Replace `{{ name }}` / `{{ name | fallback }}`; single pass, no evaluation."""

    def replace(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        value = fields.get(name)
        if value:
            return value
        if fallback is not None:
            return fallback
        if value is not None:
            return value  # present but empty, and no fallback
        raise TemplateFieldMissing(f"template field {name!r} has no value")

    return _PLACEHOLDER.sub(replace, template)


def check_header(name: str, value: str) -> str:
    """Refuse control characters (CR, LF, NUL, TAB, DEL, C1) and Unicode line/paragraph separators."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise HeaderInjectionRefused(f"{name} header contains the control character {char!r}")
    return value


def _address(name: str, value: str) -> Address:
    """One mailbox, `addr@domain` or `Display Name <addr@domain>`, after the injection check."""
    check_header(name, value)
    parsed = getaddresses([value])
    if len(parsed) != 1:
        raise InvalidAddress(f"{name}: {value!r} is not a single email address", name)
    display, addr_spec = parsed[0]
    if not addr_spec or addr_spec.count("@") != 1:
        raise InvalidAddress(f"{name}: {value!r} is not a single email address", name)
    try:
        address = Address(display_name=display, addr_spec=addr_spec)
    except (ValueError, IndexError) as exc:
        raise InvalidAddress(f"{name}: {value!r}: {exc}", name) from exc
    if not address.username or not address.domain or not addr_spec.isascii():
        raise InvalidAddress(f"{name}: {value!r} is not an ASCII addr-spec", name)
    return address


def message_id_header(enrollment_id: str, step_index: int, attempt: int, domain: str) -> str:
    """`<es-...@domain>`: the same (enrollment, step, attempt) always gets the same Message-ID."""
    return f"<{ids.message_id(enrollment_id, step_index, attempt)}@{domain}>"


@dataclass(frozen=True)
class SenderIdentity:
    """Who a campaign sends as, and where its unsubscribe links point."""

    from_address: str  # "Acme Recruiting <jobs@acme.example>"
    signing_key: bytes  # for unsubscribe tokens; rotate with `verify_unsubscribe_token(keys=...)`
    reply_to: str | None = None
    # One-click endpoint: the token is appended as a path segment, e.g. https://u.acme.example/u/<token>
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None  # e.g. unsubscribe@acme.example; token in the subject
    message_id_domain: str | None = None  # defaults to the From domain
    # Open tracking: the pixel's base URL (the token and ".gif" are appended, e.g.
    # https://t.acme.example/o/<token>.gif), signed with `signing_key`. None: no pixel in any message.
    open_tracking_url: str | None = None

    def __post_init__(self) -> None:
        if self.open_tracking_url is not None and (
            not self.open_tracking_url.startswith(("https://", "http://"))
            or _URI_FORBIDDEN.search(self.open_tracking_url)
            or any(c in self.open_tracking_url for c in "\"'&")
        ):
            raise ValueError(f"open_tracking_url {self.open_tracking_url!r} is not a plain http(s) URL")
        _address("From", self.from_address)
        if self.reply_to is not None:
            _address("Reply-To", self.reply_to)
        if self.unsubscribe_url is not None and not self.unsubscribe_url.startswith("https://"):
            raise ValueError("the one-click unsubscribe URL must be https (RFC 8058)")
        uris = {"unsubscribe_url": self.unsubscribe_url, "unsubscribe_mailto": self.unsubscribe_mailto}
        for name, uri in uris.items():
            if uri is not None and (not uri or _URI_FORBIDDEN.search(uri)):
                raise ValueError(f"{name} {uri!r} is empty or has whitespace, control characters, <, > or ,")
        if self.unsubscribe_url is None and self.unsubscribe_mailto is None:
            raise ValueError("a bulk sender needs an unsubscribe URL or mailto")

    # Parsed once per identity, not once per message (parsing an address costs more than a send).
    @cached_property
    def from_mailbox(self) -> Address:
        return _address("From", self.from_address)

    @cached_property
    def reply_to_mailbox(self) -> Address | None:
        return None if self.reply_to is None else _address("Reply-To", self.reply_to)

    @cached_property
    def domain(self) -> str:
        return self.message_id_domain or self.from_mailbox.domain


@dataclass(frozen=True)
class MessageRef:
    """What identifies one attempt's message."""

    account_id: str
    contact_id: str
    enrollment_id: str
    step_index: int
    attempt: int


def list_unsubscribe(sender: SenderIdentity, claims: UnsubscribeClaims) -> str:
    token = sign_unsubscribe_token(claims, sender.signing_key)
    uris = []
    if sender.unsubscribe_url is not None:
        uris.append(f"<{sender.unsubscribe_url.rstrip('/')}/{token}>")
    if sender.unsubscribe_mailto is not None:
        uris.append(f"<mailto:{sender.unsubscribe_mailto}?subject={quote('unsubscribe ' + token)}>")
    for uri in uris:
        if len(uri) > _MAX_UNSUBSCRIBE_URI:  # would be folded into encoded-words: refuse, do not mangle
            raise ValueError(f"a List-Unsubscribe URI of {len(uri)} characters does not fit a header line")
    return check_header("List-Unsubscribe", ", ".join(uris))


def build_message(
    *,
    sender: SenderIdentity,
    ref: MessageRef,
    to: str,
    subject_template: str,
    body_template: str,
    fields: Mapping[str, str],
    date: datetime,
    track_opens: bool = False,
) -> EmailMessage:
    """The step's message: text only, or, with `track_opens` and a sender with an open-tracking URL,
    text plus an HTML alternative carrying the signed pixel. Raises HeaderInjectionRefused,
    TemplateFieldMissing or InvalidAddress; the dispatcher reports those as an `error` outcome (our
    side is wrong; resending won't help)."""
    recipient = _address("To", to)
    subject = check_header("Subject", render(subject_template, fields))
    body = render(body_template, fields)

    msg = EmailMessage()
    msg["From"] = sender.from_mailbox
    msg["To"] = recipient
    if sender.reply_to_mailbox is not None:
        msg["Reply-To"] = sender.reply_to_mailbox
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id_header(ref.enrollment_id, ref.step_index, ref.attempt, sender.domain)
    claims = UnsubscribeClaims(ref.account_id, ref.contact_id, ref.enrollment_id)
    msg["List-Unsubscribe"] = list_unsubscribe(sender, claims)
    if sender.unsubscribe_url is not None:
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    cte = "7bit" if body.isascii() else "quoted-printable"
    msg.set_content(body, charset="utf-8", cte=cte)
    if track_opens and sender.open_tracking_url is not None:
        open_claims = OpenClaims(
            ref.account_id,
            ref.contact_id,
            ref.enrollment_id,
            ref.step_index,
            ref.attempt,
            int(date.timestamp()),
        )
        pixel = pixel_url(sender.open_tracking_url, open_claims, sender.signing_key)
        msg.add_alternative(
            _html_with_pixel(body, pixel), subtype="html", charset="utf-8", cte="quoted-printable"
        )
    return msg


def _html_with_pixel(text: str, pixel: str) -> str:
    """The text body as minimal HTML (escaped, line breaks kept) with the 1x1 tracking image last.
    Templates are plain text: a pixel needs an HTML part, so this one exists only for tracking."""
    paragraphs = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\n")
    return (
        '<!doctype html><html><head><meta charset="utf-8"></head><body>'
        f"<div>{paragraphs}</div>"
        f'<img src="{html.escape(pixel)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px">'
        "</body></html>\n"
    )


def contact_fields(name: str, email: str) -> dict[str, str]:
    """The template fields the domain knows about a contact: name, first_name, last_name, email."""
    first, _, last = name.strip().partition(" ")
    return {"name": name.strip(), "first_name": first, "last_name": last.strip(), "email": email}


def build_step_message(
    *,
    sender: SenderIdentity,
    account_id: str,
    contact_id: str,
    enrollment_id: str,
    step: StepDispatchedData,
    date: datetime,
    extra_fields: Mapping[str, str] | None = None,
) -> EmailMessage:
    """The message for a StepDispatched event (email steps)."""
    if step.message_id != ids.message_id(enrollment_id, step.step_index, step.attempt):
        raise ValueError(f"StepDispatched message id {step.message_id} is not this attempt's")
    fields = {**contact_fields(step.contact_name, step.to), **(extra_fields or {})}
    return build_message(
        sender=sender,
        ref=MessageRef(account_id, contact_id, enrollment_id, step.step_index, step.attempt),
        to=formataddr((step.contact_name, step.to)) if step.contact_name else step.to,
        subject_template=step.content.subject or "",
        body_template=step.content.body,
        fields=fields,
        date=date,
        track_opens=step.track_opens,
    )
