"""Scenarios whose roles are being built on other branches (issue 5). Not run, and no numbers faked.

The merge of the scheduler and the dispatcher fills these in; until then each returns a `not_run` row
with the reason, and `bench/results.json` says so.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.common import Result, Sizes, not_run

SCHEDULER_TARGET = "100,000 timers due at once all emitted within 30 s; at 2,000 due/s lateness p99 < 1 s"
END_TO_END_TARGET = "Enroll to first email accepted by a local SMTP sink: p99 < 1 s at 200 enrollments/s"


async def scheduler(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    """TO FILL at the scheduler's merge: (1) insert 100,000 due timers into the read model, start the
    scheduler, time until 100,000 StepDue commands are on the commands topic; (2) timers falling due at
    a steady 2,000/s, lateness = StepDue produce time - due_at, p50/p99. value: seconds for (1)."""
    return not_run(
        "s",
        SCHEDULER_TARGET,
        "the scheduler role is not on this branch yet (issue 5, built elsewhere); nothing measured",
        timers=100_000,
        steady_rate_per_s=2_000,
    )


async def end_to_end(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    """TO FILL at the dispatcher's merge: run decider, projector, scheduler and dispatcher against a local
    SMTP sink (tests/servers/smtp.py), publish Enrolls at 200/s into a campaign whose first step is due
    immediately, latency = SMTP accept time - Enroll publish time, p50/p99. value: p99 seconds."""
    return not_run(
        "s",
        END_TO_END_TARGET,
        "needs the scheduler and the dispatcher (issue 5, built elsewhere); nothing measured",
        enrollments_per_s=200,
    )
