"""Open tracking: signed per-message pixel tokens, the HTML part that carries the pixel, and which loads
are recognisably a machine's."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta

import pytest

from enrollstream.adapters.mail.message import WIRE_POLICY, MessageRef, SenderIdentity, build_message
from enrollstream.adapters.mail.open_tracking import (
    InvalidOpenToken,
    OpenClaims,
    machine_open,
    open_detected_command,
    sign_open_token,
    verify_open_token,
)
from enrollstream.adapters.mail.unsubscribe import UnsubscribeClaims, sign_unsubscribe_token
from enrollstream.domain import ids
from enrollstream.domain.commands import MachineOpen

KEY = b"k" * 32
OLD_KEY = b"o" * 32
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
CLAIMS = OpenClaims("acct-1", "contact-7", "enr-42", 1, 2, int(NOW.timestamp()))
SENDER = SenderIdentity(
    from_address="Acme Recruiting <jobs@acme.example>",
    signing_key=KEY,
    unsubscribe_url="https://u.acme.example/unsubscribe",
    open_tracking_url="https://t.acme.example/o/",
)
REF = MessageRef("acct-1", "contact-7", "enr-42", step_index=1, attempt=2)
PERSON = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"


def build(sender: SenderIdentity = SENDER, track_opens: bool = True) -> email.message.EmailMessage:
    return build_message(
        sender=sender,
        ref=REF,
        to="ada@example.org",
        subject_template="Hi",
        body_template="Hello <Ada> & co,\nsee you.",
        fields={},
        date=NOW,
        track_opens=track_opens,
    )


def pixel_src(message: email.message.EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    html = part.get_content()
    start = html.index('<img src="') + len('<img src="')
    return html[start : html.index('"', start)]


def test_a_token_names_one_message_and_verifies_with_any_current_key() -> None:
    assert verify_open_token(sign_open_token(CLAIMS, KEY), [KEY]) == CLAIMS
    assert verify_open_token(sign_open_token(CLAIMS, OLD_KEY), [KEY, OLD_KEY]) == CLAIMS  # rotation
    assert CLAIMS.message_id == ids.message_id("enr-42", 1, 2)


def test_forged_tampered_and_foreign_tokens_are_refused() -> None:
    good = sign_open_token(CLAIMS, KEY)
    payload, _, mac = good.partition(".")
    other = sign_open_token(OpenClaims("acct-1", "contact-8", "enr-42", 1, 2, 0), KEY).partition(".")[0]
    unsubscribe = sign_unsubscribe_token(UnsubscribeClaims("acct-1", "contact-7", "enr-42"), KEY)
    for bad in (
        f"{other}.{mac}",  # another contact's message under this signature
        sign_open_token(CLAIMS, b"x" * 32),  # not our key
        unsubscribe,  # an unsubscribe token is not a pixel token (own MAC label)
        payload,
        "not-a-token",
        good + "A" * 3000,
    ):
        with pytest.raises(InvalidOpenToken):
            verify_open_token(bad, [KEY])


def test_a_tracked_email_gets_an_html_alternative_with_the_signed_pixel() -> None:
    message = email.message_from_bytes(build().as_bytes(policy=WIRE_POLICY), policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    assert text is not None and text.get_content().replace("\r\n", "\n") == "Hello <Ada> & co,\nsee you.\n"
    html_part = message.get_body(("html",))
    assert html_part is not None
    assert "Hello &lt;Ada&gt; &amp; co,<br>" in html_part.get_content()  # escaped, line breaks kept
    src = pixel_src(message)  # type: ignore[arg-type]
    assert src.startswith("https://t.acme.example/o/") and src.endswith(".gif")
    token = src.removeprefix("https://t.acme.example/o/").removesuffix(".gif")
    assert verify_open_token(token, [KEY]) == CLAIMS


def test_no_pixel_when_the_campaign_does_not_track_or_no_pixel_url_is_configured() -> None:
    untracked = SenderIdentity(
        from_address="jobs@acme.example", signing_key=KEY, unsubscribe_url="https://u.acme.example/u"
    )
    for message in (build(track_opens=False), build(sender=untracked)):
        assert message.get_content_type() == "text/plain"
        assert "/o/" not in message.as_string()


@pytest.mark.parametrize("url", ["ftp://t.example/o", 'https://t.example/o"><script>', "https://t .example"])
def test_a_pixel_url_that_is_not_plain_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        SenderIdentity(
            from_address="jobs@acme.example",
            signing_key=KEY,
            unsubscribe_url="https://u.x/u",
            open_tracking_url=url,
        )


def test_machine_opens_are_recognised_when_they_can_be() -> None:
    later = NOW + timedelta(minutes=5)
    assert machine_open("Mozilla/5.0", CLAIMS, later) is MachineOpen.PRIVACY_PREFETCH
    assert machine_open("Barracuda Sentinel (EE)", CLAIMS, later) is MachineOpen.SCANNER
    assert machine_open("", CLAIMS, later) is MachineOpen.SCANNER
    assert machine_open(PERSON, CLAIMS, NOW + timedelta(seconds=3)) is MachineOpen.SOON_AFTER_SENDING
    assert machine_open(PERSON, CLAIMS, later) is None
    # Gmail's image proxy fetches when the person opens the message: an open, not flagged.
    gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    assert machine_open(gmail, CLAIMS, later) is None


def test_every_load_of_one_message_is_the_same_open_command() -> None:
    first = open_detected_command(CLAIMS, NOW, None)
    again = open_detected_command(CLAIMS, NOW + timedelta(hours=1), MachineOpen.SCANNER)
    assert first.command_id == again.command_id == f"open:acct-1/contact-7:{CLAIMS.message_id}"
    assert first.data.enrollment_id == "enr-42" and first.data.step_index == 1
    assert again.data.machine is MachineOpen.SCANNER
