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
import random
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from email import quoprimime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
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
    if value.isascii() and value.isprintable():  # the usual case: no control character in it
        return value
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
    except (ValueError, IndexError, HeaderParseError) as exc:  # "@a": no local part to parse
        raise InvalidAddress(f"{name}: {value!r}: {exc}", name) from exc
    if not address.username or not address.domain or not addr_spec.isascii():
        raise InvalidAddress(f"{name}: {value!r} is not an ASCII addr-spec", name)
    return address


def message_id_header(enrollment_id: str, step_index: int, attempt: int, domain: str) -> str:
    """`<es-...@domain>`: the same (enrollment, step, attempt) always gets the same Message-ID."""
    return f"<{ids.message_id(enrollment_id, step_index, attempt)}@{domain}>"


# An account id that can stand as the tag of a reply address (reply+<account>@domain): the inbound
# receiver reads the account back from it (adapters/mail/inbound_message.py).
ACCOUNT_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ACCOUNT_PLACEHOLDER = "{account}"
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1


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

    def for_account(self, account_id: str) -> SenderIdentity:
        """This identity as one account sends: a Reply-To with `{account}` names the account (e.g.
        `reply+{account}@reply.acme.example`), so a reply tells the inbound receiver whose it is. An
        account id that cannot be such a tag gets no Reply-To (replies go to From, as without one)."""
        if self.reply_to is None or ACCOUNT_PLACEHOLDER not in self.reply_to:
            return self
        tagged = self.reply_to.replace(ACCOUNT_PLACEHOLDER, account_id)
        local = _address("Reply-To", tagged).username if ACCOUNT_TAG.match(account_id) else ""
        return replace(self, reply_to=tagged if 0 < len(local) <= MAX_LOCAL_PART else None)

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
    msg.set_content(body, charset="utf-8", cte=body_cte(body))
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


def body_cte(body: str) -> str:
    """7bit for ASCII text whose lines fit RFC 5322's 998 characters; quoted-printable otherwise
    (non-ASCII text without 8BITMIME, or a line too long to go out as it is)."""
    if body.isascii() and all(len(line) <= MAX_HEADER_LINE for line in body.encode().splitlines()):
        return "7bit"
    return "quoted-printable"


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


def recipient_header(name: str, address: str) -> str:
    """`Name <address>` (or the bare address) for a contact. The name is checked before `formataddr`
    would hide control characters of a non-ASCII name in an encoded-word. A name the To line would not
    read back with is left out (`_readable_recipient`)."""
    check_header("To", name)
    if not name:
        return address
    value = formataddr((name, address))
    if _SIMPLE_NAME.fullmatch(name):
        return value
    recipient = _address("To", value)
    return value if _reads_back(_folded("To", recipient), recipient.addr_spec) else address


def _reads_back(line: bytes, addr_spec: str) -> bool:
    """Whether a standard parser reads this folded To line as exactly one mailbox, `addr_spec`. The
    standard library folds a few display names (e.g. '.  é', ')é  "') into a phrase that its own parser
    then fails on (IndexError, AttributeError deep inside it), and a receiving program may too: such a
    name is left out and the message goes to the bare address."""
    try:
        header = _HEADER_PARSER.parsebytes(line + _CRLF, headersonly=True)["To"]
        return [a.addr_spec for a in header.addresses] == [addr_spec]
    except Exception:  # whatever the parser raises: not readable
        return False


def _step_ref_and_fields(
    account_id: str,
    contact_id: str,
    enrollment_id: str,
    step: StepDispatchedData,
    extra_fields: Mapping[str, str] | None,
) -> tuple[MessageRef, dict[str, str]]:
    """What both step builders start from: the attempt's reference (its message id checked) and the
    template fields."""
    if step.message_id != ids.message_id(enrollment_id, step.step_index, step.attempt):
        raise ValueError(f"StepDispatched message id {step.message_id} is not this attempt's")
    ref = MessageRef(account_id, contact_id, enrollment_id, step.step_index, step.attempt)
    return ref, {**contact_fields(step.contact_name, step.to), **(extra_fields or {})}


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
    ref, fields = _step_ref_and_fields(account_id, contact_id, enrollment_id, step, extra_fields)
    return build_message(
        sender=sender,
        ref=ref,
        to=recipient_header(step.contact_name, step.to),
        subject_template=step.content.subject or "",
        body_template=step.content.body,
        fields=fields,
        date=date,
        track_opens=step.track_opens,
    )


