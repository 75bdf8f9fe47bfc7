"""Issue 11 items 2, 4 and 10: expiry belongs to the campaign's kind and definition, time paused does not
count toward expiry or wait timeouts, and a queued enrollment waits only behind campaigns that queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from enrollstream.domain import (
    ContactEnrolled,
    EnrollmentExpired,
    EnrollmentQueued,
    EnrollmentReleased,
    EnrollmentStopped,
    ExpiryCancelled,
    ExpiryScheduled,
    Ignored,
    StepDelivered,
    StepDispatched,
    StepScheduled,
    WaitTimeoutExtended,
)
from enrollstream.domain.campaign import CampaignDefinition, CampaignKind
from enrollstream.domain.events import ExpiryScheduledData

from .scenario import (
    DAY,
    HOUR,
    T0,
    blast,
    campaign,
    eid,
    enroll,
    ev,
    expiry_due,
    given,
    paused,
    reported,
    sent,
    step,
    step_due,
    stop,
    wait_timeout,
)


def drip(**kw: Any) -> CampaignDefinition:
    return campaign(steps=[step(), step(delay=5 * DAY), step(delay=5 * DAY)], **kw)


def modules(**kw: Any) -> CampaignDefinition:
    """Seed 002's kind: a delivered multi-module campaign the candidate must complete."""
    return drip(kind="multi_module", **kw)


FIVE_DAY_DRIP = drip()
MODULES = modules()


# --- Item 2: expiry is part of the definition, per kind ----------------------------------------------


def test_a_drip_with_five_day_gaps_does_not_expire_between_steps() -> None:
    history = [enroll(FIVE_DAY_DRIP), sent(0), sent(1, at=T0 + 5 * DAY)]
    later = given(*history)
    assert later.state.enrollments[eid()].expires_at is None  # no expiry was ever scheduled
    given(*history).when(expiry_due(T0 + 7 * DAY)).then_ignored(Ignored.STALE)
    given(*history).when(step_due(2, at=T0 + 10 * DAY)).then(ev(StepDispatched, step_index=2))


def test_seed_002_campaigns_expire_seven_days_after_delivery_by_default_and_blasts_never() -> None:
    result = given(enroll(MODULES), step_due(0)).when(reported("sent", 0, at=T0 + HOUR))
    result.then(
        ev(StepDelivered),
        ev(ExpiryScheduled, expires_at=T0 + HOUR + 7 * DAY, expiry=7 * DAY, counted_from=T0 + HOUR),
        ev(StepScheduled, step_index=1),
    )
    assert given(enroll(blast()), sent(0)).state.enrollments[eid()].expires_at is None


def test_a_campaign_can_override_or_disable_expiry() -> None:
    two_days = modules(expiry_after_delivery=2 * DAY)
    result = given(enroll(two_days), step_due(0)).when(reported("sent", 0))
    assert result.enrollment().expires_at == T0 + 2 * DAY
    never = modules(expiry_after_delivery="never")
    result = given(enroll(never), step_due(0)).when(reported("sent", 0))
    result.then(ev(StepDelivered), ev(StepScheduled, step_index=1))
    # A drip that says so expires too.
    three_days = drip(expiry_after_delivery="P3D")
    given(enroll(three_days), sent(0)).when(expiry_due(T0 + 3 * DAY)).then(ev(EnrollmentExpired))
    assert (FIVE_DAY_DRIP.expiry, MODULES.expiry, never.expiry, blast().expiry) == (None, 7 * DAY, None, None)


def test_an_expiry_scheduled_under_the_old_default_is_cancelled_for_a_drip() -> None:
    # Enrolled before expiry was per kind: every sequence got 7 days at its first delivery.
    old_default = ExpiryScheduled.model_validate(
        {
            "event_id": "old-expiry",
            "account_id": "acc-1",
            "contact_id": "contact-1",
            "campaign_id": "cmp-1",
            "enrollment_id": eid(),
            "version": 4,
            "occurred_at": T0,
            "causation_id": "delivery:old",
            "data": ExpiryScheduledData(expires_at=T0 + 7 * DAY, expiry=7 * DAY),
        }
    )
    history = [enroll(FIVE_DAY_DRIP), sent(0), old_default]
    result = given(*history).when(expiry_due(T0 + 7 * DAY))
    result.then(ev(ExpiryCancelled, expires_at=T0 + 7 * DAY))
    assert (result.enrollment().status, result.enrollment().expires_at) == ("active", None)


