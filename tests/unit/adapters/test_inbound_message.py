"""Received mail into InboundEmailReceived: what is copied, how it is bounded, how a DSN is read, and
which account a reply address names."""

from __future__ import annotations

from datetime import UTC, datetime

from enrollstream.adapters.mail.inbound_message import (
    AccountResolver,
    header_recipients,
    parse_inbound,
    synthetic_message_id,
)

AT = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)

DSN = (
    b"From: MAILER-DAEMON@mx.example.org\r\n"
    b"To: bounces+acme@reply.acme.example\r\n"
    b"Subject: Delivery Status Notification (Failure)\r\n"
    b"Message-ID: <dsn-1@mx.example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n"
    b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; mx.example.org\r\n\r\n"
    b"Final-Recipient: rfc822; ada@example.org\r\nAction: delayed\r\nStatus: 4.4.1 (timeout)\r\n"
    b"Diagnostic-Code: smtp; 421 try later\r\n\r\n"
    b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: jobs@acme.example\r\nMessage-ID: <ours-1@acme.example>\r\nSubject: Hi\r\n\r\nHello\r\n"
    b"--B--\r\n"
)


def test_a_dsn_names_the_reported_message_and_its_recipient_blocks() -> None:
    email = parse_inbound(DSN, account_id="acme", received_at=AT, envelope_from="")
    report = email.delivery_status
    assert report is not None and report.original_message_id == "<ours-1@acme.example>"
    [block] = report.recipients
    assert (block.recipient, block.action, block.status) == ("ada@example.org", "delayed", "4.4.1")
    assert email.headers["Return-Path"] == "<>"


def test_a_plain_reply_is_no_dsn_and_its_headers_are_bounded() -> None:
    raw = (
        b"From: =?utf-8?q?Ad=C3=A1?= <ada@example.org>\r\n"
        b"Subject: Re: Hi " + b"x" * 3000 + b"\r\n"
        b"In-Reply-To: <ours-1@acme.example>\r\n"
        b"References: " + b" ".join(f"<r{i}@x>".encode() for i in range(80)) + b"\r\n"
        b"X-Autoreply: yes\r\nX-Something-Else: dropped\r\n\r\nbody"
    )
    email = parse_inbound(raw, account_id="acme", received_at=AT, recipient="reply+acme@r.example")
    assert email.delivery_status is None
    assert email.from_ == "Adá <ada@example.org>"
    assert len(email.subject) == 998
    assert len(email.references) == 50 and email.references[-1] == "<r79@x>"
    assert email.headers == {"X-Autoreply": "yes"}
    assert email.message_id == synthetic_message_id(raw)  # none in the message: derived from its bytes
    assert email.to == "reply+acme@r.example"


def test_the_account_comes_from_the_reply_address_only() -> None:
    resolver = AccountResolver.from_settings("Reply.Acme.Example", "jobs=acme, talent=globex", None)
    assert resolver.account_for("reply+Tenant-7@reply.acme.example") == "Tenant-7"
    assert resolver.account_for("<JOBS@reply.acme.example>") == "acme"
    assert resolver.account_for("talent@REPLY.acme.example") == "globex"
    assert resolver.account_for("reply@reply.acme.example") is None
    assert resolver.account_for("reply+acme@elsewhere.example") is None
    assert resolver.account_for("reply+a/b@reply.acme.example") is None  # not an account id
    fallback = AccountResolver.from_settings("reply.acme.example", "", "solo")
    assert fallback.account_for("anything@reply.acme.example") == "solo"
    raw = b"Delivered-To: reply+acme@reply.acme.example\r\nTo: Ada <someone@else.example>\r\n\r\n"
    assert resolver.first_account(header_recipients(raw)) == "acme"
