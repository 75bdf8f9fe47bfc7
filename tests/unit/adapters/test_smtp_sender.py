"""SmtpSender against a real aiosmtpd server on 127.0.0.1: each outcome, by where the dialogue ended."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from enrollstream.adapters.mail.message import MessageRef, SenderIdentity, build_message
from enrollstream.adapters.mail.smtp import SmtpConfig, SmtpSender, _classify, data_payload
from enrollstream.domain import ids
from enrollstream.domain.delivery_policy import SendOutcome
from tests.servers.smtp import Behaviour, RecordingSmtpServer

SENDER = SenderIdentity(
    from_address="Acme Recruiting <jobs@acme.example>",
    signing_key=b"k" * 32,
    unsubscribe_url="https://u.acme.example/unsubscribe",
    unsubscribe_mailto="unsubscribe@acme.example",
)


def message(
    to: str, attempt: int = 1, body: str = "Hello {{ first_name }},\n.\n..leading dots stay.\n"
) -> EmailMessage:
    return build_message(
        sender=SENDER,
        ref=MessageRef("acct", "contact", "enr-1", 0, attempt),
        to=to,
        subject_template="Hi {{ first_name }}",
        body_template=body,
        fields={"first_name": "Ada"},
        date=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    )


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[RecordingSmtpServer]:
    """Every test here against a server without PIPELINING (one command, one reply) and one with it
    (MAIL, RCPT and DATA in one write)."""
    with RecordingSmtpServer(pipelining=request.param) as server:
        yield server


def sender_for(server: RecordingSmtpServer, timeout: float = 5.0) -> SmtpSender:
    return SmtpSender(SmtpConfig(host=server.host, port=server.port, starttls=False, timeout=timeout))


async def test_an_accepted_message_is_sent_with_its_headers_intact(smtp_server: RecordingSmtpServer) -> None:
    result = await sender_for(smtp_server).send(message("ada@example.org"))
    assert result.outcome is SendOutcome.SENT
    assert result.code == 250
    assert result.provider_message_id == "2.0.0 Ok: queued as TEST00001"

    [received] = smtp_server.messages
    assert received.mail_from == "jobs@acme.example"
    assert received.rcpt_tos == ("ada@example.org",)
    msg = received.message
    assert msg["Message-ID"] == f"<{ids.message_id('enr-1', 0, 1)}@acme.example>"
    assert msg["Subject"] == "Hi Ada"
    assert str(msg["List-Unsubscribe"]).startswith("<https://u.acme.example/unsubscribe/")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Dot-stuffing round-trips: a line of one dot and a line starting with dots arrive unchanged.
    assert msg.get_content().replace("\r\n", "\n") == "Hello Ada,\n.\n..leading dots stay.\n"


def _raw_header(content: bytes, name: bytes) -> bytes:
    """The header's value as it crossed the wire: folded continuation lines joined, nothing decoded."""
    head = content.split(b"\r\n\r\n", 1)[0]
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
    [value] = [
        line.split(b":", 1)[1].strip() for line in unfolded.split(b"\r\n") if line.split(b":")[0] == name
    ]
    return value


async def test_list_unsubscribe_reaches_the_server_unencoded(smtp_server: RecordingSmtpServer) -> None:
    # A mailbox provider reads these bytes, not a decoded header: an RFC 2047 encoded-word
    # (=?utf-8?q?=3Chttps...) hides the one-click link from it.
    msg = build_message(  # long ids: the token (and the header) grows with them
        sender=SENDER,
        ref=MessageRef("acct-" + "a" * 40, "contact-" + "c" * 60, "enr-" + "e" * 60, 0, 1),
        to="Zoë Ådams <zoe@example.org>",
        subject_template="Hi {{ first_name }}",
        body_template="Hello {{ first_name }}",
        fields={"first_name": "Zoë"},
        date=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    )
    result = await sender_for(smtp_server).send(msg)
    assert result.outcome is SendOutcome.SENT

    [received] = smtp_server.messages
    assert received.content.isascii()
    value = _raw_header(received.content, b"List-Unsubscribe")
    assert value.startswith(b"<https://u.acme.example/unsubscribe/")
    assert b"=?" not in value
    https, mailto = (uri.strip() for uri in value.split(b","))
    assert https.endswith(b">") and mailto.startswith(
        b"<mailto:unsubscribe@acme.example?subject=unsubscribe%20"
    )
    assert _raw_header(received.content, b"List-Unsubscribe-Post") == b"List-Unsubscribe=One-Click"
    assert all(len(line) <= 998 for line in received.content.split(b"\r\n"))
    # Non-ASCII text is still encoded (no SMTPUTF8): the Subject and the display name.
    assert b"=?utf-8?" in _raw_header(received.content, b"Subject")
    assert received.message["Subject"] == "Hi Zoë"


