"""The demo's local servers: the SMTP sink's reject list (550 at RCPT) and the DNS responder."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
import pytest

from enrollstream.adapters.dns.mx import MxVerifier, Nameserver
from enrollstream.dns_sink import DnsSink
from enrollstream.smtp_sink import SmtpSink


def _message(to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@acme.example", to, "Hi"
    message["Message-ID"] = f"<{to.split('@')[0]}@acme.example>"
    message.set_content("hello")
    return message


async def test_the_smtp_sink_refuses_listed_recipients_at_rcpt_and_records_the_others() -> None:
    with SmtpSink(reject=["Gone@Example.org"]) as sink:
        await aiosmtplib.send(_message("ok@example.org"), hostname=sink.host, port=sink.port)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await aiosmtplib.send(_message("gone@example.org"), hostname=sink.host, port=sink.port)
    assert refused.value.recipients[0].code == 550
    assert [(m.recipient, m.message_id) for m in sink.messages] == [("ok@example.org", "<ok@acme.example>")]
    assert sink.refused == {"gone@example.org": 1}


async def test_the_dns_responder_answers_mx_no_mx_and_nxdomain() -> None:
    async with DnsSink() as dns:
        dns.add("example.org", "MX", "10 mx.example.org.")
        dns.add("nomx.example", "A", "192.0.2.7")
        verifier = MxVerifier(lambda: datetime.now(UTC), [Nameserver(dns.host, dns.port)])
        has_mx = await verifier.verify("ada@example.org")
        no_mx = await verifier.verify("bob@nomx.example")
        missing = await verifier.verify("eve@nowhere.example")
    assert has_mx.has_mx and has_mx.detail == "mx: 10 mx.example.org."
    assert not no_mx.has_mx and no_mx.detail.startswith("no_mx")
    assert not missing.has_mx and missing.detail.startswith("nxdomain")
    assert dns.queries == 3
