"""The stuck detector behind /healthz, driven by its real inputs (work seen, commits, failed attempts)
with a manual clock: the time-based rule cannot be waited out in a fast test against the broker."""

from __future__ import annotations

from enrollstream.observability import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_records_waiting_without_a_commit_for_longer_than_the_limit_is_stuck() -> None:
    clock = Clock()
    progress = Progress("decider", stuck_after_s=60, max_retries=5, clock=clock)
    progress.working(3)
    clock.now = 59
    progress.working(3)  # more records: the clock keeps running from the first
    assert progress.stuck() is None
    clock.now = 61
    assert progress.stuck() == "decider: partition 3: no progress for 61s with records waiting"
    progress.advanced(3)
    assert progress.stuck() is None


def test_an_idle_role_is_never_stuck() -> None:
    clock = Clock()
    progress = Progress("decider", stuck_after_s=60, clock=clock)
    progress.working(0)
    progress.advanced(0)
    clock.now = 10_000
    assert progress.stuck() is None


def test_failing_again_and_again_at_one_offset_is_stuck_moving_on_clears_it() -> None:
    progress = Progress("decider", max_retries=3, clock=Clock())
    assert progress.retried(1, 42) == 1
    assert progress.retried(1, 42) == 2
    assert progress.stuck() is None
    assert progress.retried(1, 42) == 3
    assert progress.stuck() == "decider: partition 1: offset 42 failed 3 times in a row"
    progress.advanced(1)
    assert progress.stuck() is None


def test_failures_at_different_offsets_do_not_add_up() -> None:
    progress = Progress("decider", max_retries=2, clock=Clock())
    progress.retried(1, 10)
    progress.retried(1, 11)
    assert progress.stuck() is None


def test_a_revoked_partition_is_forgotten() -> None:
    clock = Clock()
    progress = Progress("decider", stuck_after_s=1, max_retries=1, clock=clock)
    progress.working(2)
    progress.retried(2, 7)
    progress.forget(2)
    clock.now = 100
    assert progress.stuck() is None


def test_a_named_lane_of_work_is_stuck_after_failures_in_a_row_or_waiting_too_long() -> None:
    """Work that is not a partition (the scheduler's due timers, the relay's fetching): no offset."""
    clock = Clock()
    progress = Progress("scheduler", stuck_after_s=60, max_retries=2, clock=clock)
    progress.working("due timers")
    progress.retried("due timers")
    assert progress.stuck() is None
    progress.retried("due timers")
    assert progress.stuck() == "scheduler: due timers: failed 2 times in a row"
    progress.advanced("due timers")
    progress.working("due timers")  # a tick that hangs
    clock.now = 61
    assert progress.stuck() == "scheduler: due timers: no progress for 61s with work waiting"
    progress.advanced("due timers")
    assert progress.stuck() is None


def test_partitions_and_named_lanes_are_reported_together_partitions_first() -> None:
    progress = Progress("relay", max_retries=1, clock=Clock())
    progress.retried("fetching")
    progress.retried(2, 9)
    assert (
        progress.stuck()
        == "relay: partition 2: offset 9 failed 1 times in a row; fetching: failed 1 times in a row"
    )
