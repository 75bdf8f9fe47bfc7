"""Reply detection rules: which ids an inbound message names, in which order, and what is an auto-reply."""

from __future__ import annotations

from typing import Any

from enrollstream.domain.commands import BounceType
from enrollstream.domain.inbound import (
    DeliveryStatus,
    DeliveryStatusRecipient,
    InboundEmailReceived,
    auto_reply_reason,
    bounce_of,
    dsn_referenced_message_ids,
    referenced_message_ids,
    weak_auto_reply_signals,
)


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


def test_auto_replies_are_recognised_by_more_than_auto_submitted() -> None:
    # Strong signals: each alone.
    assert (
        auto_reply_reason(_inbound("<m@x>", headers={"Precedence": "auto_reply"})) == "Precedence: auto_reply"
    )
    for precedence in ("bulk", "junk", "list", "Bulk"):
        assert auto_reply_reason(_inbound("<m@x>", headers={"precedence": precedence})) is not None
    assert auto_reply_reason(_inbound("<m@x>", headers={"Precedence": "first-class"})) is None
    assert auto_reply_reason(_inbound("<m@x>", headers={"X-Autoreply": "yes"})) == "X-Autoreply: yes"
    assert auto_reply_reason(_inbound("<m@x>", headers={"X-Autorespond": "1"})) is not None
    assert auto_reply_reason(_inbound("<m@x>", headers={"X-Autoreply": "no"})) is None


def test_weak_signals_count_only_two_together() -> None:
    vacation = {"subject": "Out of office: back Monday"}
    assert auto_reply_reason(_inbound("<m@x>", **vacation)) is None  # a person may write that
    assert auto_reply_reason(_inbound("<m@x>", headers={"Return-Path": "<>"})) is None
    assert weak_auto_reply_signals(_inbound("<m@x>", **vacation, headers={"Return-Path": "<>"})) == [
        "vacation subject",
        "empty Return-Path",
    ]
    assert auto_reply_reason(_inbound("<m@x>", **vacation, headers={"Return-Path": "<>"})) == (
        "weak signals: vacation subject, empty Return-Path"
    )
    suppress = {"X-Auto-Response-Suppress": "All"}
    assert auto_reply_reason(_inbound("<m@x>", subject="Automatic reply: Hi", headers=suppress)) is not None


def _report(*blocks: tuple[str, str]) -> DeliveryStatus:
    return DeliveryStatus(
        original_message_id="<ours@acme.example>",
        recipients=[DeliveryStatusRecipient(recipient="a@x", action=a, status=s) for a, s in blocks],
    )


def test_a_delivery_status_notification_is_a_hard_bounce_for_5xx_soft_for_4xx_none_for_delivered() -> None:
    assert bounce_of(_report(("failed", "5.1.1"))) == (BounceType.HARD, "5.1.1 a@x")
    assert bounce_of(_report(("delayed", "4.4.1"))) == (BounceType.SOFT, "4.4.1 a@x")
    assert bounce_of(_report(("failed", ""))) == (BounceType.HARD, "a@x")
    assert bounce_of(_report(("delayed", "4.4.1"), ("failed", "5.2.2"))) == (BounceType.HARD, "5.2.2 a@x")
    assert bounce_of(_report(("delivered", "2.0.0"))) is None
    dsn = _inbound("<dsn@mx>", in_reply_to="<other@x>", delivery_status=_report(("failed", "5.1.1")))
    assert dsn_referenced_message_ids(dsn) == ["<ours@acme.example>", "<other@x>"]