# --- the wire builder -------------------------------------------------------------------------------
#
# `build_message` goes through `EmailMessage`: every header set is parsed into the header registry's
# objects and folded again by the generator, which made building a message cost more than sending it
# (docs/benchmarks.md, "Dispatcher (issue 15)"). The dispatcher builds the same bytes directly:
# headers whose values are plain ASCII of a shape the registry gives back unchanged (a simple display
# name and address, a Subject of printable ASCII without encoded-word look-alikes, the Date, our
# Message-ID, the List-Unsubscribe URIs) are written as "Name: value"; any other value is parsed and
# folded by the standard library exactly as `build_message` does (one header at a time, not a whole
# message). The From / Reply-To lines are folded once per identity. The body is encoded as
# `set_content` encodes it. tests/unit/adapters/test_wire_message.py proves, by property, that the
# bytes parse to what `build_message` gives.

_SIMPLE_NAME = re.compile(r"[A-Za-z0-9'_-]+(?: [A-Za-z0-9'_-]+)*")
_SIMPLE_ADDR = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_SIMPLE_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_CRLF = b"\r\n"
_HEADER_PARSER = BytesParser(policy=email.policy.default)
_BODY_LINE = 78  # email.policy.default.max_line_length, what set_content wraps quoted-printable at


@dataclass(frozen=True)
class WireMessage:
    """One message as it goes on the wire: RFC 5322 bytes with CRLF line ends, and what the SMTP
    envelope and the ledger need from its headers."""

    from_address: str  # the From addr-spec (the default envelope sender)
    to_address: str  # the one recipient's addr-spec
    message_id: str  # the Message-ID header's value, "<...>"
    content: bytes


def _folded(name: str, value: object) -> bytes:
    """One header line (folded, CRLF-terminated), the way `EmailMessage` + `WIRE_POLICY` write it."""
    return WIRE_POLICY.fold_binary(name, WIRE_POLICY.header_factory(name, value))


def _plain(name: str, value: str) -> bytes | None:
    """`name: value` when the registry would write the value back unchanged on one line, else None."""
    line = f"{name}: {value}"
    if len(line) > MAX_HEADER_LINE or "=?" in value or not _SIMPLE_TEXT.fullmatch(value):
        return None
    return line.encode("ascii") + _CRLF


