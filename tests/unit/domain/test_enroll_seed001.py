"""Seed 001: the Enrollment REST API (enroll one contact, bulk enroll, skips and error codes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from enrollstream.domain import (
    Accepted,
    BulkEnroll,
    BulkEnrollAccepted,
    Channel,
    ContactEnrolled,
    EnrollmentSkipped,
    MxAnswer,
    MxCheck,
    Rejection,
    StepScheduled,
    accept_bulk_enroll,
    batch_count,
    evolve,
    fan_out_bulk_enroll,
    initial_state,
    parse_event,
)
from enrollstream.domain.campaign import MX_DETAIL_MAX
from enrollstream.domain.events import ContactEnrolled as ContactEnrolledEvent

from .scenario import (
    ACCOUNT,
    CAMPAIGN,
    CONTACT,
    DAY,
    T0,
    campaign,
    contact,
    eid,
    enroll,
    ev,
    given,
    sent,
    step,
    stop,
)


def mx(has_mx: bool) -> MxAnswer:
    return MxAnswer(domain="example.com", has_mx=has_mx, checked_at=T0)


def test_enroll_one_contact_is_pending_in_batch_0_and_its_first_step_is_scheduled() -> None:
    result = (
        given()
        .when(enroll())
        .then(
            ev(
                ContactEnrolled,
                enrollment_id=eid(),
                campaign_id=CAMPAIGN,
                batch_number=0,
                priority=False,
                version=1,
            ),
            ev(StepScheduled, step_index=0, attempt=1, step_count=3, due_at=T0, version=2),
        )
    )
    enrollment = result.enrollment()
    assert enrollment.status == "pending"
    assert enrollment.stage == "pending"


def test_enroll_contact_with_batch_number_and_priority() -> None:
    given().when(enroll(batch_number=1, priority=True)).then(
        ev(ContactEnrolled, batch_number=1, priority=True), ev(StepScheduled)
    )


def test_unknown_campaign_is_campaign_not_found() -> None:
    given().when(enroll(campaign=None, campaign_id="nope")).then_rejected("campaign_not_found")


def test_another_accounts_campaign_is_campaign_not_found() -> None:
    given().when(enroll(campaign(account_id="acc-2"))).then_rejected("campaign_not_found")


def test_enroll_contact_with_unknown_contact_id_is_contact_not_found() -> None:
    given().when(enroll(contact=None)).then_rejected("contact_not_found")


def test_a_bulk_child_without_contact_facts_is_skipped_so_its_summary_completes() -> None:
    given().when(enroll(contact=None, source="bulk_import", bulk_enroll_id="bulk-9")).then(
        ev(EnrollmentSkipped, kind="contact_not_found", bulk_enroll_id="bulk-9")
    )


def test_enroll_contact_for_an_already_enrolled_contact_is_contact_already_enrolled() -> None:
    given(enroll()).when(enroll()).then_rejected("contact_already_enrolled")


def test_archived_campaign_takes_no_new_enrollments() -> None:
    given().when(enroll(campaign(status="archived"))).then_rejected("campaign_archived")


def test_bulk_enroll_skips_a_contact_that_is_already_enrolled() -> None:
    given(enroll()).when(enroll(source="bulk_import", contact_import_id="imp-1")).then(
        ev(EnrollmentSkipped, kind="already_enrolled", enrollment_id=eid(sequence=2))
    )


def test_a_bulk_child_records_its_parent_on_the_skip_and_the_enrollment() -> None:
    given(enroll()).when(enroll(source="bulk_import", bulk_enroll_id="bulk-9")).then(
        ev(EnrollmentSkipped, kind="already_enrolled", bulk_enroll_id="bulk-9")
    )
    given().when(enroll(source="bulk_import", bulk_enroll_id="bulk-9")).then(
        ev(ContactEnrolled, bulk_enroll_id="bulk-9"), ev(StepScheduled)
    )
    given().when(enroll()).then(ev(ContactEnrolled, bulk_enroll_id=None), ev(StepScheduled))


def test_domain_without_mx_record_is_skipped_as_mx_invalid_when_verify_email_mx() -> None:
    result = given().when(enroll(campaign(verify_email_mx=True), mx=mx(False)))
    result.then(ev(EnrollmentSkipped, kind="mx_invalid"))
    assert result.events[0].data.evidence["domain"] == "example.com"  # type: ignore[union-attr]
    assert result.state.enrollments == {}


def test_domain_with_mx_record_is_enrolled_and_the_answer_is_recorded() -> None:
    result = given().when(enroll(campaign(verify_email_mx=True), mx=mx(True)))
    result.then(ev(ContactEnrolled, mx=mx(True)), ev(StepScheduled))


def test_a_dns_timeout_is_not_mx_invalid_the_contact_is_enrolled_unverified() -> None:
    timeout = MxAnswer(domain="example.com", has_mx=False, checked_at=T0, detail="timeout", answered=False)
    result = given().when(enroll(campaign(verify_email_mx=True), mx=timeout))
    result.then(ev(ContactEnrolled, mx=timeout), ev(StepScheduled))


def test_an_enrollment_records_that_its_mx_check_was_verified() -> None:
    then = given().when(enroll(campaign(verify_email_mx=True), mx=mx(True)))
    then.then(ev(ContactEnrolled, mx_check=MxCheck.VERIFIED), ev(StepScheduled))
    assert then.enrollment().mx_check is MxCheck.VERIFIED


def test_an_enrollment_records_that_its_mx_check_was_unverified() -> None:
    # DNS gave no answer (a timeout, SERVFAIL): enrolled anyway, and the enrollment says so.
    timeout = MxAnswer(domain="example.com", has_mx=False, checked_at=T0, detail="timeout", answered=False)
    then = given().when(enroll(campaign(verify_email_mx=True), mx=timeout))
    then.then(ev(ContactEnrolled, mx_check=MxCheck.UNVERIFIED), ev(StepScheduled))
    assert then.enrollment().mx_check is MxCheck.UNVERIFIED


def test_an_enrollment_records_that_its_mx_check_was_not_required() -> None:
    then = given().when(enroll(campaign(), mx=mx(True)))  # an answer, but the campaign does not verify
    then.then(ev(ContactEnrolled, mx_check=MxCheck.NOT_REQUIRED), ev(StepScheduled))
    assert then.enrollment().mx_check is MxCheck.NOT_REQUIRED
    sms_only = campaign(verify_email_mx=True, steps=[step(Channel.SMS)])  # no email to verify
    given().when(enroll(sms_only)).then(ev(ContactEnrolled, mx_check=MxCheck.NOT_REQUIRED), ev(StepScheduled))


def test_an_enrollment_recorded_before_mx_check_existed_reads_as_what_was_decided_then() -> None:
    timeout = MxAnswer(domain="example.com", has_mx=False, checked_at=T0, detail="timeout", answered=False)
    checks = []
    for cmp, answer in ((campaign(verify_email_mx=True), timeout), (campaign(verify_email_mx=True), mx(True)),
                        (campaign(), mx(True)), (campaign(), None)):  # fmt: skip
        [enrolled, _] = given().when(enroll(cmp, mx=answer)).events
        older = enrolled.model_dump(mode="json")
        del older["data"]["mx_check"]
        checks.append(parse_event(older).data.mx_check)  # type: ignore[union-attr]
    assert checks == [MxCheck.UNVERIFIED, MxCheck.VERIFIED, MxCheck.NOT_REQUIRED, MxCheck.NOT_REQUIRED]


def test_the_mx_answer_detail_is_bounded() -> None:
    long = MxAnswer(domain="example.com", has_mx=False, checked_at=T0, detail="x" * 5000, answered=False)
    then = given().when(enroll(campaign(verify_email_mx=True), mx=long))
    assert len(then.events[0].data.mx.detail) == MX_DETAIL_MAX  # type: ignore[union-attr]


def test_verify_email_mx_without_an_mx_answer_is_refused() -> None:
    given().when(enroll(campaign(verify_email_mx=True))).then_rejected("mx_answer_missing")


def test_outreach_with_unique_contacts_skips_contacts_enrolled_in_a_sibling_campaign() -> None:
    sibling = campaign(campaign_id="cmp-sibling", outreach_id="out-1", unique_contacts=True)
    this = campaign(outreach_id="out-1", unique_contacts=True)
    result = given(enroll(sibling)).when(enroll(this, source="bulk_import"))
    result.then(
        ev(
            EnrollmentSkipped,
            kind="cross_campaign_duplicate",
            reason="Already enrolled in another campaign in this outreach",
        )
    )


def test_outreach_without_unique_contacts_enrolls_in_both_siblings() -> None:
    sibling = campaign(campaign_id="cmp-sibling", outreach_id="out-1")
    given(enroll(sibling)).when(enroll(campaign(outreach_id="out-1"))).then(
        ev(ContactEnrolled), ev(StepScheduled)
    )


def test_re_enrollment_after_finished_gets_a_new_enrollment() -> None:
    policy = campaign(re_enrollment="after_finished")
    given(enroll(policy), stop()).when(enroll(policy)).then(
        ev(ContactEnrolled, enrollment_id=eid(sequence=2), sequence=2), ev(StepScheduled)
    )


def test_re_enrollment_never_refuses_even_after_finished() -> None:
    given(enroll(), stop()).when(enroll()).then_rejected("contact_already_enrolled")


def test_re_enrollment_after_finished_still_refuses_while_in_progress() -> None:
    policy = campaign(re_enrollment="after_finished")
    given(enroll(policy), sent(0)).when(enroll(policy)).then_rejected("contact_already_enrolled")


def test_an_edit_to_the_campaign_affects_new_enrollments_only() -> None:
    v2 = campaign(version=2, steps=campaign().steps[:1])
    result = given(enroll(), sent(0)).when(enroll(v2, source="bulk_import"))
    result.then(ev(EnrollmentSkipped, kind="already_enrolled"))
    assert result.enrollment().campaign.version == 1
    assert result.enrollment().step_count == 3


def _bulk(n: int | None, batch_size: int, **data: Any) -> BulkEnroll:
    contacts = None if n is None else [{"contact_id": f"c-{i}", "contact": contact()} for i in range(n)]
    return BulkEnroll.model_validate(
        {
            "command_id": "bulk-1",
            "account_id": ACCOUNT,
            "issued_at": T0,
            "actor": "api",
            "data": {
                "campaign_id": CAMPAIGN,
                "campaign": campaign(),
                "contact_import_id": "imp-1",
                "batch_size": batch_size,
                "contacts": contacts,
                **data,
            },
        }
    )


def test_an_accepted_bulk_enroll_is_one_event_with_its_batches_and_distinct_contacts() -> None:
    bulk = _bulk(120, 50)
    bulk = bulk.model_copy(
        update={
            "data": bulk.data.model_copy(
                update={"contacts": [*(bulk.data.contacts or []), *(bulk.data.contacts or [])[:2]]}
            )
        }
    )
    decision = accept_bulk_enroll(bulk)
    assert isinstance(decision, Accepted)
    [accepted] = decision.events
    assert isinstance(accepted, BulkEnrollAccepted)
    assert (accepted.data.batches, accepted.data.batch_size, accepted.data.contacts) == (3, 50, 120)
    assert (accepted.causation_id, accepted.campaign_id, accepted.contact_id) == ("bulk-1", CAMPAIGN, "")
    assert accepted.data.contact_import_id == "imp-1" and accepted.occurred_at == T0
    again = accept_bulk_enroll(bulk)
    assert isinstance(again, Accepted) and again.events[0].event_id == accepted.event_id  # redelivery


def test_a_bulk_enroll_without_its_import_or_campaign_is_refused_as_a_whole() -> None:
    refused = accept_bulk_enroll(_bulk(None, 50))
    assert isinstance(refused, Rejection) and refused.code == "contact_import_not_found"
    assert refused.details == {"contact_import_id": "imp-1"}
    no_campaign = accept_bulk_enroll(_bulk(3, 50, campaign=None))
    assert isinstance(no_campaign, Rejection) and no_campaign.code == "campaign_not_found"
    other = accept_bulk_enroll(_bulk(3, 50, campaign=campaign(account_id="someone-else")))
    assert isinstance(other, Rejection) and other.code == "campaign_not_found"
    archived = accept_bulk_enroll(_bulk(3, 50, campaign=campaign(status="archived")))
    assert isinstance(archived, Rejection) and archived.code == "campaign_archived"
    assert fan_out_bulk_enroll(_bulk(None, 50)) == []


def test_evolve_ignores_a_bulk_enroll_accepted_event() -> None:
    decision = accept_bulk_enroll(_bulk(2, 50))
    assert isinstance(decision, Accepted)
    state = initial_state(ACCOUNT, CONTACT)
    assert evolve(state, decision.events[0]) == state


def test_bulk_enroll_fans_out_one_enroll_per_contact_in_batches_numbered_from_1() -> None:
    children = fan_out_bulk_enroll(_bulk(5, 2))
    assert [c.data.batch_number for c in children] == [1, 1, 2, 2, 3]
    assert [c.data.contact_id for c in children] == [f"c-{i}" for i in range(5)]
    assert all(c.data.source == "bulk_import" and c.data.contact_import_id == "imp-1" for c in children)
    assert all(c.data.bulk_enroll_id == "bulk-1" for c in children)
    assert batch_count(_bulk(5, 2)) == 3 and batch_count(_bulk(27, 50)) == 1


def test_bulk_enroll_child_command_ids_are_deterministic_and_distinct() -> None:
    first, again = fan_out_bulk_enroll(_bulk(3, 50)), fan_out_bulk_enroll(_bulk(3, 50))
    assert [c.command_id for c in first] == [c.command_id for c in again]
    assert len({c.command_id for c in first}) == 3


def test_a_bulk_child_is_decided_like_a_single_enroll() -> None:
    from enrollstream.domain import decide, initial_state

    child = fan_out_bulk_enroll(_bulk(1, 50))[0]
    decision = decide(child, initial_state(ACCOUNT, "c-0"))
    assert [e.type for e in decision.events] == ["ContactEnrolled.v1", "StepScheduled.v1"]  # type: ignore[union-attr]
    assert isinstance(decision.events[0], ContactEnrolledEvent)  # type: ignore[union-attr]
    assert decision.events[0].data.batch_number == 1  # type: ignore[union-attr]


def test_enrolled_date_and_due_times_come_from_the_command_not_a_clock() -> None:
    later = datetime(2027, 1, 1, tzinfo=UTC)
    result = given().when(enroll(at=later))
    assert result.enrollment().enrolled_at == later
    assert result.events[1].data.due_at == later  # type: ignore[union-attr]


def test_steps_are_scheduled_after_their_delay() -> None:
    result = given(enroll(), sent(0)[0]).when(sent(0)[1])
    assert [e.type for e in result.events] == ["StepDelivered.v1", "StepScheduled.v1"]
    assert result.events[1].data.due_at == T0 + DAY  # type: ignore[union-attr]
    assert CONTACT in result.state.contact_id
