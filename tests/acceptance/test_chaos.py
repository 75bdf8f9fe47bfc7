"""The crash suite, short: the same driver, killer and verifier as `make chaos`, with fewer kills."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from enrollstream import stack
from enrollstream.chaos import ChaosPlan, run_chaos


@pytest.mark.soak
async def test_workers_killed_mid_stream_lose_nothing_and_do_nothing_twice(
    endpoints: stack.Endpoints, tmp_path: Path
) -> None:
    plan = ChaosPlan(commands=800, contacts=120, kills=3, seconds=30, partitions=3, settle_timeout=120)
    report = await run_chaos(plan, endpoints, tmp_path, Console(width=200))
    assert report.kills == 3
    assert report.clean, "\n".join(report.details)
    assert report.duplicate_sends == 0
    assert re.fullmatch(
        r"chaos: kills=3 commands=800 lost=0 duplicate_events=0 projection_mismatches=0 "
        r"duplicate_sends=0 unknown_sends=\d+ row_mismatches=0",
        report.line(),
    )
    assert "messages received by the SMTP sink" in "\n".join(report.details)
