"""Bounce webhooks, the pure part: who may call (secrets, rotation, signatures), what an SMTP2GO or generic
callback says, every value bounded, and the commands a notice becomes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from enrollstream.adapters.mail.bounce_webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    BounceNotice,
    CallbackRejected,
    InvalidWebhookSettings,
    MatchedMessage,
    NoticeKind,
    Reason,
    WebhookEndpoint,
    authenticate,
    body_signature,
    bounce_commands,
    parse_endpoints,
    parse_generic,
    parse_smtp2go,
)
from enrollstream.domain.commands import BounceDetected, BounceType, OptOut

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
NEW, OLD = b"new-secret-0123456789", b"old-secret-0123456789"
ENDPOINT = WebhookEndpoint("acme-smtp2go", "acme", "smtp2go", (NEW, OLD))
JSON = "application/json"
MESSAGE = MatchedMessage("acme", "ada", "enr-1", 0, "es-0123abcd")

# An SMTP2GO bounce as its live callbacks look (ISO time, `rcpt`, `bounce`, `context`, `host`), with the
# Message-Id header asked for in the webhook's "Email headers" setting.
SMTP2GO_HARD = {
    "email_id": "1vomg2-abc123",
    "event": "bounce",
    "time": "2026-03-02T09:29:00Z",
    "rcpt": "ada@example.org",
    "sender": "hello@acme.example",
    "bounce": "hard",
    "context": "RCPT TO:<ada@example.org>",
    "host": "mx.example.org [192.0.2.1]",
    "message": "550 5.1.1 no such user",
    "Message-Id": "<es-0123abcd@acme.example>",
}


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def rejected(reason: Reason) -> pytest.RaisesExc[CallbackRejected]:
    return pytest.raises(CallbackRejected, match=f"^{reason.value}:")


# --- settings ------------------------------------------------------------------------------------


def test_endpoints_are_named_bound_to_one_account_and_may_have_several_secrets() -> None:
    endpoints = parse_endpoints(
        json.dumps(
            [
                {"name": "acme-smtp2go", "account_id": "acme", "format": "smtp2go", "secrets": ["s" * 16]},
                {"name": "beta", "account_id": "beta", "format": "generic", "secrets": ["a" * 20, "b" * 20]},
            ]
        )
    )
    assert endpoints["acme-smtp2go"] == WebhookEndpoint("acme-smtp2go", "acme", "smtp2go", (b"s" * 16,))
    assert endpoints["beta"].secrets == (b"a" * 20, b"b" * 20)
    assert parse_endpoints("") == {}


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        '{"name": "x"}',
        '[{"name": "x", "account_id": "a", "format": "smtp2go", "secrets": ["short"]}]',
        '[{"name": "x", "account_id": "a", "format": "mailgun", "secrets": ["s' + "s" * 20 + '"]}]',
        '[{"name": "x/y", "account_id": "a", "format": "generic", "secrets": ["' + "s" * 20 + '"]}]',
        '[{"name": "x", "account_id": "a", "format": "generic", "secrets": []}]',
        '[{"name": "x", "account_id": "a", "format": "generic", "secrets": ["' + "s" * 20 + '"]},'
        ' {"name": "x", "account_id": "b", "format": "generic", "secrets": ["' + "t" * 20 + '"]}]',
    ],
)
def test_unusable_endpoint_settings_are_refused(value: str) -> None:
    with pytest.raises(InvalidWebhookSettings):
        parse_endpoints(value)


# --- who is calling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {NEW.decode()}",
        f"Bearer {OLD.decode()}",  # the previous secret, while it rotates out
        "Basic " + base64.b64encode(b"smtp2go:" + NEW).decode(),
        "basic " + base64.b64encode(b":" + OLD).decode(),
    ],
)
def test_any_secret_of_the_endpoint_authenticates(authorization: str) -> None:
    authenticate(ENDPOINT, {"Authorization": authorization}, b"{}", NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, Reason.UNAUTHORIZED),
        ({"Authorization": "Bearer new-secret-012345678"}, Reason.BAD_CREDENTIALS),  # a prefix
        ({"Authorization": "Bearer " + NEW.decode() + "x"}, Reason.BAD_CREDENTIALS),
        ({"Authorization": "Basic " + base64.b64encode(NEW).decode()}, Reason.BAD_CREDENTIALS),  # no ':'
        ({"Authorization": "Basic !!!"}, Reason.BAD_CREDENTIALS),
        ({"Authorization": "Token " + NEW.decode()}, Reason.BAD_CREDENTIALS),
        ({SIGNATURE_HEADER: "t=abc,v1=00"}, Reason.BAD_CREDENTIALS),
    ],
)
def test_missing_or_wrong_credentials_are_refused(headers: dict[str, str], reason: Reason) -> None:
    with rejected(reason):
        authenticate(ENDPOINT, headers, b"{}", NOW)


def test_a_signature_of_the_body_authenticates_within_its_time_tolerance() -> None:
    payload = b'{"event": "bounce"}'
    t = int(NOW.timestamp())
    for secret in (NEW, OLD):
        headers = {SIGNATURE_HEADER: f"t={t},v1={body_signature(secret, t, payload)}"}
        authenticate(ENDPOINT, headers, payload, NOW)
        with rejected(Reason.BAD_CREDENTIALS):  # the body changed
            authenticate(ENDPOINT, headers, payload + b" ", NOW)
    stale = t - 301
    with rejected(Reason.BAD_CREDENTIALS):  # replayed later
        headers = {SIGNATURE_HEADER: f"t={stale},v1={body_signature(NEW, stale, payload)}"}
        authenticate(ENDPOINT, headers, payload, NOW)
    with rejected(Reason.BAD_CREDENTIALS):  # someone else's secret
        headers = {SIGNATURE_HEADER: f"t={t},v1={body_signature(b'x' * 20, t, payload)}"}
        authenticate(ENDPOINT, headers, payload, NOW)


# --- SMTP2GO --------------------------------------------------------------------------------------


def test_an_smtp2go_hard_bounce_names_our_message_and_recipient() -> None:
    notice = parse_smtp2go(body(SMTP2GO_HARD), JSON)
    assert notice == BounceNotice(
        kind=NoticeKind.HARD_BOUNCE,
        event_id="1vomg2-abc123",
        message_id_header="<es-0123abcd@acme.example>",
        recipient="ada@example.org",
        occurred_at=datetime(2026, 3, 2, 9, 29, tzinfo=UTC),
        detail="550 5.1.1 no such user; RCPT TO:<ada@example.org>; host mx.example.org [192.0.2.1]",
    )


def test_smtp2go_soft_bounces_complaints_form_data_and_unix_times() -> None:
    soft = parse_smtp2go(body({**SMTP2GO_HARD, "bounce": "soft", "time": "1772443740"}), JSON)
    assert soft is not None and soft.kind is NoticeKind.SOFT_BOUNCE
    assert soft.occurred_at == datetime.fromtimestamp(1772443740, UTC)
    form = b"event=spam&rcpt=ada%40example.org&email_id=1vomg2-x&time=2026-03-02T09%3A29%3A00Z"
    spam = parse_smtp2go(form, "application/x-www-form-urlencoded")
    assert spam is not None and spam.kind is NoticeKind.COMPLAINT
    assert spam.recipient == "ada@example.org" and spam.message_id_header is None
    # The Message-Id header in a `headers` list of {name, value}, without angle brackets.
    listed = {k: v for k, v in SMTP2GO_HARD.items() if k != "Message-Id"}
    listed["headers"] = [{"name": "Message-ID", "value": "es-0123abcd@acme.example"}]
    parsed = parse_smtp2go(body(listed), JSON)
    assert parsed is not None and parsed.message_id_header == "<es-0123abcd@acme.example>"


@pytest.mark.parametrize("event", ["delivered", "processed", "open", "click", "unsubscribe", "reject"])
def test_smtp2go_events_that_are_not_bounces_are_ignored(event: str) -> None:
    assert parse_smtp2go(body({"event": event, "rcpt": "ada@example.org"}), JSON) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", Reason.MALFORMED),
        (b"[1, 2]", Reason.MALFORMED),
        (b"\xff\xfe", Reason.MALFORMED),
        (b"{}", Reason.UNKNOWN_EVENT),
        (body({"event": "exploded"}), Reason.UNKNOWN_EVENT),
        (body({**SMTP2GO_HARD, "bounce": "medium"}), Reason.UNKNOWN_EVENT),
        (body({**SMTP2GO_HARD, "rcpt": "a" * 2000}), Reason.INVALID_FIELD),
        (body({**SMTP2GO_HARD, "rcpt": {"nested": "object"}}), Reason.INVALID_FIELD),
        (body({**SMTP2GO_HARD, "Message-Id": "<a@b>\r\nBcc: x"}), Reason.INVALID_FIELD),
        (body({**SMTP2GO_HARD, "Message-Id": "<a@b> <c@d>"}), Reason.INVALID_FIELD),
        (body({**SMTP2GO_HARD, "time": "yesterday"}), Reason.BAD_TIMESTAMP),
        (body({**SMTP2GO_HARD, "time": "9999-12-31T23:59:59-01:00"}), Reason.BAD_TIMESTAMP),
        (body({**SMTP2GO_HARD, "time": "99999999999"}), Reason.BAD_TIMESTAMP),
        (body({**SMTP2GO_HARD, "pad": "x" * MAX_BODY_BYTES}), Reason.BODY_TOO_LARGE),
        (b"[" * 100_000 + b"]" * 100_000, Reason.BODY_TOO_LARGE),
    ],
)
def test_malformed_or_unbounded_smtp2go_callbacks_are_refused_with_a_reason(
    raw: bytes, reason: Reason
) -> None:
    with rejected(reason):
        parse_smtp2go(raw, JSON)


# --- generic ------------------------------------------------------------------------------------


def test_a_generic_callback_names_the_message_by_message_id_or_recipient() -> None:
    notice = parse_generic(
        body(
            {
                "event_id": "evt-1",
                "type": "soft_bounce",
                "message_id": "es-0123abcd@acme.example",
                "occurred_at": "2026-03-02T10:29:00+01:00",
                "detail": "452 mailbox full",
            }
        ),
        JSON,
    )
    assert notice.kind is NoticeKind.SOFT_BOUNCE and notice.message_id_header == "<es-0123abcd@acme.example>"
    assert notice.occurred_at == datetime(2026, 3, 2, 9, 29, tzinfo=UTC)
    by_recipient = parse_generic(body({"event_id": "e", "type": "complaint", "recipient": "a@b.c"}), JSON)
    assert by_recipient.kind is NoticeKind.COMPLAINT and by_recipient.message_id_header is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"type": "hard_bounce", "recipient": "a@b.c"}, Reason.MALFORMED),  # no event id
        ({"event_id": "e", "type": "hard_bounce"}, Reason.MALFORMED),  # names no message
        ({"event_id": "e", "type": "bounced", "recipient": "a@b.c"}, Reason.INVALID_FIELD),
        ({"event_id": "e" * 2000, "type": "hard_bounce", "recipient": "a@b.c"}, Reason.INVALID_FIELD),
        (
            {
                "event_id": "e",
                "type": "hard_bounce",
                "recipient": "a@b.c",
                "occurred_at": "0001-01-01T00:00:00Z",
            },
            Reason.BAD_TIMESTAMP,
        ),
        (
            {
                "event_id": "e",
                "type": "hard_bounce",
                "recipient": "a@b.c",
                "occurred_at": "2026-03-02T09:00:00",
            },
            Reason.BAD_TIMESTAMP,
        ),
    ],
)
def test_invalid_generic_callbacks_are_refused_with_a_reason(payload: dict[str, str], reason: Reason) -> None:
    with rejected(reason):
        parse_generic(body(payload), JSON)


# --- commands -----------------------------------------------------------------------------------


def notice(kind: NoticeKind) -> BounceNotice:
    return BounceNotice(kind, "evt", "<es-0123abcd@acme.example>", "ada@example.org", NOW, "550 no such user")


def test_a_hard_bounce_is_one_hard_bounce_detected_with_an_id_of_the_message_and_kind() -> None:
    [command] = bounce_commands(notice(NoticeKind.HARD_BOUNCE), MESSAGE, NOW, "smtp2go")
    assert isinstance(command, BounceDetected)
    assert command.command_id == "bounce:acme/ada:es-0123abcd:hard_bounce"
    assert command.account_id == "acme" and command.issued_at == NOW and command.actor == "bounce-webhook"
    assert command.data.contact_id == "ada" and command.data.enrollment_id == "enr-1"
    assert command.data.bounce_type is BounceType.HARD and command.data.step_index == 0
    assert command.data.detail.startswith("smtp2go hard bounce at 2026-03-02T09:30:00+00:00: 550 no such")
    # The same message reported again (another event, another time, the other format): the same id.
    later = BounceNotice(NoticeKind.HARD_BOUNCE, "evt-2", None, "ada@example.org", None, "again")
    [again] = bounce_commands(later, MESSAGE, NOW + timedelta(hours=1), "generic")
    assert again.command_id == command.command_id


def test_a_soft_bounce_is_a_soft_bounce_detected() -> None:
    [command] = bounce_commands(notice(NoticeKind.SOFT_BOUNCE), MESSAGE, NOW, "generic")
    assert isinstance(command, BounceDetected) and command.data.bounce_type is BounceType.SOFT
    assert command.command_id == "bounce:acme/ada:es-0123abcd:soft_bounce"


def test_a_complaint_is_recorded_and_opts_the_contact_out() -> None:
    bounce, opt_out = bounce_commands(notice(NoticeKind.COMPLAINT), MESSAGE, NOW, "smtp2go")
    assert isinstance(bounce, BounceDetected) and bounce.data.bounce_type is BounceType.SOFT
    assert "spam complaint" in bounce.data.detail
    assert isinstance(opt_out, OptOut)
    assert opt_out.command_id == "complaint:acme/ada:es-0123abcd"
    assert opt_out.account_id == "acme" and opt_out.data.contact_id == "ada"
    assert opt_out.data.channel == "complaint"