@pytest.mark.parametrize(
    ("behaviour", "outcome", "code"),
    [
        (Behaviour.REJECT_RCPT, SendOutcome.BOUNCED, 550),
        (Behaviour.DEFER_RCPT, SendOutcome.TEMPORARY, 451),
        (Behaviour.REJECT_DATA, SendOutcome.BOUNCED, 554),
        (Behaviour.DEFER_DATA, SendOutcome.TEMPORARY, 451),
    ],
)
async def test_refusals_are_classified_by_their_reply_code(
    smtp_server: RecordingSmtpServer, behaviour: Behaviour, outcome: SendOutcome, code: int
) -> None:
    smtp_server.behave("bob@example.org", behaviour)
    result = await sender_for(smtp_server).send(message("bob@example.org"))
    assert (result.outcome, result.code) == (outcome, code)
    assert str(code) in result.detail
    at_data = behaviour in (Behaviour.REJECT_DATA, Behaviour.DEFER_DATA)
    assert len(smtp_server.messages) == (1 if at_data else 0)


async def test_a_drop_after_the_content_is_unknown_and_is_not_retried(
    smtp_server: RecordingSmtpServer,
) -> None:
    smtp_server.behave("eve@example.org", Behaviour.DROP_AFTER_DATA)
    result = await sender_for(smtp_server).send(message("eve@example.org"))
    assert result.outcome is SendOutcome.UNKNOWN
    assert "after the content was handed over" in result.detail
    # The server got the content exactly once, and the sender did not try again on its own.
    [received] = smtp_server.received_for("eve@example.org")
    assert received.message["Message-ID"] == f"<{ids.message_id('enr-1', 0, 1)}@acme.example>"
    assert len(smtp_server.messages) == 1


async def test_a_server_silent_after_the_content_times_out_as_unknown(
    smtp_server: RecordingSmtpServer,
) -> None:
    smtp_server.behave("slow@example.org", Behaviour.HANG_AFTER_DATA)
    started = time.monotonic()
    result = await sender_for(smtp_server, timeout=0.5).send(message("slow@example.org"))
    assert result.outcome is SendOutcome.UNKNOWN
    assert "timeout" in result.detail
    assert time.monotonic() - started < 5
    assert len(smtp_server.received_for("slow@example.org")) == 1


async def test_a_drop_before_the_content_is_temporary(smtp_server: RecordingSmtpServer) -> None:
    smtp_server.behave("gone@example.org", Behaviour.DROP_AT_RCPT)
    result = await sender_for(smtp_server).send(message("gone@example.org"))
    assert result.outcome is SendOutcome.TEMPORARY
    assert result.detail.startswith("rcpt:")
    assert smtp_server.messages == []


async def test_a_drop_on_the_data_command_before_354_is_temporary(smtp_server: RecordingSmtpServer) -> None:
    """The last moment before the content is handed over: still safe to retry."""
    smtp_server.behave("edge@example.org", Behaviour.DROP_AT_DATA)
    result = await sender_for(smtp_server).send(message("edge@example.org"))
    assert result.outcome is SendOutcome.TEMPORARY
    assert result.detail.startswith("data:")
    assert smtp_server.messages == []


