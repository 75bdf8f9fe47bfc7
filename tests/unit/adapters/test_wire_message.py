"""The dispatcher's wire builder (`build_wire_message`) against the `EmailMessage` builder: the same
bytes (but for the random MIME boundary), so the same message once parsed, for any contact, template
and sender identity; the same refusals."""

from __future__ import annotations

import email
import email.errors
import email.message
import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollstream.adapters.mail.message import (
    MAX_HEADER_LINE,
    WIRE_POLICY,
    HeaderInjectionRefused,
    InvalidAddress,
    MessageRef,
    SenderIdentity,
    WireMessage,
    build_message,
    build_step_wire_message,
    build_wire_message,
    recipient_header,
)
from enrollstream.domain import ids
from enrollstream.domain.campaign import Channel, StepContent
from enrollstream.domain.events import StepDispatchedData

KEY = b"k" * 32
IDENTITIES = [
    SenderIdentity(
        from_address="Acme Recruiting <jobs@acme.example>",
        signing_key=KEY,
        reply_to="replies@acme.example",
        unsubscribe_url="https://u.acme.example/unsubscribe",
        unsubscribe_mailto="unsubscribe@acme.example",
    ),
    SenderIdentity(
        from_address='"Équipe Søder, Jobs" <jobs@soder.example>',
        signing_key=KEY,
        unsubscribe_mailto="u@soder.example",
        message_id_domain="mail.soder.example",
        open_tracking_url="https://t.soder.example/o",
    ),
    SenderIdentity(
        from_address="jobs@plain.example",
        signing_key=KEY,
        reply_to="Replies Desk <r@plain.example>",
        unsubscribe_url="https://u.plain.example/u?a=?b",
        open_tracking_url="https://t.plain.example/o",
    ),
    SenderIdentity(
        from_address="A " + "very long display name " * 50 + "<x@long.example>",
        signing_key=KEY,
        unsubscribe_url="https://u.long.example/u",
        message_id_domain="[127.0.0.1]",
    ),
]

# Text that hits the interesting cases often: plain words, specials, encoded-word look-alikes,
# non-ASCII, control characters, long runs, line breaks of every kind.
_ALPHABET = st.sampled_from(
    [*"abcXYZ019 ._-'\"(),:;<>@[]\\=?{}|\t\r\n\x0b\x85\u2028éß漢🙂", "=?utf-8?q?x?=", "  "]
)
text = st.lists(_ALPHABET, max_size=40).map("".join)
long_text = st.builds(
    lambda word, n: (word + " ") * n, st.sampled_from(["a", "x" * 90, "é" * 7]), st.integers(0, 200)
)
names = st.one_of(st.sampled_from(["", "Ada", "Ada Lovelace", "O'Brien-Smith"]), text)
addresses = st.one_of(
    st.sampled_from(["ada@example.org", "a.b+c@mail.example.co.uk", "x_y@d-1.example"]),
    st.builds(lambda local, domain: f"{local}@{domain}", text, text),
    text,
)
templates = st.one_of(
    st.sampled_from(["Hi {{ first_name }}", "{{ name | there }}: news", "Hello {{ missing }}", ""]),
    text,
    long_text,
)
dates = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))]),
)


def _boundaryless(content: bytes) -> bytes:
    return re.sub(rb"={15}\d{19}==", b"BOUNDARY", content)


def _parsed(content: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def _view(message: email.message.EmailMessage) -> list[object]:
    """What a reader of the message sees: every header (decoded), every part's type and content."""
    seen: list[object] = [(name, str(value)) for name, value in message.items() if name != "Content-Type"]
    for part in message.walk():
        seen.append(part.get_content_type())
        seen.append(part.get_param("charset"))
        if not part.is_multipart():
            seen.append(part.get_content())
    return seen


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    identity=st.sampled_from(IDENTITIES),
    to_name=names,
    to_addr=addresses,
    subject=templates,
    body=templates,
    name_field=text,
    date=dates,
    track_opens=st.booleans(),
)
def test_the_wire_bytes_are_the_email_message_builders_and_parse_to_the_same_message(
    identity: SenderIdentity,
    to_name: str,
    to_addr: str,
    subject: str,
    body: str,
    name_field: str,
    date: datetime,
    track_opens: bool,
) -> None:
    ref = MessageRef("acct-1", "contact-7", "enr-42", step_index=1, attempt=2)
    common = {
        "sender": identity,
        "ref": ref,
        "subject_template": subject,
        "body_template": body,
        "fields": {"first_name": name_field, "name": name_field},
        "date": date,
        "track_opens": track_opens,
    }
    try:
        old_to = recipient_header(to_name, to_addr)  # as build_step_message
        old = build_message(to=old_to, **common)  # type: ignore[arg-type]
    except ValueError as refused:
        with pytest.raises(type(refused)):
            build_wire_message(to_name=to_name, to_addr=to_addr, **common)  # type: ignore[arg-type]
        return
    new = build_wire_message(to_name=to_name, to_addr=to_addr, **common)  # type: ignore[arg-type]
    old_bytes = old.as_bytes(policy=WIRE_POLICY)

    assert _boundaryless(new.content) == _boundaryless(old_bytes)
    assert _view(_parsed(new.content)) == _view(_parsed(old_bytes))
    assert new.message_id == str(old["Message-ID"])
    assert new.to_address == email.utils.getaddresses([str(old["To"])])[0][1]
    assert new.from_address == email.utils.getaddresses([str(old["From"])])[0][1]
    assert new.content.isascii()  # 7-bit clean: no SMTPUTF8 or 8BITMIME needed
    assert new.content.endswith(b"\r\n") and b"\n" not in new.content.replace(b"\r\n", b"")


