"""Seed 002: Queued behind another campaign, blasts, Expired, Auto-Match."""

from __future__ import annotations

from enrollstream.domain import (
    ContactEnrolled,
    EnrollmentCompleted,
    EnrollmentExpired,
    EnrollmentQueued,
    EnrollmentReleased,
    EnrollmentStopped,
    Ignored,
    StepDelivered,
    StepScheduled,
    TriggerAwaited,
    TriggerReceived,
)

from .scenario import (
    DAY,
    T0,
    blast,
    campaign,
    eid,
    enroll,
    ev,
    expiry_due,
    given,
    opt_out,
    reported,
    sent,
    step_due,
    stop,
    trigger,
)

# Seed 002's campaigns: multi-module, and a second application's campaign queues behind the first's.
FIRST = campaign(
    campaign_id="cmp-first", kind="multi_module", when_in_other_campaign="queue", steps=campaign().steps[:2]
)
SECOND = campaign(campaign_id="cmp-second", kind="multi_module", when_in_other_campaign="queue")


def test_queued_due_to_another_campaign_currently_in_progress() -> None:
    result = given(enroll(FIRST)).when(enroll(SECOND))
    result.then(
        ev(ContactEnrolled, enrollment_id=eid("cmp-second")),
        ev(EnrollmentQueued, behind_enrollment_id=eid("cmp-first"), behind_campaign_id="cmp-first"),
    )
    assert result.enrollment(eid("cmp-second")).status == "queued"


def test_parallel_campaigns_do_not_queue() -> None:
    given(enroll(FIRST)).when(enroll(campaign(campaign_id="cmp-p"))).then(
        ev(ContactEnrolled), ev(StepScheduled)
    )


def test_once_the_first_completes_the_queued_campaign_is_delivered() -> None:
    history = [enroll(FIRST), enroll(SECOND), sent(0, enrollment=eid("cmp-first"))]
    at = T0 + DAY
    result = given(*history, step_due(1, at=at, enrollment=eid("cmp-first"))).when(
        reported("sent", 1, at=at, enrollment=eid("cmp-first"))
    )
    result.then(
        ev(StepDelivered, enrollment_id=eid("cmp-first")),
        ev(EnrollmentCompleted, enrollment_id=eid("cmp-first")),
        ev(EnrollmentReleased, enrollment_id=eid("cmp-second"), after_enrollment_id=eid("cmp-first")),
        ev(StepScheduled, enrollment_id=eid("cmp-second"), step_index=0, due_at=at),
    )
    assert result.enrollment(eid("cmp-second")).status == "pending"


def test_a_stopped_first_campaign_also_releases_the_queue() -> None:
    result = given(enroll(FIRST), enroll(SECOND)).when(stop(enrollment=eid("cmp-first")))
    result.then(ev(EnrollmentStopped), ev(EnrollmentReleased), ev(StepScheduled))


def test_the_oldest_queued_campaign_is_released_first() -> None:
    third = campaign(campaign_id="cmp-third", when_in_other_campaign="queue")
    result = given(enroll(FIRST), enroll(SECOND), enroll(third)).when(stop(enrollment=eid("cmp-first")))
    result.then(
        ev(EnrollmentStopped), ev(EnrollmentReleased, enrollment_id=eid("cmp-second")), ev(StepScheduled)
    )
    assert result.enrollment(eid("cmp-third")).status == "queued"


def test_for_blasts_delivered_is_a_terminal_status() -> None:
    result = given(enroll(blast()), step_due(0)).when(reported("sent", 0))
    result.then(ev(StepDelivered), ev(EnrollmentCompleted, status="delivered"))


def test_seed_002_campaigns_expire_seven_days_after_delivery_by_default() -> None:
    slow = campaign(
        kind="multi_module",
        steps=[*campaign().steps[:1], campaign().steps[2].model_copy(update={"delay": 10 * DAY})],
    )
    history = [enroll(slow), sent(0)]
    given(*history).when(expiry_due(T0 + 6 * DAY)).then_ignored(Ignored.DEFERRED)
    result = given(*history).when(expiry_due(T0 + 7 * DAY))
    result.then(ev(EnrollmentExpired, expires_at=T0 + 7 * DAY, outcome="no_response"))
    assert result.enrollment().status == "expired"
    given(*history, expiry_due(T0 + 7 * DAY)).when(step_due(1, at=T0 + 10 * DAY)).then_ignored(Ignored.STALE)


def test_the_expiry_timeline_can_be_customised_per_campaign() -> None:
    result = given(enroll(campaign(expiry_after_delivery=2 * DAY)), sent(0)[0]).when(sent(0)[1])
    assert result.enrollment().expires_at == T0 + 2 * DAY


def test_a_completed_campaign_does_not_expire() -> None:
    done = campaign(kind="multi_module", steps=campaign().steps[:1])
    given(enroll(done), sent(0)).when(expiry_due(T0 + 7 * DAY)).then_ignored(Ignored.STALE)


def test_auto_match_waits_for_the_external_trigger_then_delivers() -> None:
    auto = blast(awaits_trigger=True)
    given().when(enroll(auto)).then(ev(ContactEnrolled), ev(TriggerAwaited, timeout_at=None))
    assert given(enroll(auto)).state.enrollments[eid()].status == "awaiting_trigger"
    given(enroll(auto)).when(step_due(0)).then_ignored(Ignored.STALE)
    result = given(enroll(auto)).when(trigger(at=T0 + DAY))
    result.then(ev(TriggerReceived, trigger="availability"), ev(StepScheduled, step_index=0, due_at=T0 + DAY))
    delivered = given(enroll(auto), trigger(at=T0 + DAY), step_due(0, at=T0 + DAY)).when(
        reported("sent", 0, at=T0 + DAY)
    )
    assert delivered.enrollment().status == "delivered"


def test_a_second_trigger_changes_nothing() -> None:
    given(enroll(blast(awaits_trigger=True)), trigger()).when(trigger()).then_ignored(Ignored.STALE)


def test_opt_out_stops_queued_enrollments_too() -> None:
    result = given(enroll(FIRST), enroll(SECOND)).when(opt_out())
    assert [e.type for e in result.events] == [
        "ContactOptedOut.v1",
        "EnrollmentStopped.v1",
        "EnrollmentStopped.v1",
    ]


def test_a_queued_enrollment_can_be_stopped_before_it_starts() -> None:
    result = given(enroll(FIRST), enroll(SECOND)).when(stop(enrollment=eid("cmp-second")))
    result.then(ev(EnrollmentStopped, reason="manual"))
    assert result.enrollment(eid("cmp-first")).status == "pending"
