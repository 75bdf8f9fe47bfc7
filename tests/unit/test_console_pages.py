"""The console's pure parts: the "why" sentences, the page cursors and filters, escaping, the requests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from enrollstream.console.app import TEMPLATES, Filters, decode_cursor, encode_cursor
from enrollstream.console.requests import AddToGroupRequested, MessageRequested
from enrollstream.read_models.why import sentence

AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def event(what: str, actor: str | None = "console", **data: object) -> dict[str, object]:
    return {"kind": "event", "what": f"{what}.v1", "actor": actor, "status": "accepted", "data": data}


def test_the_timeline_says_why_in_plain_words() -> None:
    assert sentence(event("ContactEnrolled", actor="alice")) == "Enrolled by alice in the campaign."
    assert sentence(event("StepScheduled", step_index=1, step_count=5, due_at=AT.isoformat())) == (
        "Step 2 of 5 scheduled for 2026-12-03 10:00:00 UTC."
    )
    assert sentence(event("EnrollmentStopped", reason="manual", outcome="stopped")) == (
        "Stopped by console: someone stopped it by hand. No more messages will be sent."
    )
    assert sentence(event("EnrollmentFailed", reason="bounced", detail="rcpt: 550 no such user")) == (
        "Failed: the recipient's server refused the message or it bounced later (rcpt: 550 no such user)."
    )
    assert sentence(event("EnrollmentUnenrolled", step_in_flight=True, outcome="stopped")) == (
        "Unenrolled by console: no further messages from this campaign. A send already in progress still "
        "completes."
    )
    refused = {"kind": "decision", "command_type": "Stop.v1", "actor": "console", "status": "rejected",
               "code": "invalid_transition", "reason": "the enrollment already ended"}  # fmt: skip
    assert sentence(refused) == (
        "Stop by console was refused (invalid_transition): the enrollment already ended."
    )


def test_page_cursors_round_trip_and_a_forged_one_is_a_400() -> None:
    assert decode_cursor(encode_cursor(AT, "enr-1|x")) == (AT, "enr-1|x")
    assert decode_cursor(None) is None and decode_cursor("") is None
    for forged in ("!!!", "bm90IGEgY3Vyc29y", encode_cursor(AT, "e").replace("M", "_")):
        with pytest.raises(HTTPException) as refused:
            decode_cursor(forged)
        assert refused.value.status_code == 400


def test_filters_keep_only_what_is_set_in_the_links() -> None:
    assert Filters().params() == ""
    assert Filters("stopped", 2, "ada & co", "bob").params(after="c") == (
        "status=stopped&step=2&q=ada+%26+co&by=bob&after=c"
    )
    assert Filters("all", None, "x").with_status("failed").params() == "status=failed&q=x"


def test_a_contact_named_script_is_text_on_the_page() -> None:
    html = TEMPLATES.get_template("message.html").render(
        csrf="t" * 32, root="/console", title="<script>alert(1)</script>", message="<img src=x onerror=1>"
    )
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=1&gt;" in html


def test_operator_requests_are_bounded() -> None:
    common = {"request_id": "b/c", "batch_id": "b", "requested_at": AT, "requested_by": "console",
              "account_id": "a", "contact_id": "c", "campaign_id": "w", "enrollment_id": "e"}  # fmt: skip
    assert AddToGroupRequested(**common, group="VIP").type == "contact.add_to_group_requested"
    with pytest.raises(ValidationError):
        AddToGroupRequested(**common, group="")
    with pytest.raises(ValidationError):
        MessageRequested(**common, mobile=None, text="x" * 1601)
