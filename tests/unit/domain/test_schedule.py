"""Send windows, time zones and due times."""

from __future__ import annotations

from datetime import UTC, datetime

from enrollstream.domain import ContactEnrolled, SendWindow, StepScheduled
from enrollstream.domain.schedule import dispatch_sort_key, next_opening, resolve_time_zone

from .scenario import DAY, T0, campaign, contact, enroll, ev, given, sent, step

WEEKDAYS_9_TO_17 = SendWindow(days=["mon", "tue", "wed", "thu", "fri"], start_hour=9, end_hour=17)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_inside_the_window_the_step_is_due_at_once() -> None:
    assert next_opening(utc(2026, 3, 2, 10), WEEKDAYS_9_TO_17, "UTC") == utc(2026, 3, 2, 10)


def test_before_the_window_the_step_moves_to_its_opening() -> None:
    assert next_opening(utc(2026, 3, 2, 6), WEEKDAYS_9_TO_17, "UTC") == utc(2026, 3, 2, 9)


def test_after_the_window_on_friday_the_step_moves_to_monday() -> None:
    assert next_opening(utc(2026, 3, 6, 18), WEEKDAYS_9_TO_17, "UTC") == utc(2026, 3, 9, 9)


def test_the_window_is_in_the_contacts_time_zone() -> None:
    # 09:00 in New York on Monday 2 March 2026 (EST, UTC-5) is 14:00 UTC.
    assert next_opening(utc(2026, 3, 2, 10), WEEKDAYS_9_TO_17, "America/New_York") == utc(2026, 3, 2, 14)


def test_the_window_follows_daylight_saving_time() -> None:
    # After 8 March 2026 New York is on EDT (UTC-4): the opening is 13:00 UTC.
    assert next_opening(utc(2026, 3, 9, 10), WEEKDAYS_9_TO_17, "America/New_York") == utc(2026, 3, 9, 13)


def test_time_zone_falls_back_from_contact_to_campaign_to_utc() -> None:
    assert resolve_time_zone("Europe/Paris", "America/New_York") == "Europe/Paris"
    assert resolve_time_zone(None, "America/New_York") == "America/New_York"
    assert resolve_time_zone("Not/AZone", None) == "UTC"


def test_a_step_outside_its_window_moves_and_later_steps_shift_with_it() -> None:
    windowed = campaign(
        steps=[step(window=WEEKDAYS_9_TO_17), step(delay=DAY)],
        time_zone="America/New_York",
    )
    friday_evening = utc(2026, 3, 6, 23)
    result = given().when(enroll(windowed, at=friday_evening))
    opening = utc(2026, 3, 9, 13)  # Monday 09:00 EDT
    result.then(ev(ContactEnrolled), ev(StepScheduled, due_at=opening, requested_at=friday_evening))
    due, delivered = sent(0, at=opening)
    nxt = given(enroll(windowed, at=friday_evening), due).when(delivered)
    assert nxt.events[-1].data.due_at == opening + DAY  # type: ignore[union-attr]


def test_the_contacts_zone_is_recorded_at_enrollment() -> None:
    result = given().when(enroll(contact=contact(time_zone="Asia/Tokyo")))
    assert result.events[0].data.time_zone == "Asia/Tokyo"  # type: ignore[union-attr]
    assert result.enrollment().time_zone == "Asia/Tokyo"


def test_priority_enrollments_are_dispatched_first_within_their_batch() -> None:
    keys = [
        ("late-normal", dispatch_sort_key(1, False, T0 + DAY)),
        ("priority", dispatch_sort_key(1, True, T0 + 2 * DAY)),
        ("early-normal", dispatch_sort_key(1, False, T0)),
        ("batch-0", dispatch_sort_key(0, False, T0 + 3 * DAY)),
    ]
    assert [name for name, _ in sorted(keys, key=lambda k: k[1])] == [
        "batch-0",
        "priority",
        "early-normal",
        "late-normal",
    ]