class _IdentityLines:
    """A sender identity's header lines, folded once (they do not change per contact)."""

    def __init__(self, sender: SenderIdentity) -> None:
        self.from_line = _folded("From", sender.from_mailbox)
        reply_to = sender.reply_to_mailbox
        self.reply_to_line = b"" if reply_to is None else _folded("Reply-To", reply_to)
        self.from_address = sender.from_mailbox.addr_spec
        self.post = (
            _folded("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
            if sender.unsubscribe_url is not None
            else b""
        )
        self.simple_domain = bool(_SIMPLE_ADDR.fullmatch(f"x@{sender.domain}"))


_IDENTITY_LINES: dict[SenderIdentity, _IdentityLines] = {}


def _identity_lines(sender: SenderIdentity) -> _IdentityLines:
    lines = _IDENTITY_LINES.get(sender)
    if lines is None:
        if len(_IDENTITY_LINES) >= 4096:  # one per account when the Reply-To names it; bounded anyway
            _IDENTITY_LINES.clear()
        lines = _IDENTITY_LINES[sender] = _IdentityLines(sender)
    return lines


def _to_line(to_name: str, to_addr: str) -> tuple[bytes, str]:
    """The To line and the recipient's addr-spec; InvalidAddress / HeaderInjectionRefused as
    `build_message` raises them."""
    if _SIMPLE_ADDR.fullmatch(to_addr) and (not to_name or _SIMPLE_NAME.fullmatch(to_name)):
        value = f"{to_name} <{to_addr}>" if to_name else to_addr
        if len(value) + len("To: ") <= MAX_HEADER_LINE:
            return f"To: {value}".encode("ascii") + _CRLF, to_addr
    recipient = _address("To", formataddr((to_name, to_addr)) if to_name else to_addr)
    line = _folded("To", recipient)
    if to_name and not _reads_back(line, recipient.addr_spec):
        recipient = _address("To", to_addr)  # as recipient_header: the name left out
        line = _folded("To", recipient)
    return line, recipient.addr_spec


def _text_part(body: str, subtype: str, cte: str) -> tuple[bytes, bytes]:
    """A text part's Content-Type and Content-Transfer-Encoding lines, and its body, as
    `set_content(body, subtype=..., charset="utf-8", cte=cte)` and the generator write them."""
    data = b"\n".join(body.encode("utf-8").splitlines()) + b"\n"
    if cte != "7bit":  # set_content encodes with the message's policy: email.policy.default, 78 columns
        data = quoprimime.body_encode(data.decode("latin-1"), _BODY_LINE).encode("ascii")
    headers = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n'
    return headers.encode("ascii"), data.replace(b"\n", _CRLF)  # only \n ends a line here


def build_wire_message(
    *,
    sender: SenderIdentity,
    ref: MessageRef,
    to_name: str,
    to_addr: str,
    subject_template: str,
    body_template: str,
    fields: Mapping[str, str],
    date: datetime,
    track_opens: bool = False,
) -> WireMessage:
    """`build_message` (with To = `to_name <to_addr>`), as bytes; the same refusals."""
    identity = _identity_lines(sender)
    check_header("To", to_name)
    to_line, to_address = _to_line(to_name, to_addr)
    subject = check_header("Subject", render(subject_template, fields))
    body = render(body_template, fields)
    message_id = message_id_header(ref.enrollment_id, ref.step_index, ref.attempt, sender.domain)
    claims = UnsubscribeClaims(ref.account_id, ref.contact_id, ref.enrollment_id)
    unsubscribe = list_unsubscribe(sender, claims)
    head = [
        identity.from_line,
        to_line,
        identity.reply_to_line,
        _plain("Subject", subject) or _folded("Subject", subject),
        f"Date: {format_datetime(date)}\r\n".encode("ascii"),
        (_plain("Message-ID", message_id) if identity.simple_domain else None)
        or _folded("Message-ID", message_id),
        _plain("List-Unsubscribe", unsubscribe) or _folded("List-Unsubscribe", unsubscribe),
        identity.post,
    ]
    text_headers, text_body = _text_part(body, "plain", body_cte(body))
    if not (track_opens and sender.open_tracking_url is not None):
        content = b"".join([*head, text_headers, b"MIME-Version: 1.0\r\n\r\n", text_body])
        return WireMessage(identity.from_address, to_address, message_id, content)
    open_claims = OpenClaims(
        ref.account_id, ref.contact_id, ref.enrollment_id, ref.step_index, ref.attempt, int(date.timestamp())
    )
    pixel = pixel_url(sender.open_tracking_url, open_claims, sender.signing_key)
    html_headers, html_body = _text_part(_html_with_pixel(body, pixel), "html", "quoted-printable")
    parts = [text_headers + _CRLF + text_body, html_headers + b"MIME-Version: 1.0\r\n\r\n" + html_body]
    boundary = _boundary(parts)
    delimiter = b"--" + boundary
    content = b"".join(
        [
            *head,
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="' + boundary + b'"\r\n',
            _CRLF,
            delimiter + _CRLF,
            parts[0],
            _CRLF + delimiter + _CRLF,
            parts[1],
            _CRLF + delimiter + b"--" + _CRLF,
        ]
    )
    return WireMessage(identity.from_address, to_address, message_id, content)


def _boundary(parts: list[bytes]) -> bytes:
    """A boundary of the standard library's form that no part contains (RFC 2046 5.1.1)."""
    while True:
        boundary = b"===============%019d==" % random.randrange(sys.maxsize)
        if not any(boundary in part for part in parts):
            return boundary


def build_step_wire_message(
    *,
    sender: SenderIdentity,
    account_id: str,
    contact_id: str,
    enrollment_id: str,
    step: StepDispatchedData,
    date: datetime,
    extra_fields: Mapping[str, str] | None = None,
) -> WireMessage:
    """`build_step_message`, as bytes (what the dispatcher sends)."""
    ref, fields = _step_ref_and_fields(account_id, contact_id, enrollment_id, step, extra_fields)
    return build_wire_message(
        sender=sender,
        ref=ref,
        to_name=step.contact_name,
        to_addr=step.to,
        subject_template=step.content.subject or "",
        body_template=step.content.body,
        fields=fields,
        date=date,
        track_opens=step.track_opens,
    )