async def test_starttls_and_auth_with_the_right_credentials_send(localhost_cert: tuple[str, str]) -> None:
    with RecordingSmtpServer(tls=localhost_cert, credentials={"mailer": "s3cret"}, pipelining=True) as server:
        good = SmtpConfig(
            host=server.host,
            port=server.port,
            starttls=True,
            username="mailer",
            password="s3cret",
            tls_context=ssl.create_default_context(cafile=localhost_cert[0]),
            timeout=5,
        )
        assert (await SmtpSender(good).send(message("ada@example.org"))).outcome is SendOutcome.SENT
        wrong = dataclasses.replace(good, password="guess")
        result = await SmtpSender(wrong).send(message("ada@example.org"))
        assert result.outcome is SendOutcome.ERROR  # our credentials, not the contact's address
        assert result.detail.startswith("auth:") and result.code == 535
        anonymous = dataclasses.replace(good, username=None, password=None)
        result = await SmtpSender(anonymous).send(message("ada@example.org"))
        assert (result.outcome, result.code) == (SendOutcome.ERROR, 530)  # auth required at MAIL
        untrusted = dataclasses.replace(good, tls_context=ssl.create_default_context())
        result = await SmtpSender(untrusted).send(message("ada@example.org"))
        assert result.outcome is SendOutcome.ERROR and result.detail.startswith("starttls:")
        assert len(server.messages) == 1


async def test_a_refused_connection_is_temporary() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = await SmtpSender(SmtpConfig(host="127.0.0.1", port=port, starttls=False, timeout=2)).send(
            message("ada@example.org")
        )
    assert result.outcome is SendOutcome.TEMPORARY
    assert result.detail.startswith("connect:")


async def test_starttls_required_but_not_offered_is_our_error(smtp_server: RecordingSmtpServer) -> None:
    sender = SmtpSender(SmtpConfig(host=smtp_server.host, port=smtp_server.port, starttls=True, timeout=5))
    result = await sender.send(message("ada@example.org"))
    assert result.outcome is SendOutcome.ERROR
    assert result.detail.startswith("starttls:")
    assert smtp_server.messages == []  # nothing goes out in the clear


async def test_a_message_without_one_recipient_is_an_error_before_connecting() -> None:
    msg = message("ada@example.org")
    del msg["To"]
    result = await SmtpSender(SmtpConfig(host="127.0.0.1", port=1, starttls=False)).send(msg)
    assert result.outcome is SendOutcome.ERROR


def test_data_payload_normalises_line_endings_and_stuffs_dots() -> None:
    assert data_payload(b"a\n.b\r\n..\rc\n") == b"a\r\n..b\r\n...\r\nc\r\n.\r\n"
    assert data_payload(b"no newline at end") == b"no newline at end\r\n.\r\n"


def test_a_5xx_on_our_sender_address_at_mail_is_an_error_on_our_side() -> None:
    # MAIL FROM names our envelope sender: its refusal is our configuration, not the contact's address.
    assert _classify(553, "5.7.1 sender not authorised", "mail").outcome is SendOutcome.ERROR
    assert _classify(550, "5.1.1 no such user", "rcpt").outcome is SendOutcome.BOUNCED
    assert _classify(451, "4.3.0 try later", "mail").outcome is SendOutcome.TEMPORARY


async def test_messages_share_a_pooled_connection_and_one_the_server_closed_is_replaced(
    smtp_server: RecordingSmtpServer,
) -> None:
    sender = SmtpSender(SmtpConfig(host=smtp_server.host, port=smtp_server.port, starttls=False), pool_size=2)
    try:
        first = [await sender.send(message(f"m{i}@example.org", attempt=i + 1)) for i in range(5)]
        assert [r.outcome for r in first] == [SendOutcome.SENT] * 5
        assert smtp_server.connections == 1  # one after the other: one connection, five transactions
        # The relay closes its idle clients: the next message goes over a new connection, once.
        assert smtp_server.drop_connections() == 1
        second = [await sender.send(message(f"n{i}@example.org", attempt=i + 1)) for i in range(5)]
        assert [r.outcome for r in second] == [SendOutcome.SENT] * 5
        assert smtp_server.connections == 2
        received = [m.rcpt_tos[0] for m in smtp_server.messages]
        expected = [f"m{i}@example.org" for i in range(5)] + [f"n{i}@example.org" for i in range(5)]
        assert received == expected  # none lost, none twice
    finally:
        await sender.aclose()


