"""Issue 11 item 8: a command's result explains the decision by itself (command, actor, enrollment,
time, reason), also when the decider refused or ignored it, so "why" needs nothing but the results.
Item 7: a skipped Enroll says `skipped`, never `accepted` with an enrollment that does not exist."""

from __future__ import annotations

from enrollstream.domain import (
    Channel,
    EnrollmentSkipped,
    MxAnswer,
    command_result,
    decide,
    fan_out_bulk_enroll,
    initial_state,
)
from enrollstream.domain.rejections import Ignored

from .scenario import DAY, HOUR, T0, campaign, contact, eid, enroll, ev, given, opt_out, step, step_due, stop


def test_a_refused_stop_names_its_enrollment_actor_time_code_and_reason() -> None:
    then = given(enroll(), stop(at=T0 + HOUR)).when(stop(at=T0 + DAY, command_id="stop-again"))
    then.then_rejected("invalid_transition")

    result = command_result(then.command, then.decision, then.before.version)

    assert (result.command_id, result.command_type, result.status) == ("stop-again", "Stop.v1", "rejected")
    assert (result.code, result.actor, result.issued_at) == ("invalid_transition", "test", T0 + DAY)
    assert result.enrollment_id == eid()
    assert "stopped" in result.message
    assert result.contact_version == then.before.version  # it changed nothing: the version it found


def test_a_refused_enroll_names_the_campaign_it_asked_for() -> None:
    then = given().when(enroll(campaign=None, campaign_id="nowhere", command_id="enroll-nowhere"))
    then.then_rejected("campaign_not_found")

    result = command_result(then.command, then.decision, 0)

    assert (result.campaign_id, result.enrollment_id, result.code) == ("nowhere", None, "campaign_not_found")
    assert result.message and result.contact_version == 0


def test_an_ignored_command_says_why_it_changed_nothing() -> None:
    first = enroll(command_id="enroll-1")
    duplicate = given(first).when(first).then_ignored(Ignored.DUPLICATE)
    stale = given(enroll()).when(step_due(0, attempt=2, at=T0 + 2 * HOUR)).then_ignored(Ignored.STALE)
    deferred = given(enroll()).when(step_due(0, at=T0 - HOUR))  # before the step is due

    for then, kind in ((duplicate, Ignored.DUPLICATE), (stale, Ignored.STALE), (deferred, Ignored.DEFERRED)):
        then.then_ignored(kind)
        result = command_result(then.command, then.decision, then.before.version)
        assert (result.status, result.code) == (kind.value, kind.value)
        assert result.message, f"{kind}: no reason given"
        assert result.actor == "test" and result.issued_at == then.command.issued_at
    assert command_result(stale.command, stale.decision).enrollment_id == eid()


def test_a_skipped_enroll_results_in_skipped_with_the_skip_kind_and_reason_and_no_enrollment_id() -> None:
    sms = campaign(steps=[step(Channel.SMS)])
    mx_checked = campaign(verify_email_mx=True)
    no_mx = MxAnswer(domain="example.com", has_mx=False, checked_at=T0, detail="no_mx: no MX records")
    cases = (
        (given(), enroll(sms, contact=contact(line_type="landline")), "landline", "landline"),
        (given(), enroll(contact=contact(opted_out=True)), "opted_out", "opted out"),
        (given(opt_out()), enroll(), "opted_out", "opted out"),
        (given(), enroll(mx_checked, mx=no_mx), "mx_invalid", "no MX record"),
        (given(), enroll(contact=contact(email=None)), "missing_address", "No email address"),
    )
    for scene, command, kind, reason in cases:
        then = scene.when(command).then(ev(EnrollmentSkipped, kind=kind))

        result = command_result(then.command, then.decision, then.state.version)

        assert (result.status, result.code) == ("skipped", kind)
        assert reason in result.message
        assert result.enrollment_ids == [], "a skip creates no enrollment: no id to give"
        assert result.event_ids == [then.events[0].event_id]  # the skip itself is recorded
        assert result.details == then.events[0].data.evidence  # type: ignore[union-attr]
        assert result.campaign_id == command.data.campaign_id


def test_each_enroll_a_bulk_enroll_fans_out_says_skipped_for_its_own_contact() -> None:
    from .test_enroll_seed001 import _bulk

    mobile, landline = fan_out_bulk_enroll(_bulk(2, 2, campaign=campaign(steps=[step(Channel.SMS)])))
    landline = landline.model_copy(
        update={"data": landline.data.model_copy(update={"contact": contact(line_type="landline")})}
    )

    results = [
        command_result(child, decide(child, initial_state(child.account_id, child.contact_id)))
        for child in (mobile, landline)
    ]

    assert [(r.contact_id, r.status, r.code) for r in results] == [
        ("c-0", "accepted", None),
        ("c-1", "skipped", "landline"),
    ]
    assert results[1].enrollment_ids == [] and len(results[0].enrollment_ids) == 1
