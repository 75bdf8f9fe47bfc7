"""The scale_out bench scenario runs: the decider and the dispatcher each as 1 and as 2 real worker processes
on the same held-back workload, each doing all of it. Nothing here looks at a timing (benchmarks report,
they never gate)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.common import Sizes
from bench.run import run_scenarios
from rich.console import Console

from enrollstream import stack
from enrollstream.config import Settings


@pytest.mark.soak
async def test_quick_scale_out_runs_the_decider_and_the_dispatcher_as_one_and_two_processes(
    endpoints: stack.Endpoints, tmp_path: Path
) -> None:
    sizes = Sizes.quick()
    sizes.reps, sizes.decider_commands = 1, 300
    console = Console(file=(tmp_path / "bench.log").open("w"), width=160)
    results = await run_scenarios(endpoints, Settings(), sizes, ("scale_out",), console=console)

    row = results["scale_out"]
    assert row["status"] == "measured", row
    assert row["unit"] == "commands/s" and row["params"]["commands"] == 300
    assert row["params"]["processes"] == [1, 2]
    assert len(row["runs"]) == 1 and len(row["baseline_runs"]) == 1
    assert row["value"] > 0 and row["baseline"] > 0
    assert abs(row["ratio"] - row["value"] / row["baseline"]) < 0.01
    assert row["target_met"] in (True, False)
    dispatcher = row["params"]["dispatcher"]
    assert dispatcher["emails"] == 1_000 and dispatcher["per_s_1"] > 0 and dispatcher["per_s_2"] > 0
    assert len(dispatcher["runs_1"]) == 1 and len(dispatcher["runs_2"]) == 1
