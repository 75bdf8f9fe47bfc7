"""Due-time computation: delays, send windows and time zones. Pure functions of their inputs.

zoneinfo reads the IANA database (data, not a clock); the resolved zone name is recorded in
ContactEnrolled and due times in StepScheduled, so a replay never recomputes them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .campaign import WEEKDAYS, SendWindow

PRIORITY_SORT_AT = datetime(2000, 1, 1, tzinfo=UTC)  # seed 001: priority enrollments go first


def valid_zone(name: str | None) -> bool:
    if not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def resolve_time_zone(contact_zone: str | None, campaign_zone: str | None) -> str:
    """The contact's zone, falling back to the campaign's, then UTC. Unknown names are skipped."""
    for name in (contact_zone, campaign_zone):
        if name and valid_zone(name):
            return name
    return "UTC"


def _local(d: date, hour: int, zone: ZoneInfo) -> datetime:
    if hour == 24:
        return datetime.combine(d + timedelta(days=1), time(0), tzinfo=zone)
    return datetime.combine(d, time(hour), tzinfo=zone)


def next_opening(at: datetime, window: SendWindow | None, time_zone: str) -> datetime:
    """The earliest instant >= `at` inside the window (in UTC). No window: `at` itself."""
    if window is None:
        return at.astimezone(UTC)
    zone = ZoneInfo(time_zone)
    local = at.astimezone(zone)
    days = {WEEKDAYS.index(d) for d in window.days}
    for offset in range(8):  # a window opens at least once a week
        day = local.date() + timedelta(days=offset)
        if day.weekday() not in days:
            continue
        start, end = _local(day, window.start_hour, zone), _local(day, window.end_hour, zone)
        if local < start:
            return start.astimezone(UTC)
        if local < end:
            return at.astimezone(UTC)
    raise AssertionError("unreachable: a window with at least one day opens within a week")


def due_at(after: datetime, delay: timedelta, window: SendWindow | None, time_zone: str) -> datetime:
    """A step is due `delay` after `after`, moved to the next opening of its window.

    Later steps are computed from the actual delivery of the previous one, so a step moved by its
    window shifts every later step with it.
    """
    return next_opening(after + delay, window, time_zone)


COMING_SOON = timedelta(hours=1)


def next_execution_indicator(due: datetime | None, now: datetime) -> str:
    """Seed 000 Next Execution: Overdue / Coming soon (within the hour) / Waiting / — (nothing next)."""
    if due is None:
        return "—"
    if due < now:
        return "Overdue"
    return "Coming soon" if due - now <= COMING_SOON else "Waiting"


def dispatch_sort_key(batch_number: int, priority: bool, enrolled_at: datetime) -> tuple[int, datetime]:
    """Order in which the dispatcher takes enrollments: by batch, priority first within a batch."""
    return batch_number, PRIORITY_SORT_AT if priority else enrolled_at
