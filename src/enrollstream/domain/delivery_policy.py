"""Delivery policy: what a send attempt's outcome means, when to retry, and when a sender may send.

Pure: no I/O, no clock. `now` and the sender's recorded send times come in as arguments, so the
dispatcher (and a replay) get the same answer for the same inputs.

- `SendOutcome` classifies one attempt as the transport saw it (SMTP, SMS relay).
- `RetryPolicy` turns an outcome into a final `DeliveryOutcome` or a retry at a deterministic time
  (exponential backoff, no jitter: a replay or a second dispatcher computes the same time).
- `SendLimits` / `next_send_at` is the per-sender rate limiter over a per-hour and a rolling 24-hour
  limit. It never drops a message: it answers "now" or the earliest later instant that is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from .commands import BounceType, DeliveryOutcome

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)


class SendOutcome(StrEnum):
    """One attempt, as the transport saw it."""

    SENT = "sent"  # the server took responsibility (SMTP 250 after the content)
    # The recipient's server refused for good (SMTP 5xx at RCPT, or at DATA: the recipient's provider
    # refused the message): a hard bounce. The enrollment fails; the stage is bounced (seed 001).
    BOUNCED = "bounced"
    # The address or number cannot be a recipient at all (not an addr-spec, not E.164): nothing was
    # sent, no attempt can succeed. The enrollment fails (seed 002 "most likely an invalid phone number").
    INVALID_RECIPIENT = "invalid_recipient"
    # Refused or failed *before* the content was handed over (SMTP 4xx, connection refused, a drop
    # before DATA content): nothing was delivered, so another attempt is safe.
    TEMPORARY = "temporary"
    # The connection dropped or timed out *after* the content was handed over and before the final
    # reply: maybe delivered. Never retried automatically.
    UNKNOWN = "unknown"
    # Our side is wrong (credentials refused, TLS required but not offered, our sender address refused
    # at MAIL, a bad template): the enrollment stops with reason error; the contact is not to blame.
    ERROR = "error"


@dataclass(frozen=True)
class SendResult:
    """The outcome of one send attempt and what the other side said."""

    outcome: SendOutcome
    detail: str = ""
    code: int | None = None  # the SMTP reply code that decided the outcome, if any
    provider_message_id: str | None = None  # e.g. the server's "250 2.0.0 Ok: queued as 4Xy..." text

    @property
    def retryable(self) -> bool:
        return self.outcome is SendOutcome.TEMPORARY


@dataclass(frozen=True)
class Retry:
    """Try again: attempt `attempt` at `at`."""

    attempt: int
    at: datetime


@dataclass(frozen=True)
class Final:
    """No more attempts: report `outcome` (the DeliveryReported fields follow from it)."""

    outcome: DeliveryOutcome
    retryable: bool = False
    bounce_type: BounceType | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff without jitter: attempt n+1 waits base_delay * factor**(n-1), capped.

    Only `temporary` outcomes are retried, and only while `attempt < max_attempts`; after the limit
    the outcome is `failed`. `unknown` is final by policy (see docs/delivery.md).
    """

    max_attempts: int = 3
    base_delay: timedelta = timedelta(minutes=15)
    factor: int = 2
    max_delay: timedelta = timedelta(hours=12)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if self.base_delay < timedelta(0) or self.max_delay < timedelta(0):
            raise ValueError("delays must not be negative")

    def delay_after(self, attempt: int) -> timedelta:
        """How long to wait after attempt `attempt` (1-based) failed temporarily."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        delay = self.base_delay
        for _ in range(attempt - 1):
            delay *= self.factor
            if delay >= self.max_delay:
                return self.max_delay
        return min(delay, self.max_delay)

    def schedule(self, now: datetime) -> list[datetime]:
        """The retry times after a first attempt at `now` that keeps failing temporarily."""
        times: list[datetime] = []
        at = now
        for attempt in range(1, self.max_attempts):
            at = at + self.delay_after(attempt)
            times.append(at)
        return times

    def decide(self, result: SendResult | SendOutcome, attempt: int, now: datetime) -> Retry | Final:
        outcome = result.outcome if isinstance(result, SendResult) else result
        if outcome is SendOutcome.SENT:
            return Final(DeliveryOutcome.SENT)
        if outcome is SendOutcome.BOUNCED:
            return Final(DeliveryOutcome.BOUNCED, bounce_type=BounceType.HARD)
        if outcome is SendOutcome.UNKNOWN:
            return Final(DeliveryOutcome.UNKNOWN)
        if outcome is SendOutcome.ERROR:
            return Final(DeliveryOutcome.ERROR)
        if outcome is SendOutcome.INVALID_RECIPIENT:
            return Final(DeliveryOutcome.INVALID_RECIPIENT)
        if attempt < self.max_attempts:
            return Retry(attempt=attempt + 1, at=now + self.delay_after(attempt))
        return Final(DeliveryOutcome.FAILED, retryable=False)


def report_fields(result: SendResult) -> dict[str, object]:
    """The `DeliveryReportedData` fields for one attempt's result (the decider owns the retry).

    `temporary` is reported as a retryable `failed`; the decider schedules the next attempt while
    the campaign's `max_attempts` allows.
    """
    outcome = {
        SendOutcome.SENT: DeliveryOutcome.SENT,
        SendOutcome.BOUNCED: DeliveryOutcome.BOUNCED,
        SendOutcome.TEMPORARY: DeliveryOutcome.FAILED,
        SendOutcome.UNKNOWN: DeliveryOutcome.UNKNOWN,
        SendOutcome.ERROR: DeliveryOutcome.ERROR,
        SendOutcome.INVALID_RECIPIENT: DeliveryOutcome.INVALID_RECIPIENT,
    }[result.outcome]
    return {
        "outcome": outcome,
        "retryable": result.outcome is SendOutcome.TEMPORARY,
        "bounce_type": BounceType.HARD if result.outcome is SendOutcome.BOUNCED else None,
        "detail": result.detail,
        "provider_message_id": result.provider_message_id,
    }


# --- Per-sender rate limits ----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowLimit:
    """At most `limit` sends in any half-open window (t - window, t]."""

    limit: int
    window: timedelta

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a limit allows at least one send")
        if self.window <= timedelta(0):
            raise ValueError("a window must be positive")


@dataclass(frozen=True)
class SendLimits:
    """A sender's limits: per hour and per rolling 24 hours (None: unlimited)."""

    per_hour: int | None = None
    per_day: int | None = None
    extra: tuple[WindowLimit, ...] = field(default=())

    @property
    def windows(self) -> tuple[WindowLimit, ...]:
        limits = list(self.extra)
        if self.per_hour is not None:
            limits.append(WindowLimit(self.per_hour, HOUR))
        if self.per_day is not None:
            limits.append(WindowLimit(self.per_day, DAY))
        return tuple(limits)