# --- Item 4: time paused does not count ------------------------------------------------------------

PAUSED_FOR_3_DAYS = paused((T0 + 2 * DAY, T0 + 5 * DAY))  # after a delivery at T0


def test_time_paused_does_not_count_toward_expiry() -> None:
    slow = campaign(kind="multi_module", steps=[step(), step(delay=20 * DAY)])
    history = [enroll(slow), sent(0)]
    # Due at T0+7d, but three of those days the campaign was paused: pushed back by three days.
    result = given(*history).when(expiry_due(T0 + 7 * DAY, pauses=PAUSED_FOR_3_DAYS))
    result.then(ev(ExpiryScheduled, expires_at=T0 + 10 * DAY, counted_from=T0, paused=3 * DAY))
    assert result.enrollment().status == "active"
    extended = [*history, expiry_due(T0 + 7 * DAY, pauses=PAUSED_FOR_3_DAYS)]
    given(*extended).when(expiry_due(T0 + 10 * DAY, pauses=PAUSED_FOR_3_DAYS)).then(
        ev(EnrollmentExpired, expires_at=T0 + 10 * DAY)
    )
    # Still paused when the timer fires: counted up to now, fired again later.
    still_paused = paused((T0 + 6 * DAY, None))
    given(*history).when(expiry_due(T0 + 7 * DAY, pauses=still_paused)).then(
        ev(ExpiryScheduled, expires_at=T0 + 8 * DAY, paused=DAY)
    )
    # A pause before the first delivery does not count either way.
    given(*history).when(expiry_due(T0 + 7 * DAY, pauses=paused((T0 - 3 * DAY, T0)))).then(
        ev(EnrollmentExpired)
    )


def test_on_resume_the_due_steps_go_out_in_order_and_nothing_expires_for_the_paused_time() -> None:
    # Step 1 delivered at T0; paused from T0+1d to T0+20d; step 2 was due at T0+5d, expiry at T0+7d.
    pause = paused((T0 + DAY, T0 + 20 * DAY))
    resumed = T0 + 20 * DAY
    history = [enroll(MODULES), sent(0)]
    # The expiry timer fires first: only one day of the seven ran, so it moves to T0+26d.
    given(*history).when(expiry_due(resumed, pauses=pause)).then(
        ev(ExpiryScheduled, expires_at=T0 + 26 * DAY, paused=19 * DAY)
    )
    history.append(expiry_due(resumed, pauses=pause))
    given(*history).when(step_due(1, at=resumed)).then(ev(StepDispatched, step_index=1))
    history.append(step_due(1, at=resumed))
    given(*history).when(reported("sent", 1, at=resumed)).then(
        ev(StepDelivered, step_index=1), ev(StepScheduled, step_index=2, due_at=resumed + 5 * DAY)
    )
    history.append(reported("sent", 1, at=resumed))
    given(*history).when(step_due(2, at=resumed + 5 * DAY)).then(ev(StepDispatched, step_index=2))


def test_time_paused_does_not_count_toward_a_wait_timeout() -> None:
    auto_match = blast(awaits_trigger=True, trigger_timeout=timedelta(days=2))
    pause = paused((T0 + DAY, T0 + 4 * DAY))
    history = [enroll(auto_match)]
    # Fired on resume (T0+4d): one of the two days ran, so it times out a day later.
    result = given(*history).when(wait_timeout(T0 + 4 * DAY, pauses=pause))
    result.then(ev(WaitTimeoutExtended, timeout_at=T0 + 5 * DAY, paused=3 * DAY))
    assert (result.enrollment().status, result.enrollment().wait_timeout_at) == (
        "awaiting_trigger",
        T0 + 5 * DAY,
    )
    history.append(wait_timeout(T0 + 4 * DAY, pauses=pause))
    given(*history).when(wait_timeout(T0 + 5 * DAY, pauses=pause)).then(
        ev(EnrollmentStopped, reason="timeout")
    )
    # The queue's timeout, likewise.
    first = modules(campaign_id="cmp-first", when_in_other_campaign="queue")
    second = modules(campaign_id="cmp-second", when_in_other_campaign="queue", queue_timeout=2 * DAY)
    queued = [enroll(first), enroll(second)]
    given(*queued).when(wait_timeout(T0 + 4 * DAY, enrollment=eid("cmp-second"), pauses=pause)).then(
        ev(WaitTimeoutExtended, timeout_at=T0 + 5 * DAY)
    )


