"""`python -m bench [--quick] [--only decider,projector] [--profile] [--output PATH]`.

Brings the local stack up (or reuses it, or uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL), runs the
scenarios in order, prints one row per scenario and writes results.json, then stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import (
    broker,
    decider,
    dispatcher,
    end_to_end,
    machine,
    pending,
    projector,
    resident,
    restore,
    scale_out,
    snapshots,
    state_engines,
)
from bench.common import SCENARIOS, Result, Sizes, not_run
from bench.peer import scenario as peer
from enrollstream import stack
from enrollstream.config import Settings

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results.json"
PROFILES = HERE / "profiles"


def _profiler(console: Console) -> Callable[[str], contextlib.AbstractContextManager[None]]:
    from pyinstrument import Profiler  # only with --profile (dev extra)

    @contextlib.contextmanager
    def profile(name: str) -> Iterator[None]:
        PROFILES.mkdir(exist_ok=True)
        profiler = Profiler(interval=0.001)
        profiler.start()
        try:
            yield
        finally:
            profiler.stop()
            (PROFILES / f"{name}.txt").write_text(profiler.output_text(unicode=False, color=False))
            (PROFILES / f"{name}.html").write_text(profiler.output_html())
            console.print(f"profile of one {name} run: {PROFILES / name}.txt / .html")

    return profile


async def run_scenarios(
    endpoints: stack.Endpoints,
    settings: Settings,
    sizes: Sizes,
    only: tuple[str, ...] = SCENARIOS,
    *,
    kafka_version: str | None = None,
    profile: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Every scenario in `only` (the rest: not_run), as the results.json object."""
    console = console or Console()
    started = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:7.1f}s[/dim] {message}")

    bootstrap = endpoints.kafka_bootstrap_servers
    server_url = endpoints.database_url
    profiler = _profiler(console) if profile else None
    out: dict[str, Any] = {
        "mode": sizes.mode,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": await machine.describe(server_url, kafka_version),
    }
    say(f"machine: {out['machine']}")
    results: dict[str, Result] = {}
    for name in SCENARIOS:
        if name not in only:
            results[name] = not_run("", "", "not selected (--only)")
            continue
        say(f"[bold]{name}[/bold]")
        try:
            if name == "decider":
                results[name] = await decider.scenario(bootstrap, sizes, say, profiler)
            elif name == "peer":
                results[name] = await peer.scenario(bootstrap, sizes, say)
            elif name == "projector":
                results[name] = await projector.scenario(bootstrap, server_url, sizes, say, profiler)
            elif name == "scheduler":
                results[name] = await pending.scheduler(bootstrap, server_url, sizes, say)
            elif name == "end_to_end":
                results[name] = await end_to_end.scenario(bootstrap, server_url, sizes, say)
            elif name == "restore":
                results[name] = await restore.scenario(bootstrap, sizes, say)
            elif name == "decider_resident":
                results[name] = await resident.scenario(bootstrap, sizes, say)
            elif name == "snapshots":
                results[name] = await snapshots.scenario(sizes, say)
            elif name == "state_engines":
                results[name] = await state_engines.scenario(sizes, say, settings.cache_dir)
            elif name == "broker":
                results[name] = await broker.scenario(bootstrap, settings.cache_dir, sizes, say)
            elif name == "dispatcher":
                results[name] = await dispatcher.scenario(bootstrap, server_url, sizes, say, profiler)
            elif name == "scale_out":
                results[name] = await scale_out.scenario(bootstrap, server_url, sizes, say)
        except Exception as exc:
            say(f"[red]{name} failed[/red]: {exc!r}")
            console.print(traceback.format_exc())
            results[name] = Result(status="failed", unit="", target="", reason=repr(exc)[:2000])
    out["machine"]["load_average_at_end"] = machine.load_average()
    out["seconds"] = round(time.monotonic() - started, 1)
    for name in SCENARIOS:
        out[name] = results[name].as_json(sizes.mode)
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("s", "ms"):
        return f"{value:,.3f} {unit}"
    return f"{value:,.0f} {unit}".strip()


def table(results: dict[str, Any]) -> Table:
    m = results["machine"]
    title = (
        f"enrollstream benchmarks ({results['mode']}): {m['cpus']} x {m['cpu_model']}, {m['ram_gib']} GiB, "
        f"Python {m['python']}, {m['kafka']}, PostgreSQL {m['postgres']}, "
        f"load {m['load_average_at_start']} -> {m.get('load_average_at_end')}"
    )
    t = Table(title=title, title_justify="left")
    for column in ("scenario", "status", "value", "baseline", "ratio", "target", "met"):
        t.add_column(column)
    for name in SCENARIOS:
        r = results[name]
        met = {True: "yes", False: "NO", None: "-"}[r["target_met"]]
        t.add_row(
            name,
            r["status"] if r["status"] == "measured" else f"{r['status']}: {r['reason']}",
            _fmt(r["value"], r["unit"]),
            _fmt(r["baseline"], r["unit"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            r["target"],
            met,
        )
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke, < 2 minutes)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 3)")
    parser.add_argument("--profile", action="store_true", help="also profile one run of a role")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write results.json")
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.reps:
        sizes.reps = args.reps
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    console = Console(width=160) if not Console().is_terminal else Console()
    settings = Settings()
    state = stack.up(settings)
    try:
        results = asyncio.run(
            run_scenarios(
                state.endpoints,
                settings,
                sizes,
                only,
                kafka_version=state.kafka.version,
                profile=args.profile,
                console=console,
            )
        )
    finally:
        if state.started:
            stack.down(settings)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    console.print(table(results))
    console.print(f"results: {args.output}")
    failed = [name for name in SCENARIOS if results[name]["status"] == "failed"]
    return 1 if failed else 0
