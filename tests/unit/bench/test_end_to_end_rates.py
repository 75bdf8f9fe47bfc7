"""The end-to-end bench's search for the highest rate at which p99 stays under 2 s."""

from __future__ import annotations

from bench.end_to_end import RateRun, _next_rate


def run(rate: int, p99: float, received: int | None = None) -> RateRun:
    sent = rate * 60
    return RateRun(rate, sent, sent if received is None else received, p99 / 2, p99, 1.0, {}, 0.5, {})


def test_a_met_target_searches_up_by_half_until_a_miss_then_bisects() -> None:
    runs = [run(500, 1.2)]
    assert _next_rate(runs, 500) == 750
    runs.append(run(750, 1.5))
    assert _next_rate(runs, 500) == 1125
    runs.append(run(1125, 8.0))
    assert _next_rate(runs, 500) == 937
    runs.append(run(937, 2.1))
    assert _next_rate(runs, 500) == 843


def test_a_missed_target_bisects_down_then_between_the_last_pass_and_the_lowest_miss() -> None:
    runs = [run(500, 9.0)]
    assert _next_rate(runs, 500) == 250
    runs.append(run(250, 1.0))
    assert _next_rate(runs, 500) == 375
    runs.append(run(375, 2.5))
    assert _next_rate(runs, 500) == 312
    runs.append(run(312, 1.9))
    assert _next_rate(runs, 500) == 343
    runs.append(run(343, 1.9))
    assert _next_rate(runs, 500) == 359
    runs.append(run(359, 1.9))
    assert _next_rate(runs, 500) is None  # within 25/s (5 % of the target) of the lowest miss


def test_emails_missing_count_as_a_miss_whatever_the_p99_of_those_that_arrived() -> None:
    assert not run(500, 0.5, received=29_000).met
    assert _next_rate([run(500, 0.5, received=29_000)], 500) == 250
