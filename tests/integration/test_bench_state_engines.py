"""The state engine bench runs through the harness at a tiny size: every engine loads, reopens at the
offset written with the last batch, finds every key it was asked for and takes a tail; the row lands in
results.json. No timing is judged (benchmarks report, they never gate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.common import Sizes
from bench.run import run_scenarios, table
from bench.state_engines import CHOSEN, ENGINES
from rich.console import Console

from enrollstream import stack
from enrollstream.config import Settings


@pytest.mark.soak
async def test_state_engines_bench_measures_every_engine_at_2000_contacts(
    endpoints: stack.Endpoints, tmp_path: Path
) -> None:
    sizes = Sizes.quick()
    sizes.reps = 1
    sizes.state_engine_contacts = 2_000
    sizes.state_engine_gets = 2_000
    sizes.state_engine_overwrites = 1_000
    settings = Settings(cache_dir=tmp_path / "cache")
    console = Console(file=(tmp_path / "bench.log").open("w"), width=160)
    results = await run_scenarios(endpoints, settings, sizes, ("state_engines",), console=console)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    row = json.loads(path.read_text())["state_engines"]

    assert row["status"] == "measured", row
    assert row["unit"] == "s" and row["value"] > 0 and row["baseline"] > 0
    assert row["target_met"] in (True, False)
    params = row["params"]
    assert params["chosen"] == CHOSEN and params["contacts"] == 2_000
    assert set(params["engines"]) == set(ENGINES) == set(params["settings"])
    for engine, figures in params["engines"].items():
        assert figures["contacts"] == 2_000, engine
        assert figures["load_seconds"] > 0 and figures["disk_bytes_per_contact"] > 0, engine
        assert figures["gets"] == 2_000 and figures["gets_per_s"] > 0, engine
        assert figures["tail_keys"] == 1_000 and figures["tail_keys_per_s"] > 0, engine
    # the scratch stores are gone: a bench leaves no gigabytes behind in the cache dir
    assert not any((tmp_path / "cache").iterdir())
    console.print(table(json.loads(path.read_text())))
