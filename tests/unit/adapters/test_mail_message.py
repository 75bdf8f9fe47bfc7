"""Building a step's email: templates, header injection, Message-ID, one-click unsubscribe."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest

from enrollstream.adapters.mail.message import (
    WIRE_POLICY,
    HeaderInjectionRefused,
    InvalidAddress,
    MessageRef,
    SenderIdentity,
    TemplateFieldMissing,
    build_message,
    build_step_message,
    message_id_header,
    render,
)
from enrollstream.adapters.mail.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeClaims,
    opt_out_command,
    sign_unsubscribe_token,
    verify_unsubscribe_token,
)
from enrollstream.domain import ids
from enrollstream.domain.campaign import Channel, StepContent
from enrollstream.domain.events import StepDispatchedData

KEY = b"k" * 32
OLD_KEY = b"o" * 32
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SENDER = SenderIdentity(
    from_address="Acme Recruiting <jobs@acme.example>",
    signing_key=KEY,
    reply_to="replies@acme.example",
    unsubscribe_url="https://u.acme.example/unsubscribe",
    unsubscribe_mailto="unsubscribe@acme.example",
)
REF = MessageRef("acct-1", "contact-7", "enr-42", step_index=1, attempt=2)


def build(**overrides: object) -> email.message.EmailMessage:
    args: dict[str, object] = {
        "sender": SENDER,
        "ref": REF,
        "to": "ada@example.org",
        "subject_template": "Hi {{ first_name }}",
        "body_template": "Hello {{first_name|there}},\nthe role at {{ company }} is open.",
        "fields": {"first_name": "Ada", "company": "Acme"},
        "date": NOW,
    }
    args.update(overrides)
    return build_message(**args)  # type: ignore[arg-type]


def roundtrip(msg: email.message.EmailMessage) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(policy=WIRE_POLICY), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


# --- Templates --------------------------------------------------------------------------------------


def test_placeholders_are_replaced_with_fields_and_fallbacks() -> None:
    assert render("Hi {{ first_name | there }}!", {}) == "Hi there!"
    assert render("Hi {{first_name|there}}!", {"first_name": "Ada"}) == "Hi Ada!"
    assert render("{{ a }}{{b}}", {"a": "1", "b": "2"}) == "12"
    assert render("Hi {{ first_name }}", {"first_name": ""}) == "Hi "


def test_a_missing_field_without_fallback_is_refused() -> None:
    with pytest.raises(TemplateFieldMissing, match="company"):
        render("at {{ company }}", {})


def test_rendering_evaluates_nothing_and_does_not_expand_values_again() -> None:
    fields = {"name": "{{ secret }}", "secret": "s3cr3t"}
    assert render("{{ name }}", fields) == "{{ secret }}"
    # Attribute access, indexing, expressions and format specs are not placeholders: left as text.
    for template in ("{{ name.__class__ }}", "{{ 1 + 1 }}", "{name}", "${name}", "{{ name[0] }}"):
        assert render(template, fields) == template


# --- Header injection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["Hi\r\nBcc: victim@example.org", "Hi\nX: y", "Hi\r", "a\x00b", "a\u2028b", "a\x85b"]
)
def test_control_characters_in_the_subject_are_refused_even_when_they_come_from_a_field(bad: str) -> None:
    with pytest.raises(HeaderInjectionRefused):
        build(subject_template=bad)
    with pytest.raises(HeaderInjectionRefused):
        build(subject_template="Hi {{ first_name }}", fields={"first_name": bad, "company": "x"})


@pytest.mark.parametrize("field", ["to", "from", "reply_to"])
def test_control_characters_in_addresses_are_refused(field: str) -> None:
    bad = "ada@example.org\r\nBcc: victim@example.org"
    with pytest.raises(HeaderInjectionRefused):
        if field == "to":
            build(to=bad)
        elif field == "from":
            SenderIdentity(from_address=bad, signing_key=KEY, unsubscribe_url="https://u.example/x")
        else:
            SenderIdentity(
                from_address="a@b.example",
                reply_to=bad,
                signing_key=KEY,
                unsubscribe_url="https://u.example/x",
            )


def test_a_malformed_recipient_is_refused() -> None:
    for bad in ("not-an-address", "a@b@c", "ada@example.org, eve@example.org", ""):
        with pytest.raises(InvalidAddress):
            build(to=bad)


def test_the_body_may_span_lines() -> None:
    assert "the role at Acme is open." in roundtrip(build()).get_content()


# --- Headers ----------------------------------------------------------------------------------------


def test_the_message_carries_a_deterministic_message_id_and_one_click_unsubscribe() -> None:
    msg = roundtrip(build())
    local = ids.message_id("enr-42", 1, 2)
    assert msg["Message-ID"] == f"<{local}@acme.example>" == message_id_header("enr-42", 1, 2, "acme.example")
    assert roundtrip(build())["Message-ID"] == msg["Message-ID"]  # same attempt, same id
    assert build(ref=MessageRef("acct-1", "contact-7", "enr-42", 1, 3))["Message-ID"] != msg["Message-ID"]
    assert msg["From"] == "Acme Recruiting <jobs@acme.example>"
    assert msg["To"] == "ada@example.org"
    assert msg["Reply-To"] == "replies@acme.example"
    assert msg["Subject"] == "Hi Ada"
    assert msg["Date"] == "Mon, 02 Mar 2026 09:30:00 +0000"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    https, mailto = (uri.strip().strip("<>") for uri in str(msg["List-Unsubscribe"]).split(","))
    assert https.startswith("https://u.acme.example/unsubscribe/")
    claims = verify_unsubscribe_token(https.rsplit("/", 1)[1], [KEY])
    assert claims == UnsubscribeClaims("acct-1", "contact-7", "enr-42")
    assert mailto.startswith("mailto:unsubscribe@acme.example?subject=")
    subject = unquote(mailto.split("subject=", 1)[1])
    assert verify_unsubscribe_token(subject.removeprefix("unsubscribe "), [KEY]) == claims


def test_without_an_https_endpoint_there_is_no_one_click_post_header() -> None:
    sender = SenderIdentity(
        from_address="jobs@acme.example", signing_key=KEY, unsubscribe_mailto="u@acme.example"
    )
    msg = build(sender=sender)
    assert msg["List-Unsubscribe-Post"] is None
    assert str(msg["List-Unsubscribe"]).startswith("<mailto:u@acme.example?subject=unsubscribe%20")
    with pytest.raises(ValueError, match="https"):
        SenderIdentity(
            from_address="jobs@acme.example", signing_key=KEY, unsubscribe_url="http://u.example/x"
        )


@pytest.mark.parametrize(
    "uri",
    [
        "https://u.example/a b",
        "https://u.example/<x>",
        "https://u.example/a,b",
        "https://u.example/\r\nBcc: x",
        "",
    ],
)
def test_an_unsubscribe_uri_that_cannot_be_delimited_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"unsubscribe_url|must be https"):
        SenderIdentity(from_address="jobs@acme.example", signing_key=KEY, unsubscribe_url=uri)
    with pytest.raises(ValueError, match="unsubscribe_mailto"):
        SenderIdentity(from_address="jobs@acme.example", signing_key=KEY, unsubscribe_mailto=uri)


def test_an_unsubscribe_uri_too_long_for_a_header_line_is_refused_not_encoded() -> None:
    with pytest.raises(ValueError, match="does not fit a header line"):
        build(ref=MessageRef("acct-1", "c" * 800, "enr-42", step_index=1, attempt=2))


def test_non_ascii_subjects_and_bodies_survive_the_wire() -> None:
    msg = roundtrip(build(fields={"first_name": "Zoë", "company": "Ünïcode GmbH"}))
    assert msg["Subject"] == "Hi Zoë"
    assert "Ünïcode GmbH" in msg.get_content()
    assert build(fields={"first_name": "Zoë", "company": "x"}).as_bytes(policy=WIRE_POLICY).isascii()


def test_a_step_dispatched_event_becomes_its_message() -> None:
    step = StepDispatchedData(
        step_index=0,
        attempt=1,
        step_count=3,
        message_id=ids.message_id("enr-9", 0, 1),
        channel=Channel.EMAIL,
        to="grace@example.org",
        content=StepContent(subject="Hello {{ first_name }}", body="Dear {{ name }}"),
        contact_name="Grace Hopper",
    )
    msg = build_step_message(
        sender=SENDER, account_id="a", contact_id="c", enrollment_id="enr-9", step=step, date=NOW
    )
    assert msg["Subject"] == "Hello Grace"
    assert msg["To"] == "Grace Hopper <grace@example.org>"
    assert msg["Message-ID"] == f"<{step.message_id}@acme.example>"
    assert msg.get_content().strip() == "Dear Grace Hopper"
    with pytest.raises(ValueError, match="not this attempt"):
        build_step_message(
            sender=SENDER, account_id="a", contact_id="c", enrollment_id="other", step=step, date=NOW
        )


# --- Unsubscribe tokens -----------------------------------------------------------------------------


def test_tokens_verify_with_any_current_key_and_refuse_tampering() -> None:
    claims = UnsubscribeClaims("acct-1", "contact-7", "enr-42")
    token = sign_unsubscribe_token(claims, OLD_KEY)
    assert verify_unsubscribe_token(token, [KEY, OLD_KEY]) == claims  # rotated key still verifies
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(token, [KEY])
    forged_payload = sign_unsubscribe_token(UnsubscribeClaims("acct-1", "contact-8", "enr-42"), KEY).split(
        "."
    )[0]
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(f"{forged_payload}.{token.split('.')[1]}", [OLD_KEY])
    for garbage in ("", ".", "abc", "a.b", "!!!.???", token + "x"):
        with pytest.raises(InvalidUnsubscribeToken):
            verify_unsubscribe_token(garbage, [KEY, OLD_KEY])


def test_a_verified_token_becomes_one_idempotent_opt_out_command() -> None:
    claims = UnsubscribeClaims("acct-1", "contact-7", "enr-42")
    first = opt_out_command(claims, NOW)
    again = opt_out_command(claims, NOW.replace(hour=11))
    assert first.command_id == again.command_id  # a second click is a duplicate, not a second opt-out
    assert first.account_id == "acct-1" and first.data.contact_id == "contact-7"
    assert first.data.channel == "email"


def test_a_reply_to_naming_the_account_is_filled_in_per_account_or_left_out() -> None:
    template = SenderIdentity(
        from_address="Acme <jobs@acme.example>",
        signing_key=b"k" * 32,
        reply_to="Acme replies <reply+{account}@reply.acme.example>",
        unsubscribe_url="https://u.acme.example/u",
    )
    assert template.for_account("Acme.EU-1").reply_to == "Acme replies <reply+Acme.EU-1@reply.acme.example>"
    # Not a tag the receiver can read back (a space, a leading dot), or a local part over 64: no Reply-To.
    for account in ("a b", ".acme", "x" * 60):
        assert template.for_account(account).reply_to is None
    fixed = SenderIdentity(
        from_address="jobs@acme.example", signing_key=b"k" * 32, reply_to="r@acme.example",
        unsubscribe_url="https://u.acme.example/u",
    )  # fmt: skip
    assert fixed.for_account("acme") is fixed