def _common() -> dict[str, object]:
    return {
        "sender": IDENTITIES[0],
        "ref": MessageRef("acct-1", "contact-7", "enr-42", step_index=1, attempt=2),
        "subject_template": "Hi",
        "body_template": "Hello",
        "fields": {},
        "date": datetime(2026, 12, 3, tzinfo=UTC),
        "track_opens": False,
    }


@pytest.mark.parametrize("name", [".  é", ')é  "', "Ada Lovelace", "Zoë O'Brien"])
def test_the_to_line_reads_back_as_the_recipient_whatever_the_name(name: str) -> None:
    """The standard library folds a few display names (found by the property above) into a To line its
    own parser fails on: those go to the bare address; every other name is kept."""
    for content in (
        build_message(to=recipient_header(name, "ada@example.org"), **_common()).as_bytes(  # type: ignore[arg-type]
            policy=WIRE_POLICY
        ),
        build_wire_message(to_name=name, to_addr="ada@example.org", **_common()).content,  # type: ignore[arg-type]
    ):
        to = _parsed(content)["To"]
        assert [a.addr_spec for a in to.addresses] == ["ada@example.org"]
        kept = to.addresses[0].display_name
        assert kept == (name if name in ("Ada Lovelace", "Zoë O'Brien") else "")


def test_a_typical_step_message_goes_out_as_plain_header_lines_with_the_unsubscribe_uris_intact() -> None:
    enrollment = "enr-1"
    step = StepDispatchedData(
        step_index=0,
        attempt=1,
        step_count=1,
        message_id=ids.message_id(enrollment, 0, 1),
        channel=Channel.EMAIL,
        to="ada@example.org",
        content=StepContent(subject="Hello {{ first_name }}", body="Hi {{ first_name }},\nwelcome.\n"),
        contact_name="Ada Lovelace",
    )
    wire = build_step_wire_message(
        sender=IDENTITIES[0],
        account_id="acct-1",
        contact_id="contact-7",
        enrollment_id=enrollment,
        step=step,
        date=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    )
    assert isinstance(wire, WireMessage)
    head, _, body = wire.content.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[:4] == [
        b"From: Acme Recruiting <jobs@acme.example>",
        b"To: Ada Lovelace <ada@example.org>",
        b"Reply-To: replies@acme.example",
        b"Subject: Hello Ada",
    ]
    unsubscribe = next(line for line in lines if line.startswith(b"List-Unsubscribe: "))
    assert unsubscribe.startswith(b"List-Unsubscribe: <https://u.acme.example/unsubscribe/")
    assert b"=?" not in unsubscribe and len(unsubscribe) <= MAX_HEADER_LINE
    assert body == b"Hi Ada,\r\nwelcome.\r\n"
    assert (wire.from_address, wire.to_address) == ("jobs@acme.example", "ada@example.org")
    assert wire.message_id == f"<{step.message_id}@acme.example>"


def test_an_ascii_body_with_a_line_longer_than_998_characters_goes_quoted_printable() -> None:
    """RFC 5322 2.1.1: no line over 998 characters. 7bit would send the line as it is."""
    body = "x" * 1200 + "\nshort line\n"
    old = build_message(
        sender=IDENTITIES[0],
        ref=MessageRef("a", "c", "e", 0, 1),
        to="ada@example.org",
        subject_template="s",
        body_template=body,
        fields={},
        date=datetime(2026, 12, 1, tzinfo=UTC),
    )
    content = old.as_bytes(policy=WIRE_POLICY)
    assert old["Content-Transfer-Encoding"] == "quoted-printable"
    assert max(len(line) for line in content.partition(b"\r\n\r\n")[2].split(b"\r\n")) <= 78
    assert _parsed(content).get_content().replace("\r\n", "\n") == body


@pytest.mark.parametrize("to", ["@a", "Ada <@example.org>"])
def test_an_address_the_header_parser_cannot_read_is_an_invalid_recipient(to: str) -> None:
    with pytest.raises(InvalidAddress) as refused:
        build_message(
            sender=IDENTITIES[0],
            ref=MessageRef("a", "c", "e", 0, 1),
            to=to,
            subject_template="s",
            body_template="b",
            fields={},
            date=datetime(2026, 12, 1, tzinfo=UTC),
        )
    assert refused.value.header == "To"


def test_control_characters_in_a_non_ascii_contact_name_are_refused_not_encoded() -> None:
    """formataddr would put "Zoë\\r\\n" in an encoded-word, past the header check."""
    with pytest.raises(HeaderInjectionRefused):
        recipient_header("Zoë\r\nBcc: x@evil.example", "zoe@example.org")
