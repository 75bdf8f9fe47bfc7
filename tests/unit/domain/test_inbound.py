"""Reply detection rules: which ids an inbound message names, in which order, and what is an auto-reply."""

from __future__ import annotations

from typing import Any

from enrollstream.domain.inbound import InboundEmailReceived, auto_reply_reason, referenced_message_ids


def _inbound(message_id: str, **fields: Any) -> InboundEmailReceived:
    return InboundEmailReceived.model_validate(
        {
            "account_id": "a",
            "from": "ada@example.org",
            "to": "jobs@acme.example",
            "message_id": message_id,
            "received_at": "2026-03-02T11:30:00+00:00",
            **fields,
        }
    )


def test_an_auto_reply_is_recognised_by_keyword_also_from_the_headers() -> None:
    base = _inbound("<m@x>", in_reply_to="<p@x> (comment)", references=["<r1@x>", "<r2@x>", "<p@x>"])
    assert referenced_message_ids(base) == ["<p@x>", "<r2@x>", "<r1@x>"]
    assert auto_reply_reason(base) is None
    assert auto_reply_reason(_inbound("<m@x>", auto_submitted="No")) is None
    assert auto_reply_reason(_inbound("<m@x>", headers={"auto-submitted": "auto-generated"})) == (
        "Auto-Submitted: auto-generated"
    )
    assert auto_reply_reason(_inbound("<m@x>", auto_submitted="auto-replied; owner-email=x")) is not None


def test_ids_are_taken_from_angle_brackets_only() -> None:
    email = _inbound(
        "<m@x>", in_reply_to="junk <a b> <<c@x> text <d@x>", references=["no-brackets@x", "<e@x"]
    )
    assert referenced_message_ids(email) == ["<c@x>", "<d@x>"]