# --- Item 10: the queue ----------------------------------------------------------------------------

FIRST_APPLICATION = modules(campaign_id="cmp-first", when_in_other_campaign="queue")
SECOND_APPLICATION = modules(campaign_id="cmp-second", when_in_other_campaign="queue")
DRIP = drip(campaign_id="cmp-drip")


def test_a_queued_enrollment_does_not_wait_behind_a_parallel_drip() -> None:
    given(enroll(DRIP)).when(enroll(SECOND_APPLICATION)).then(
        ev(ContactEnrolled, campaign_id="cmp-second"), ev(StepScheduled, campaign_id="cmp-second")
    )
    # Queued behind the first application, it is released when that one ends, whatever drips run.
    history = [enroll(FIRST_APPLICATION), enroll(DRIP), enroll(SECOND_APPLICATION)]
    assert given(*history).state.enrollments[eid("cmp-second")].status == "queued"
    given(*history).when(stop(enrollment=eid("cmp-first"))).then(
        ev(EnrollmentStopped, campaign_id="cmp-first"),
        ev(EnrollmentReleased, campaign_id="cmp-second", after_enrollment_id=eid("cmp-first")),
        ev(StepScheduled, campaign_id="cmp-second"),
    )


def test_a_queued_enrollment_waits_only_behind_its_queue_group() -> None:
    other_group = modules(campaign_id="cmp-second", when_in_other_campaign="queue", queue_group="onboarding")
    given(enroll(FIRST_APPLICATION)).when(enroll(other_group)).then(ev(ContactEnrolled), ev(StepScheduled))


def test_a_queued_enrollment_times_out_when_its_definition_says_so() -> None:
    impatient = modules(campaign_id="cmp-second", when_in_other_campaign="queue", queue_timeout=3 * DAY)
    history = [enroll(FIRST_APPLICATION), enroll(impatient)]
    given(enroll(FIRST_APPLICATION)).when(enroll(impatient)).then(
        ev(ContactEnrolled), ev(EnrollmentQueued, timeout_at=T0 + 3 * DAY)
    )
    given(*history).when(wait_timeout(T0 + 2 * DAY, enrollment=eid("cmp-second"))).then_ignored(
        Ignored.DEFERRED
    )
    result = given(*history).when(wait_timeout(T0 + 3 * DAY, enrollment=eid("cmp-second")))
    result.then(ev(EnrollmentStopped, reason="timeout", outcome="stopped"))
    assert result.enrollment(eid("cmp-first")).status == "pending"  # the first application runs on
    # Released before the timeout: the timer goes stale.
    released = [*history, stop(enrollment=eid("cmp-first"))]
    given(*released).when(wait_timeout(T0 + 3 * DAY, enrollment=eid("cmp-second"))).then_ignored(
        Ignored.STALE
    )
    # Without a queue_timeout it waits as long as it takes.
    given(enroll(FIRST_APPLICATION)).when(enroll(SECOND_APPLICATION)).then(
        ev(ContactEnrolled), ev(EnrollmentQueued, timeout_at=None)
    )


def test_the_kinds_are_explicit_and_queue_settings_need_the_queue() -> None:
    assert {k.value for k in CampaignKind} == {"blast", "sequence", "multi_module"}
    with pytest.raises(ValidationError, match="queue_timeout need when_in_other_campaign: queue"):
        campaign(queue_timeout=DAY)
    with pytest.raises(ValidationError, match="must be positive"):
        campaign(kind="multi_module", expiry_after_delivery=timedelta(0))
