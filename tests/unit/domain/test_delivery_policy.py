"""The pure delivery policy: retry schedule and the per-sender rate limiter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrollstream.domain.commands import BounceType, DeliveryOutcome
from enrollstream.domain.delivery_policy import (
    DAY,
    HOUR,
    Final,
    Retry,
    RetryPolicy,
    SendLater,
    SendLimits,
    SendNow,
    SendOutcome,
    SendResult,
    WindowLimit,
    WindowRanks,
    next_send_at,
    next_send_at_ranked,
    rate_decision,
    report_fields,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
TICK = timedelta(microseconds=1)  # datetime's resolution


# --- Retries ----------------------------------------------------------------------------------------


def test_temporary_failures_back_off_exponentially_then_fail() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=timedelta(minutes=10), factor=2)
    assert policy.decide(SendOutcome.TEMPORARY, 1, T0) == Retry(attempt=2, at=T0 + timedelta(minutes=10))
    assert policy.decide(SendOutcome.TEMPORARY, 2, T0) == Retry(attempt=3, at=T0 + timedelta(minutes=20))
    assert policy.decide(SendOutcome.TEMPORARY, 3, T0) == Retry(attempt=4, at=T0 + timedelta(minutes=40))
    assert policy.decide(SendOutcome.TEMPORARY, 4, T0) == Final(DeliveryOutcome.FAILED)
    assert policy.schedule(T0) == [T0 + timedelta(minutes=m) for m in (10, 30, 70)]


def test_the_backoff_is_capped() -> None:
    policy = RetryPolicy(max_attempts=50, base_delay=timedelta(minutes=15), max_delay=timedelta(hours=2))
    assert policy.delay_after(1) == timedelta(minutes=15)
    assert policy.delay_after(4) == timedelta(hours=2)
    assert policy.delay_after(49) == timedelta(hours=2)


@pytest.mark.parametrize(
    ("outcome", "final"),
    [
        (SendOutcome.SENT, Final(DeliveryOutcome.SENT)),
        (SendOutcome.BOUNCED, Final(DeliveryOutcome.BOUNCED, bounce_type=BounceType.HARD)),
        (SendOutcome.UNKNOWN, Final(DeliveryOutcome.UNKNOWN)),
        (SendOutcome.ERROR, Final(DeliveryOutcome.ERROR)),
        (SendOutcome.INVALID_RECIPIENT, Final(DeliveryOutcome.INVALID_RECIPIENT)),
    ],
)
def test_only_temporary_outcomes_are_retried(outcome: SendOutcome, final: Final) -> None:
    assert RetryPolicy(max_attempts=5).decide(SendResult(outcome), 1, T0) == final


def test_report_fields_map_a_result_onto_delivery_reported() -> None:
    fields = report_fields(SendResult(SendOutcome.TEMPORARY, "451 try later", 451))
    assert fields["outcome"] is DeliveryOutcome.FAILED and fields["retryable"] is True
    fields = report_fields(SendResult(SendOutcome.BOUNCED, "550 no such user", 550))
    assert fields["outcome"] is DeliveryOutcome.BOUNCED and fields["bounce_type"] is BounceType.HARD
    fields = report_fields(SendResult(SendOutcome.SENT, "250 ok", 250, "queued as X"))
    assert fields["provider_message_id"] == "queued as X"
    assert report_fields(SendResult(SendOutcome.UNKNOWN))["retryable"] is False
    fields = report_fields(SendResult(SendOutcome.INVALID_RECIPIENT, "not an E.164 number: '0800'"))
    assert fields["outcome"] is DeliveryOutcome.INVALID_RECIPIENT and fields["retryable"] is False


@given(
    max_attempts=st.integers(1, 8),
    base=st.integers(1, 120),
    factor=st.integers(1, 4),
    cap=st.integers(1, 24 * 60),
)
def test_retry_times_never_shrink_and_respect_the_cap(
    max_attempts: int, base: int, factor: int, cap: int
) -> None:
    policy = RetryPolicy(max_attempts, base * MINUTE, factor, cap * MINUTE)
    times = policy.schedule(T0)
    assert len(times) == max_attempts - 1
    gaps = [b - a for a, b in zip([T0, *times], times, strict=False)]
    assert all(gap <= cap * MINUTE for gap in gaps)
    assert gaps == sorted(gaps)


# --- The rate limiter -------------------------------------------------------------------------------


def test_within_the_limits_a_send_goes_now() -> None:
    limits = SendLimits(per_hour=2, per_day=10)
    assert rate_decision([T0 - 30 * MINUTE], T0, limits) == SendNow()
    assert rate_decision([], T0, limits) == SendNow()


def test_a_full_hour_waits_for_its_oldest_send_to_leave_the_window() -> None:
    limits = SendLimits(per_hour=2, per_day=10)
    sent = [T0 - 50 * MINUTE, T0 - 10 * MINUTE]
    assert rate_decision(sent, T0, limits) == SendLater(T0 + 10 * MINUTE)


def test_a_full_day_waits_for_the_rolling_24_hours() -> None:
    limits = SendLimits(per_hour=100, per_day=3)
    sent = [T0 - 20 * HOUR, T0 - 5 * HOUR, T0 - 2 * HOUR]
    assert next_send_at(sent, T0, limits) == T0 + 4 * HOUR


@st.composite
def limits_strategy(draw: st.DrawFn) -> SendLimits:
    per_hour = draw(st.integers(1, 6))
    per_day = draw(st.integers(1, 20))
    extra = draw(
        st.lists(
            st.builds(WindowLimit, st.integers(1, 4), st.integers(1, 90).map(lambda m: m * MINUTE)),
            max_size=1,
        )
    )
    return SendLimits(per_hour=per_hour, per_day=per_day, extra=tuple(extra))


def _count(sends: list[datetime], end: datetime, window: timedelta) -> int:
    """Sends in the half-open window (end - window, end]."""
    return sum(1 for s in sends if end - window < s <= end)


@settings(max_examples=200, deadline=None)
@given(limits=limits_strategy(), gaps=st.lists(st.integers(0, 600), min_size=1, max_size=80))
def test_a_sender_that_always_waits_as_told_never_exceeds_any_limit(
    limits: SendLimits, gaps: list[int]
) -> None:
    sends: list[datetime] = []
    now = T0
    for gap in gaps:
        now = max(now + gap * MINUTE, sends[-1] if sends else now)
        at = next_send_at(sends, now, limits)
        assert at >= now
        sends.append(at)
    # The count of a window only grows at a send, so checking the windows that end at each send suffices.
    for window in limits.windows:
        assert max(_count(sends, s, window.window) for s in sends) <= window.limit


history = st.lists(st.integers(0, 3 * 24 * 60), max_size=60)


@settings(max_examples=300, deadline=None)
@given(limits=limits_strategy(), offsets=history)
def test_the_answer_is_the_earliest_instant_that_respects_every_limit(
    limits: SendLimits, offsets: list[int]
) -> None:
    now = T0 + 3 * DAY
    sends = [T0 + m * MINUTE for m in offsets]  # all at or before now

    def allowed(t: datetime) -> bool:
        return all(_count(sends, t, w.window) + 1 <= w.limit for w in limits.windows)

    at = next_send_at(sends, now, limits)
    assert at >= now
    assert allowed(at)
    if at > now:
        assert not allowed(at - TICK)  # one microsecond earlier breaks some limit
    # And a brute force over the minute grid finds nothing earlier.
    t = now
    while t < at:
        assert not allowed(t)
        t += MINUTE


@settings(max_examples=200, deadline=None)
@given(limits=limits_strategy(), offsets=history, ahead=st.lists(st.integers(1, 600), max_size=5))
def test_sends_recorded_after_now_still_give_a_safe_answer(
    limits: SendLimits, offsets: list[int], ahead: list[int]
) -> None:
    now = T0 + 3 * DAY
    sends = [T0 + m * MINUTE for m in offsets] + [now + m * MINUTE for m in ahead]
    at = next_send_at(sends, now, limits)
    with_new = [*sends, at]
    for window in limits.windows:
        ends = [at] + [s for s in sends if at <= s < at + window.window]
        assert max(_count(with_new, end, window.window) for end in ends) <= window.limit


def _ranks(sends: list[datetime], now: datetime, limits: SendLimits, room: int) -> list[WindowRanks]:
    """What the dispatcher's ledger query answers per window (sender_window_ranks in ledger.sql)."""
    out = []
    for w in limits.windows:
        in_window = sorted((s for s in sends if s > now - w.window), reverse=True)
        first = WindowRanks.first_rank(w.limit, room)
        out.append(
            WindowRanks(
                window=w,
                ahead=sum(1 for s in sends if s > now),
                room=room,
                ranked=tuple(in_window[first : first + room]),
            )
        )
    return out


@settings(max_examples=400, deadline=None)
@given(
    limits=limits_strategy(),
    offsets=history,
    ahead=st.lists(st.integers(1, 600), max_size=3),
    room=st.integers(1, 30),
)
def test_a_batch_decided_from_the_ranks_alone_is_decided_as_from_every_recorded_send(
    limits: SendLimits, offsets: list[int], ahead: list[int], room: int
) -> None:
    """The dispatcher reads, per window, only the sends a batch of `room` can look at; each of the
    batch's sends gets the answer `next_send_at` gives over every send of the window plus those the
    batch allowed before it."""
    now = T0 + 3 * DAY
    sends = [T0 + m * MINUTE for m in offsets] + [now + m * MINUTE for m in ahead]
    ranks = _ranks(sends, now, limits, room)
    allowed: list[datetime] = []
    for _ in range(room):
        expected = next_send_at([*sends, *allowed], now, limits)
        assert next_send_at_ranked(ranks, now, len(allowed)) == expected
        if expected <= now:
            allowed.append(now)