@dataclass(frozen=True)
class SendNow:
    pass


@dataclass(frozen=True)
class SendLater:
    at: datetime


def next_send_at(sent_at: Iterable[datetime], now: datetime, limits: SendLimits) -> datetime:
    """The earliest instant t >= now at which one more send keeps every window within its limit.

    A send at s counts in the windows (t - W, t] with s <= t < s + W. With the recorded sends all at
    or before `now`, the window ending at t holds exactly the sends after t - W, so one more send at t
    is allowed iff the limit-th most recent send is at or before t - W: t >= that send + W. The
    earliest t is the largest of these bounds and `now`.

    Sends recorded after `now` (another process's clock ahead of ours) still give a safe answer:
    at most limit - 1 earlier sends are then after t - W, so no window ending at or after t can
    overflow; the answer may then be later than strictly necessary.
    """
    times = sorted(sent_at, reverse=True)
    earliest = now
    for window in limits.windows:
        if len(times) >= window.limit:
            earliest = max(earliest, times[window.limit - 1] + window.window)
    return earliest


@dataclass(frozen=True)
class WindowRanks:
    """The part of a sender's recorded sends that one window's limit can look at while a batch adds up
    to `room` sends at `now` (what the dispatcher reads instead of every send of the last day):

    - `ahead`: how many recorded sends are after `now` (another host's clock ahead of ours);
    - `ranked`: the recorded send times of ranks `first_rank(limit, room)` onwards, newest first (rank
      0 the newest), within the window (after now - window), at most `room` of them.

    `bound(now, added)` is `next_send_at`'s bound for this window once `added` (< room) sends at
    `now` joined the recorded ones: the sorted list `next_send_at` builds is the `ahead` sends after
    now, then the added ones, then the rest; it reads only its element limit - 1, which is always
    among `ranked`, an added send, or past the end (no bound). Property-tested against `next_send_at`."""

    window: WindowLimit
    ahead: int
    room: int
    ranked: tuple[datetime, ...]

    @staticmethod
    def first_rank(limit: int, room: int) -> int:
        return max(limit - room, 0)

    def bound(self, now: datetime, added: int) -> datetime | None:
        if not 0 <= added < self.room:
            raise ValueError(f"{added} sends added; these ranks cover fewer than {self.room}")
        i = self.window.limit - 1
        if self.ahead <= i < self.ahead + added:
            return now + self.window.window
        rank = i if i < self.ahead else i - added
        j = rank - self.first_rank(self.window.limit, self.room)
        if j >= len(self.ranked):
            return None  # fewer sends in the window than the limit: no bound
        return self.ranked[j] + self.window.window


def next_send_at_ranked(ranks: Iterable[WindowRanks], now: datetime, added: int) -> datetime:
    """`next_send_at` over every window's ranks, with `added` sends at `now` already allowed."""
    earliest = now
    for window in ranks:
        bound = window.bound(now, added)
        if bound is not None and bound > earliest:
            earliest = bound
    return earliest


def rate_decision(sent_at: Iterable[datetime], now: datetime, limits: SendLimits) -> SendNow | SendLater:
    at = next_send_at(sent_at, now, limits)
    return SendNow() if at <= now else SendLater(at)
