"""The bounds every input is checked against where it enters (docs/client.md "Bounds").

A command that breaks one is schema-invalid: the decider's runtime dead-letters it, so it never becomes
an event that PostgreSQL could refuse or that date arithmetic could overflow on.

- Times (`Instant`): time-zone aware, within [EARLIEST, LATEST) once in UTC, normalised to UTC.
  `0001-01-01T00:00:00+01:00` or `9999-12-31T23:59:59-01:00` are refused, never an OverflowError.
- Durations (`Duration`): 0 <= d <= MAX_DURATION (3650 days). Any sum the decider makes of a bounded
  time and a few bounded durations stays far inside Python's and PostgreSQL's calendars.
- Integers (`Int32`): what a PostgreSQL `integer` column stores, at most 2^31-1.
- Ids (`Id`): 1..MAX_ID_LENGTH characters, no control character and no KEY_SEPARATOR, so the
  aggregate key `account_id/contact_id` names one contact only.
- Strings: `Line` has no control character (Unicode Cc: U+0000..U+001F, U+007F..U+009F) at all
  (names, addresses, ids that are not in keys); `Text` allows tab, line feed and carriage return
  (bodies, notes, details). Neither has NUL, which PostgreSQL refuses in text and jsonb.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field

KEY_SEPARATOR = "/"  # between account_id and contact_id in the aggregate key

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MAX_DURATION = timedelta(days=3650)
INT32_MAX = 2**31 - 1
MAX_ID_LENGTH = 256

_CONTROL = "\x00-\x1f\x7f-\x9f"  # Unicode's control characters (Cc): C0, DEL and C1
LINE_PATTERN = f"^[^{_CONTROL}]*$"
TEXT_PATTERN = "^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
ID_PATTERN = f"^[^{_CONTROL}{KEY_SEPARATOR}]+$"


def _bounded_instant(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time out of range: must be within {EARLIEST.date()}..{LATEST.date()}") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"time out of range: must be within {EARLIEST.date()}..{LATEST.date()}")
    return utc


def _bounded_duration(value: timedelta) -> timedelta:
    if not timedelta(0) <= value <= MAX_DURATION:
        raise ValueError(f"duration out of range: must be within 0..{MAX_DURATION.days} days")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_bounded_instant)]
Duration = Annotated[timedelta, AfterValidator(_bounded_duration)]
Int32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
Line = Annotated[str, Field(pattern=LINE_PATTERN)]
Text = Annotated[str, Field(pattern=TEXT_PATTERN)]
