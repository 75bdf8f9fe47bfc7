"""The backtest's simulation (docs/time-travel.md "Backtest"): given one contact's recorded inputs, when
they are re-decided under a definition with the scheduler and the dispatcher simulated, then this
timeline. Expected times are computed by hand from the scenario's clock (T0: Monday 2 March 2026,
09:00 UTC)."""

from __future__ import annotations

from datetime import datetime, timedelta

from enrollstream.domain import CampaignDefinition, ContactCommand, SendWindow
from enrollstream.domain.backtest import (
    MAX_DECISIONS_PER_CONTACT,
    ContactRun,
    Happening,
    Outcomes,
    compare,
    recorded_outcomes,
    simulate_contact,
)

from .scenario import ACCOUNT, CONTACT, DAY, HOUR, T0, campaign, enroll, reply, reported, step, step_due

UNTIL = T0 + 10 * DAY
# The scenario's campaign: step 1 at once, step 2 a day later, step 3 two days after that.
BASE = campaign()


def timeline(*lines: tuple[timedelta, str]) -> list[Happening]:
    return [Happening(T0 + offset, what) for offset, what in lines]


def run(
    definition: CampaignDefinition,
    *inputs: ContactCommand,
    outcomes: Outcomes | None = None,
    until: datetime = UNTIL,
    max_decisions: int = MAX_DECISIONS_PER_CONTACT,
) -> ContactRun:
    return simulate_contact(ACCOUNT, CONTACT, definition, list(inputs), outcomes or {}, until, max_decisions)


def test_the_steps_go_out_at_the_due_times_the_simulated_decider_schedules() -> None:
    result = run(BASE, enroll(BASE))
    assert result.timeline == timeline(
        (timedelta(0), "enrolled"), (timedelta(0), "sent step 1"),
        (DAY, "sent step 2"),
        (3 * DAY, "sent step 3"), (3 * DAY, "completed"),
    )  # fmt: skip
    assert (result.counts["sent"], result.counts["delivered"], result.counts["completed"]) == (3, 3, 1)


def test_recorded_timers_are_not_replayed_and_the_enrolls_campaign_is_the_one_under_test() -> None:
    # A StepDue recorded under the old timing (step 2 an hour in) would send step 2 early if replayed.
    old_step_due = step_due(1, at=T0 + HOUR)
    shorter = campaign(steps=[step(), step(delay=2 * HOUR), step(delay=2 * HOUR)])
    result = run(shorter, enroll(BASE), old_step_due)  # the recorded Enroll carried the old definition
    assert [h for h in result.timeline if h.what.startswith("sent")] == timeline(
        (timedelta(0), "sent step 1"), (2 * HOUR, "sent step 2"), (4 * HOUR, "sent step 3")
    )


def test_a_reply_stop_rule_ends_the_sequence_at_the_reply() -> None:
    inputs = [enroll(BASE), reply(at=T0 + 2 * DAY)]
    continues = run(campaign(reply_action="continue"), *inputs)
    stops = run(campaign(reply_action="stop"), *inputs)
    assert continues.counts["sent"] == 3 and continues.counts["completed"] == 1
    assert stops.timeline == timeline(
        (timedelta(0), "enrolled"), (timedelta(0), "sent step 1"), (DAY, "sent step 2"),
        (2 * DAY, "replied"), (2 * DAY, "stopped: replied"),
    )  # fmt: skip


def test_a_send_window_moves_the_step_and_every_later_step_with_it() -> None:
    evening = campaign(steps=[step(), step(delay=10 * HOUR), step(delay=DAY)])
    weekdays_9_to_17 = SendWindow(days=["mon", "tue", "wed", "thu", "fri"], start_hour=9, end_hour=17)
    windowed = evening.model_copy(
        update={
            "steps": [
                evening.steps[0],
                evening.steps[1].model_copy(update={"window": weekdays_9_to_17}),
                evening.steps[2],
            ]
        }
    )
    result = run(windowed, enroll(BASE))
    # Step 2 due Monday 19:00, outside the window: Tuesday 09:00; step 3 a day after that delivery.
    assert [h for h in result.timeline if h.what.startswith("sent")] == timeline(
        (timedelta(0), "sent step 1"), (DAY, "sent step 2"), (2 * DAY, "sent step 3")
    )
    assert [h.at for h in run(evening, enroll(BASE)).timeline if h.what == "sent step 2"] == [T0 + 10 * HOUR]