async def test_a_refused_recipient_keeps_the_connection_for_the_next_message_and_a_drop_does_not(
    smtp_server: RecordingSmtpServer,
) -> None:
    smtp_server.behave("gone@example.org", Behaviour.REJECT_RCPT)
    smtp_server.behave("maybe@example.org", Behaviour.DROP_AFTER_DATA)
    sender = sender_for(smtp_server)
    try:
        assert (await sender.send(message("gone@example.org"))).outcome is SendOutcome.BOUNCED
        assert (await sender.send(message("ada@example.org"))).outcome is SendOutcome.SENT
        assert smtp_server.connections == 1  # RSET after the refusal, then the next transaction
        # Dropped after the content: unknown, and that connection is never used again.
        assert (await sender.send(message("maybe@example.org"))).outcome is SendOutcome.UNKNOWN
        assert (await sender.send(message("bob@example.org"))).outcome is SendOutcome.SENT
        assert smtp_server.connections == 2
        assert [m.rcpt_tos[0] for m in smtp_server.messages] == [
            "ada@example.org",
            "maybe@example.org",
            "bob@example.org",
        ]
    finally:
        await sender.aclose()


async def test_a_relay_offering_pipelining_gets_mail_rcpt_and_data_in_one_write() -> None:
    """Half the writes and round trips per message; the content still waits for the 354."""
    with RecordingSmtpServer(pipelining=True) as server:
        server.behave("gone@example.org", Behaviour.REJECT_RCPT)
        sender = sender_for(server)
        try:
            outcomes = [
                (await sender.send(message(to, attempt=i + 1))).outcome
                for i, to in enumerate(["ada@example.org", "gone@example.org", "bob@example.org"])
            ]
        finally:
            await sender.aclose()
        assert outcomes == [SendOutcome.SENT, SendOutcome.BOUNCED, SendOutcome.SENT]
        assert server.pipelined == 3
        assert server.connections == 1  # the refusal (and the refused DATA) left it usable
        assert [m.rcpt_tos[0] for m in server.messages] == ["ada@example.org", "bob@example.org"]


async def test_pipelined_replies_are_read_in_order_across_reads_and_multiline_replies() -> None:
    from enrollstream.adapters.mail.smtp import _PipelinedReplies

    replies = _PipelinedReplies(3)
    replies.data_received(b"250 2.1.0 Ok\r\n250-2.1.5 first line\r\n25")
    replies.data_received(b"0 2.1.5 second line\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    got = [await replies.next(1.0) for _ in range(3)]
    assert [(r.code, r.message) for r in got] == [
        (250, "2.1.0 Ok"),
        (250, "2.1.5 first line\n2.1.5 second line"),
        (354, "End data with <CR><LF>.<CR><LF>"),
    ]


async def test_a_malformed_or_missing_pipelined_reply_ends_the_read() -> None:
    from aiosmtplib import SMTPResponseException, SMTPServerDisconnected

    from enrollstream.adapters.mail.smtp import _PipelinedReplies

    garbled = _PipelinedReplies(3)
    garbled.data_received(b"250 Ok\r\nhello there\r\n")
    assert (await garbled.next(1.0)).code == 250
    with pytest.raises(SMTPResponseException):
        await garbled.next(1.0)
    gone = _PipelinedReplies(3)
    gone.data_received(b"250 Ok\r\n")
    gone.connection_lost(None)
    assert (await gone.next(1.0)).code == 250  # what arrived before the drop is still read
    with pytest.raises(SMTPServerDisconnected):
        await gone.next(1.0)
