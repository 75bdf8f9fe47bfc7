"""The `enrollstream` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import asyncpg
import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from enrollstream import stack as local_stack
from enrollstream.adapters.kafka.topics import TopicMismatchError, Topics, ensure_topics
from enrollstream.adapters.postgres.migrations import MigrationError, migrate
from enrollstream.config import Settings, load_settings

app = typer.Typer(help="enrollstream: event-sourced drip-campaign enrollments on Kafka and Postgres.")
stack_app = typer.Typer(
    help="The local Kafka + PostgreSQL stack used by the demo, the tests and the benchmarks."
)
app.add_typer(stack_app, name="stack")

console = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def _quiet_libraries() -> None:
    # aiokafka logs every refused connection while a broker starts; the CLI reports outcomes instead.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="platformdirs")


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Known failures print one readable line and exit non-zero, never a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _quiet_libraries()
        try:
            return func(*args, **kwargs)
        except (local_stack.StackError, MigrationError, TopicMismatchError) as exc:
            err.print(f"[red]error:[/red] {exc}")
        except (KafkaError, OSError, asyncpg.PostgresError, TimeoutError) as exc:
            err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(code=1)

    return wrapper


def endpoints(settings: Settings) -> local_stack.Endpoints:
    """The servers to talk to: the environment's, else the running local stack's."""
    if settings.kafka_bootstrap_servers and settings.database_url:
        return local_stack.Endpoints(settings.kafka_bootstrap_servers, settings.database_url)
    state = local_stack.status(settings)
    if not state or not all(service.get("ready") for service in state.values()):
        raise local_stack.StackError(
            "no Kafka/PostgreSQL to talk to: set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL, "
            "or run `enrollstream stack up`"
        )
    return local_stack.Endpoints(state["kafka"]["address"], state["postgres"]["address"])


@stack_app.command("up")
@friendly_errors
def stack_up() -> None:
    """Start Kafka and PostgreSQL (or reuse the running stack) and wait until both answer."""
    settings = load_settings()
    with console.status("bringing the stack up (the first run fetches Kafka with Maven)..."):
        state = local_stack.up(settings)
    _print_stack(local_stack.status(settings), started=state.started)
    console.print(
        f"export KAFKA_BOOTSTRAP_SERVERS={state.kafka.address}\nexport DATABASE_URL={state.postgres.address}"
    )


@stack_app.command("down")
@friendly_errors
def stack_down() -> None:
    """Stop what `stack up` started."""
    stopped = local_stack.down(load_settings())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
@friendly_errors
def stack_status() -> None:
    """Where each service comes from and whether it answers."""
    state = local_stack.status(load_settings())
    if not state:
        console.print("the stack is not up (run `enrollstream stack up`)")
        raise typer.Exit(code=1)
    _print_stack(state)
    if not all(service["ready"] for service in state.values()):
        raise typer.Exit(code=1)


def _print_stack(state: dict[str, dict[str, Any]], started: list[str] | None = None) -> None:
    table = Table("service", "source", "address", "version", "ready", "this call")
    for name, service in state.items():
        action = "" if started is None else ("started" if name in started else "reused")
        table.add_row(
            name,
            service["source"],
            service["address"],
            service.get("version") or "",
            "yes" if service["ready"] else "NO",
            action,
        )
    console.print(table)


@app.command("topics")
@friendly_errors
def topics_command() -> None:
    """Create the missing topics and check the existing ones (idempotent)."""
    settings = load_settings()
    target = endpoints(settings)
    topics = Topics(settings.topic_prefix)
    created = asyncio.run(
        ensure_topics(
            target.kafka_bootstrap_servers, topics, settings.partitions, settings.replication_factor
        )
    )
    table = Table("topic", "partitions", "config", "this call")
    for spec in topics.specs(settings.partitions):
        config = ", ".join(f"{k}={v}" for k, v in spec.config.items())
        table.add_row(
            spec.name, str(spec.partitions), config, "created" if spec.name in created else "exists"
        )
    console.print(table)


@app.command("migrate")
@friendly_errors
def migrate_command() -> None:
    """Apply the pending `projections/` migrations (safe to run from many processes at once)."""
    target = endpoints(load_settings())

    async def run() -> list[str]:
        conn = await asyncpg.connect(target.database_url)
        try:
            return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
        finally:
            await conn.close()

    applied = asyncio.run(run())
    console.print(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")


@app.command("worker")
@friendly_errors
def worker_command(
    roles: str = typer.Option(
        "decider,projector",
        help="comma-separated roles to run in this process: decider, projector, scheduler",
    ),
) -> None:
    """Run the worker roles until SIGTERM or Ctrl-C (then drain and commit)."""
    from enrollstream.adapters.postgres.migrations import pending_migrations
    from enrollstream.runtime.worker import Worker, parse_roles

    settings = load_settings()
    target = endpoints(settings)
    logging.getLogger("enrollstream").setLevel(logging.INFO)

    async def run() -> None:
        conn = await asyncpg.connect(target.database_url)
        try:
            behind = await pending_migrations(conn)
        finally:
            await conn.close()
        if behind:
            raise MigrationError(
                f"the database schema is behind ({len(behind)} pending migrations); "
                "run `enrollstream migrate`"
            )
        worker = Worker(settings, target.kafka_bootstrap_servers, target.database_url, parse_roles(roles))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        console.print(f"worker running {', '.join(worker.roles)}; Ctrl-C to stop")
        await worker.run()

    asyncio.run(run())


@app.command("replay")
@friendly_errors
def replay_command(
    keep: bool = typer.Option(False, help="keep the rebuilt schema for inspection"),
) -> None:
    """Rebuild the read models from the events topic into fresh tables and compare them with the live ones."""
    from enrollstream.runtime.replay import replay

    settings = load_settings()
    target = endpoints(settings)
    topics = Topics(settings.topic_prefix)
    with console.status("replaying the events topic into fresh tables..."):
        report = asyncio.run(replay(target.kafka_bootstrap_servers, topics.events, target.database_url, keep))
    table = Table("table", "live rows", "replayed rows", "only live", "only replayed", "equal")
    for t in report.tables:
        table.add_row(
            t.table,
            str(t.live_rows),
            str(t.replayed_rows),
            str(t.only_live),
            str(t.only_replayed),
            "yes" if t.equal else "NO",
        )
    console.print(table)
    console.print(f"{report.events} events replayed" + (f" into schema {report.schema}" if keep else ""))
    if report.live_lag:
        console.print(
            f"[yellow]the live projector is {report.live_lag} events behind; differences may be lag[/yellow]"
        )
    if not report.equal:
        raise typer.Exit(code=1)


@app.command("demo")
@friendly_errors
def demo_command(
    contacts: int = typer.Option(300, min=10, max=5000, help="how many contacts to enroll"),
    keep_stack: bool = typer.Option(False, help="leave the stack running afterwards"),
) -> None:
    """Bring the stack up, run the worker on a demo workload with progress, print what it did."""
    from enrollstream.demo import print_report, run_demo

    settings = load_settings()
    with console.status("bringing the stack up (the first run fetches Kafka with Maven)..."):
        state = local_stack.up(settings)
    kafka, postgres = state.kafka, state.postgres
    console.print(
        f"[bold]stack[/bold] Kafka {kafka.address} ({kafka.version or kafka.source}), "
        f"PostgreSQL {postgres.address.rsplit('@', 1)[-1]} ({postgres.version or postgres.source})"
    )
    try:
        report = asyncio.run(run_demo(settings, state.endpoints, contacts, console))
        print_report(report, console)
    finally:
        if state.started and not keep_stack:
            local_stack.down(settings)
            console.print(f"[bold]stack[/bold] stopped ({', '.join(state.started)})")


@app.command("chaos")
@friendly_errors
def chaos_command(
    kills: int = typer.Option(12, min=0, help="how many times the primary worker gets SIGKILL"),
    commands: int = typer.Option(4000, min=1, help="how many numbered commands the driver publishes"),
    contacts: int = typer.Option(400, min=10, help="over how many contacts"),
    seconds: float = typer.Option(150.0, min=1.0, help="how long the driver spreads the commands over"),
    seed: int = typer.Option(20261122, help="the workload's and the killer's random seed"),
) -> None:
    """Kill workers with SIGKILL while commands flow, then verify nothing was lost or done twice."""
    from enrollstream.chaos import ChaosPlan
    from enrollstream.chaos import main as chaos_main

    plan = ChaosPlan(commands=commands, contacts=contacts, kills=kills, seconds=seconds, seed=seed)
    code = chaos_main(plan, load_settings(), console)
    if code:
        raise typer.Exit(code=code)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