def test_the_recorded_outcome_of_the_same_step_and_attempt_is_reused() -> None:
    bounced = recorded_outcomes([reported("bounced", 0, detail="550 no such user")])
    result = run(BASE, enroll(BASE), outcomes=bounced)
    assert result.timeline == timeline(
        (timedelta(0), "enrolled"), (timedelta(0), "sent step 1"), (timedelta(0), "bounced step 1"),
        (timedelta(0), "failed: bounced"),
    )  # fmt: skip


def test_a_recorded_retryable_failure_is_retried_and_the_retry_without_a_record_is_assumed_delivered() -> (
    None
):
    failed = recorded_outcomes([reported("failed", 0, retryable=True)])
    result = run(BASE, enroll(BASE), outcomes=failed)
    retry = timedelta(minutes=15)  # retry_delay x attempt 1
    assert [h for h in result.timeline if "step 1" in h.what] == timeline(
        (timedelta(0), "sent step 1"), (timedelta(0), "failed step 1"), (retry, "sent step 1 (attempt 2)")
    )
    assert result.counts["completed"] == 1


def test_deferrals_are_not_reused() -> None:
    deferred = reported("deferred", 0, retry_at=(T0 + HOUR).isoformat())
    assert recorded_outcomes([deferred]) == {}


def test_a_step_due_after_the_range_is_reported_still_due() -> None:
    result = run(BASE, enroll(BASE), until=T0 + 2 * DAY)
    assert result.timeline[-1] == Happening(T0 + 3 * DAY, "step 3 due after the range")
    assert result.counts["still_due"] == 1 and result.counts["completed"] == 0


def test_inputs_after_the_range_are_not_decided() -> None:
    result = run(campaign(reply_action="stop"), enroll(BASE), reply(at=T0 + 2 * DAY), until=T0 + DAY)
    assert "replied" not in [h.what for h in result.timeline]


def test_an_enroll_into_another_campaign_is_left_out() -> None:
    other = campaign(campaign_id="cmp-other")
    assert run(BASE, enroll(other)).timeline == []


def test_a_runaway_contact_is_truncated_not_spun() -> None:
    assert run(BASE, enroll(BASE), max_decisions=2).truncated


def test_compare_counts_both_runs_and_names_the_contacts_that_differ() -> None:
    inputs: dict[str, list[ContactCommand]] = {CONTACT: [enroll(BASE), reply(at=T0 + 2 * DAY)]}
    result = compare(
        ACCOUNT, campaign(reply_action="continue"), campaign(reply_action="stop"), inputs, {}, UNTIL
    )
    assert result.totals("baseline")["sent"] == 3 and result.totals("changed")["sent"] == 2
    assert result.totals("changed")["stopped"] == 1 and result.differing() == [CONTACT]
    same = compare(ACCOUNT, BASE, BASE, inputs, {}, UNTIL)
    assert same.differing() == []


def test_a_paused_definition_holds_every_step_due_instead_of_dropping_it() -> None:
    result = run(campaign(status="paused"), enroll(BASE))
    assert result.timeline == timeline(
        (timedelta(0), "enrolled"), (timedelta(0), "step 1 held: campaign paused")
    )
    assert result.counts["still_due"] == 1 and result.counts["sent"] == 0


def test_an_input_at_the_instant_a_step_is_due_is_decided_first() -> None:
    result = run(campaign(reply_action="stop"), enroll(BASE), reply(at=T0 + DAY))
    assert result.timeline[-2:] == timeline((DAY, "replied"), (DAY, "stopped: replied"))
    assert result.counts["sent"] == 1


def test_an_expiry_the_changed_definition_sets_fires_at_its_time() -> None:
    expiring = campaign(expiry_after_delivery=12 * HOUR)
    result = run(expiring, enroll(BASE))
    assert result.timeline == timeline(
        (timedelta(0), "enrolled"), (timedelta(0), "sent step 1"), (12 * HOUR, "expired")
    )
    assert result.counts["expired"] == 1 and result.counts["still_due"] == 0


def test_a_trigger_timeout_stops_a_wait_that_no_recorded_trigger_ended() -> None:
    waits = campaign(awaits_trigger=True, trigger_timeout=2 * DAY)
    result = run(waits, enroll(BASE))
    assert result.timeline == timeline((timedelta(0), "enrolled"), (2 * DAY, "stopped: timeout"))
