"""The benchmark harness runs: its decider and projector scenarios at tiny sizes, and the shape of
results.json. Nothing here looks at a timing (benchmarks report, they never gate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.common import SCENARIOS, Sizes
from bench.run import run_scenarios, table
from rich.console import Console

from enrollstream import stack
from enrollstream.config import Settings

FIELDS = {"status", "mode", "value", "unit", "baseline", "ratio", "target", "params", "reason", "runs"}


@pytest.mark.soak
async def test_quick_bench_decider_and_projector_write_results_json(
    endpoints: stack.Endpoints, tmp_path: Path
) -> None:
    sizes = Sizes.quick()
    sizes.reps = 1
    sizes.decider_commands, sizes.decider_warmup = 300, 50
    sizes.projector_events, sizes.projector_warmup = 400, 100
    sizes.scheduler_burst, sizes.scheduler_steady_seconds = 300, 1
    sizes.end_to_end_rate, sizes.end_to_end_seconds = 20, 1
    console = Console(file=(tmp_path / "bench.log").open("w"), width=160)
    results = await run_scenarios(
        endpoints, Settings(), sizes, ("decider", "projector", "scheduler", "end_to_end"), console=console
    )
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    loaded = json.loads(path.read_text())

    assert loaded["mode"] == "quick"
    assert {"cpu_model", "cpus", "ram_gib", "python", "postgres"} <= set(loaded["machine"])
    for name in SCENARIOS:
        assert set(loaded[name]) >= FIELDS, name
    for name in ("decider", "projector"):
        row = loaded[name]
        assert row["status"] == "measured", row
        assert row["value"] > 0 and row["baseline"] > 0
        assert abs(row["ratio"] - row["value"] / row["baseline"]) < 0.01
        assert len(row["runs"]) == 1 and len(row["baseline_runs"]) == 1
        assert row["target"] and row["target_met"] in (True, False)
    assert loaded["decider"]["unit"] == "commands/s" and loaded["decider"]["params"]["commands"] == 300
    assert loaded["projector"]["unit"] == "events/s" and loaded["projector"]["params"]["events"] == 400
    for name in ("scheduler", "end_to_end"):
        assert loaded[name]["status"] == "measured", loaded[name]
        assert loaded[name]["value"] > 0 and loaded[name]["target_met"] in (True, False)
    assert loaded["scheduler"]["params"]["timers_at_once"] == 300
    assert loaded["scheduler"]["params"]["lateness_p99_s"] >= loaded["scheduler"]["params"]["lateness_p50_s"]
    e2e = loaded["end_to_end"]["params"]
    assert e2e["enrollments_per_s"] == 20 and [r["rate"] for r in e2e["rates"]] == [20]
    assert e2e["rates"][0]["emails"] == e2e["rates"][0]["enrolls"] == 20
    assert set(e2e["rates"][0]["cores"]) == {
        "decider", "projector", "scheduler", "dispatcher", "smtp sink",
        "kafka broker", "postgresql", "bench (publisher, sink reader)",
    }  # fmt: skip
    hops = list(e2e["p50_s_from_enroll_to"].values())
    assert len(hops) == 4 and hops == sorted(hops)  # each hop after the one before
    for name in ("restore", "broker"):
        assert loaded[name]["status"] == "not_run"  # not selected here
    console.print(table(loaded))  # the table renders from what was written


@pytest.mark.soak
async def test_quick_bench_restore_and_resident_contacts_measure_the_state_store(
    endpoints: stack.Endpoints, tmp_path: Path
) -> None:
    sizes = Sizes.quick()
    sizes.reps = 1
    sizes.restore_contacts = (600,)
    sizes.resident_contacts, sizes.resident_commands = 900, 150
    console = Console(file=(tmp_path / "bench.log").open("w"), width=160)
    results = await run_scenarios(
        endpoints, Settings(), sizes, ("restore", "decider_resident"), console=console
    )

    restore = results["restore"]
    assert restore["status"] == "measured", restore
    size = restore["params"]["sizes"]["600"]
    assert size["contacts"] == 600 and size["warm_tail_records"] == 600  # the tail is bounded by contacts
    assert size["cold_seconds"] > 0 and size["warm_seconds"] > 0 and size["disk_bytes_per_contact"] > 0
    resident = results["decider_resident"]
    assert resident["status"] == "measured", resident
    assert resident["params"]["resident_contacts"] == 900 and resident["params"]["commands"] == 150
    assert resident["value"] > 0 and resident["params"]["decider_with_no_resident_contacts"] > 0
