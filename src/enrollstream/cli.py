"""The `enrollstream` command line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import asyncpg
import typer
from aiokafka.errors import KafkaError
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from enrollstream import stack as local_stack
from enrollstream.adapters.kafka.topics import TopicMismatchError, Topics, ensure_topics
from enrollstream.adapters.postgres.migrations import MigrationError, migrate
from enrollstream.config import InvalidSettings, Settings, load_settings
from enrollstream.operations import OperatorError

app = typer.Typer(help="enrollstream: event-sourced drip-campaign enrollments on Kafka and Postgres.")
stack_app = typer.Typer(
    help="The local Kafka + PostgreSQL stack used by the demo, the tests and the benchmarks."
)
app.add_typer(stack_app, name="stack")

console = Console()
err = Console(stderr=True)


class DataTable(Table):
    """A table of data: a str cell or title is shown as written, never parsed as rich markup (a
    contact named `[/bold]` would raise MarkupError, `[link=...]` would become a hyperlink). Styled
    cells are built as `Text` explicitly."""

    def __init__(self, *headers: str, title: str | None = None) -> None:
        super().__init__(*headers, title=None if title is None else Text(title))

    def add_row(self, *cells: RenderableType | None, **kwargs: Any) -> None:
        super().add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells), **kwargs)


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
        except (local_stack.StackError, MigrationError, TopicMismatchError, OperatorError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
        except InvalidSettings as exc:
            # One line however narrow the terminal: it is the whole answer to "why did it not start".
            err.print(
                f"[red]error:[/red] {escape(str(exc))} (docs/delivery.md; or choose --roles)", soft_wrap=True
            )
        except (KafkaError, OSError, asyncpg.PostgresError, TimeoutError, LookupError) as exc:
            said = str(exc)
            name = type(exc).__name__
            err.print(f"[red]error:[/red] {escape(said if said.startswith(name) else f'{name}: {said}')}")
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
        f"export KAFKA_BOOTSTRAP_SERVERS={state.kafka.address}\nexport DATABASE_URL={state.postgres.address}",
        markup=False,
    )


@stack_app.command("down")
@friendly_errors
def stack_down() -> None:
    """Stop what `stack up` started."""
    stopped = local_stack.down(load_settings())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}", markup=False)


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
    table = DataTable("service", "source", "address", "version", "ready", "this call")
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
    table = DataTable("topic", "partitions", "config", "this call")
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
    console.print(f"applied: {', '.join(applied)}" if applied else "the schema is up to date", markup=False)


@app.command("worker")
@friendly_errors
def worker_command(
    roles: str | None = typer.Option(
        None,
        help="comma-separated roles: decider, projector, scheduler, dispatcher, inbound, relay, "
        "unsubscribe, api, receiver (default: decider, projector, scheduler, dispatcher, inbound)",
    ),
    processes: int = typer.Option(
        1,
        min=1,
        max=64,
        help="worker processes with these roles (children in the same consumer groups split the "
        'partitions); api and unsubscribe run in the first only. docs/architecture.md "Scale out"',
    ),
) -> None:
    """Run the worker roles until SIGTERM or Ctrl-C (then drain and commit)."""
    from enrollstream.observability import ObservabilityServer, Probe, configure_logging
    from enrollstream.runtime.supervisor import check_processes, die_with_supervisor
    from enrollstream.runtime.worker import Worker, check_settings, parse_roles

    settings = load_settings()
    chosen = parse_roles(roles)
    check_settings(settings, chosen)  # a role that cannot start stops everything before it begins
    check_processes(settings, chosen, processes)
    target = endpoints(settings)
    configure_logging(settings.log_format, worker=settings.worker_name)
    if processes > 1:
        _supervise(settings, target, chosen, processes)
        return
    die_with_supervisor()  # a supervised child does not outlive its supervisor
    log = logging.getLogger("enrollstream.worker")
    named = "" if settings.worker_name is None else f"{settings.worker_name}: "

    async def run() -> None:
        await _require_current_schema(target.database_url)
        worker = Worker(settings, target.kafka_bootstrap_servers, target.database_url, chosen)
        probe = Probe(
            started=lambda: worker.ready,
            stopping=worker.stop_event.is_set,
            failed=lambda: worker.failure,
            stuck=worker.stuck,
        )
        server = ObservabilityServer(probe, settings.http_host, settings.http_port)
        loop = asyncio.get_running_loop()

        def give_up() -> None:
            # Draining is bounded: a role stuck on an unreachable server must not keep the process.
            log.error("did not drain within %ss of the stop signal; exiting", settings.shutdown_timeout_s)
            os._exit(1)

        def stop() -> None:
            if not worker.stop_event.is_set():
                log.info("stop signal: draining the batch in flight, then committing and closing")
                worker.stop()
                loop.call_later(settings.shutdown_timeout_s, give_up)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await server.start()
        try:
            log.info("worker starting", extra={"roles": list(worker.roles)})
            console.print(
                f"{named}worker running {', '.join(worker.roles)}; Ctrl-C to stop",
                markup=False,
                highlight=False,
            )
            started = asyncio.Event()
            announce = asyncio.create_task(_announce_api(worker, started))
            try:
                await worker.run(started)
            finally:
                announce.cancel()
        finally:
            await server.stop()
        log.info("worker stopped cleanly")

    asyncio.run(run())


async def _require_current_schema(database_url: str) -> None:
    from enrollstream.adapters.postgres.migrations import pending_migrations

    conn = await asyncpg.connect(database_url)
    try:
        behind = await pending_migrations(conn)
    finally:
        await conn.close()
    if behind:
        raise MigrationError(
            f"the database schema is behind ({len(behind)} pending migrations); run `enrollstream migrate`"
        )


def _supervise(
    settings: Settings, target: local_stack.Endpoints, roles: tuple[str, ...], processes: int
) -> None:
    """`worker --processes N`: N children with these roles, restarted when they die, stopped together."""
    from enrollstream.runtime.supervisor import (
        RestartPolicy,
        Supervisor,
        child_environment,
        child_roles,
        worker_argv,
    )

    log = logging.getLogger("enrollstream.supervisor")
    # The children are given the endpoints this process resolved (a local stack is found once, here).
    base = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": target.kafka_bootstrap_servers,
        "DATABASE_URL": target.database_url,
    }

    async def run() -> int:
        await _require_current_schema(target.database_url)  # once, not a quick failure per child
        supervisor = Supervisor(
            processes,
            lambda index: worker_argv(child_roles(roles, index)),
            lambda index: child_environment(base, settings, index),
            RestartPolicy.from_settings(settings),
            stop_timeout_s=settings.shutdown_timeout_s + 10,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop)
        log.info("supervisor starting", extra={"processes": processes, "roles": list(roles)})
        console.print(
            f"supervising {processes} worker processes running {', '.join(roles)}; Ctrl-C to stop",
            markup=False,
            highlight=False,
        )
        code = await supervisor.run()
        if supervisor.gave_up is not None:
            err.print(f"error: {supervisor.gave_up}", markup=False, highlight=False)
        elif code == 0:
            log.info("supervisor stopped cleanly")
        return code

    code = asyncio.run(run())
    if code:
        raise typer.Exit(code)


async def _announce_api(worker: Any, started: asyncio.Event) -> None:
    """Say where the API listens once it does (its port may have been picked: ENROLLSTREAM_API_PORT=0)."""
    await started.wait()
    if worker.api is not None:
        console.print(f"api: {worker.api.url}", markup=False, highlight=False)


@app.command("api")
@friendly_errors
def api_command() -> None:
    """Serve the HTTP API alone (the worker's `api` role): seed 001's endpoints, docs/api.md."""
    worker_command(roles="api", processes=1)


@app.command("replay")
@friendly_errors
def replay_command(
    keep: bool = typer.Option(False, help="keep the rebuilt schema for inspection"),
) -> None:
    """Rebuild the read models from the events (and results) topics into fresh tables and compare them
    with the live ones."""
    from enrollstream.runtime.replay import replay

    settings = load_settings()
    target = endpoints(settings)
    topics = Topics(settings.topic_prefix)
    with console.status("replaying the events topic into fresh tables..."):
        report = asyncio.run(
            replay(
                target.kafka_bootstrap_servers,
                topics.events,
                target.database_url,
                keep,
                results_topic=topics.command_results,
            )
        )
    table = DataTable("table", "live rows", "replayed rows", "only live", "only replayed", "equal")
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
    console.print(
        f"{report.events} events replayed" + (f" into schema {report.schema}" if keep else ""), markup=False
    )
    if report.live_lag:
        console.print(
            f"[yellow]the live projector is {report.live_lag} records behind; differences may be lag[/yellow]"
        )
    if not report.equal:
        raise typer.Exit(code=1)


@app.command("demo")
@friendly_errors
def demo_command(
    contacts: int = typer.Option(300, min=10, max=5000, help="how many contacts to enroll"),
    quick: bool = typer.Option(False, help="delays of 1-2 seconds between steps: the CI run of the demo"),
    database: str = typer.Option("enrollstream_demo", help="the database the demo (re)creates for itself"),
    keep_stack: bool = typer.Option(False, help="leave the stack running afterwards"),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="keep the console open after the summary until Enter (--no-wait: CI)"
    ),
) -> None:
    """A three-step email campaign for a few hundred contacts, live, with replies, a bounce, an
    unenroll and an MX skip; then a summary that checks itself (non-zero exit on any mismatch)."""
    from enrollstream.demo import DemoPlan, print_report, run_demo

    plan = DemoPlan.quick(contacts, database) if quick else DemoPlan(contacts=contacts, database=database)
    plan = dataclasses.replace(plan, wait=wait)
    settings = load_settings()
    if settings.kafka_bootstrap_servers and settings.database_url:
        # Servers from the environment: nothing to start, and the local stack's state file is left
        # alone (an `up` would record these as the stack, and its `down` would then stop nothing).
        servers = local_stack.Endpoints(settings.kafka_bootstrap_servers, settings.database_url)
        started: list[str] = []
        console.print("[bold]stack[/bold] Kafka and PostgreSQL from KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL")
    else:
        with console.status("bringing the stack up (the first run fetches Kafka with Maven)..."):
            state = local_stack.up(settings)
        servers, started = state.endpoints, state.started
        kafka, postgres = state.kafka, state.postgres
        console.print(
            "[bold]stack[/bold] "
            + escape(
                f"Kafka {kafka.address} ({kafka.version or kafka.source}), "
                f"PostgreSQL {postgres.address.rsplit('@', 1)[-1]} ({postgres.version or postgres.source})"
            )
        )
    try:
        report = asyncio.run(run_demo(settings, servers, plan, console))
        if not report.printed:
            print_report(report, console)
    finally:
        if started and not keep_stack:
            local_stack.down(settings)
            console.print(f"[bold]stack[/bold] stopped ({escape(', '.join(started))})")
    if not report.ok:
        raise typer.Exit(code=1)


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


# --- operating it: campaigns, one contact, the pages, the dead letters -----------------------------

campaign_app = typer.Typer(help="Campaign definitions (published to the compacted campaigns topic).")
app.add_typer(campaign_app, name="campaign")
dlq_app = typer.Typer(help="The dead-letter topic: what could not be processed, and why.")
app.add_typer(dlq_app, name="dlq")

ACCOUNT = typer.Option(..., "--account", "-a", envvar="ENROLLSTREAM_ACCOUNT", help="the account")


def _topics(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix)


@campaign_app.command("apply")
@friendly_errors
def campaign_apply(file: Annotated[Path, typer.Argument(help="a campaign definition, YAML or JSON")]) -> None:
    """Validate a campaign definition and publish it (a new version replaces the old one).

    Publishing status paused pauses the campaign, active resumes it; the pause history is kept."""
    from enrollstream.operations import apply_campaign, load_campaign_file

    campaign = load_campaign_file(file)
    settings = load_settings()
    target = endpoints(settings)
    campaign = asyncio.run(
        apply_campaign(target.kafka_bootstrap_servers, _topics(settings), campaign, datetime.now(UTC))
    )
    console.print(
        f"campaign {campaign.campaign_id!r} version {campaign.version} published for account "
        f"{campaign.account_id!r}: {len(campaign.steps)} steps, status {campaign.status}",
        markup=False,
    )


def _set_status(account: str, campaign_id: str, status: str) -> None:
    from enrollstream.domain import CampaignStatus
    from enrollstream.operations import set_campaign_status

    settings = load_settings()
    target = endpoints(settings)
    campaign = asyncio.run(
        set_campaign_status(
            target.kafka_bootstrap_servers,
            _topics(settings),
            account,
            campaign_id,
            CampaignStatus(status),
            datetime.now(UTC),
        )
    )
    console.print(
        f"campaign {campaign.campaign_id!r} version {campaign.version}: status {campaign.status}",
        markup=False,
    )


@campaign_app.command("pause")
@friendly_errors
def campaign_pause(
    campaign: str = typer.Argument(..., help="the campaign id"), account: str = ACCOUNT
) -> None:
    """Pause a campaign: due steps wait, and the paused time does not count toward expiry or timeouts."""
    _set_status(account, campaign, "paused")


@campaign_app.command("resume")
@friendly_errors
def campaign_resume(
    campaign: str = typer.Argument(..., help="the campaign id"), account: str = ACCOUNT
) -> None:
    """Resume a paused campaign: every step that came due meanwhile is sent, in order."""
    _set_status(account, campaign, "active")


def _send(make: Callable[[Any], Any]) -> Any:
    from enrollstream.client import EnrollstreamClient

    settings = load_settings()
    target = endpoints(settings)

    async def run() -> Any:
        async with EnrollstreamClient(
            target.kafka_bootstrap_servers, settings.topic_prefix, actor="cli"
        ) as c:
            return await make(c)

    return asyncio.run(run())


# Exit codes of the commands that wait for a result (enroll, stop, unenroll); docs/client.md.
EXIT_REFUSED = 1  # rejected, stale or deferred: nothing was done (also any error before a result)
EXIT_SKIPPED = 3  # an Enroll skipped (opted out, landline, no MX, ...): the contact was not enrolled


def _print_result(result: Any) -> None:
    if result.status in ("accepted", "duplicate"):
        extra = f" enrollment {', '.join(result.enrollment_ids)}" if result.enrollment_ids else ""
        console.print(f"{result.status}: {result.command_type} {result.command_id}{extra}", markup=False)
        return
    code = f" ({result.code})" if result.code else ""
    if result.status == "skipped":
        err.print(f"[yellow]skipped{escape(code)}:[/yellow] {escape(result.message or '')} (not enrolled)")
        raise typer.Exit(code=EXIT_SKIPPED)
    err.print(f"[red]{escape(result.status + code)}:[/red] {escape(result.message or result.command_type)}")
    raise typer.Exit(code=EXIT_REFUSED)


@app.command("enroll")
@friendly_errors
def enroll_command(
    contact: str = typer.Argument(..., help="the contact id"),
    campaign: str = typer.Argument(..., help="the campaign id"),
    account: str = ACCOUNT,
    name: str = typer.Option("", help="the contact's name"),
    email: str | None = typer.Option(None, help="the contact's email address"),
    mobile: str | None = typer.Option(None, help="the contact's mobile number"),
    batch: int = typer.Option(0, min=0, help="batch number (seed 001)"),
    priority: bool = typer.Option(False, help="first within its batch"),
    timeout: float = typer.Option(30.0, help="seconds to wait for the result"),
) -> None:
    """Enroll one contact and wait for the result (seed 001 enroll_contact)."""
    result = _send(
        lambda c: c.enroll(
            account, contact, campaign, name=name, email=email, mobile=mobile,
            batch_number=batch, priority=priority, timeout=timeout,
        )
    )  # fmt: skip
    _print_result(result)


def _enrollment_of(account: str, contact: str, campaign: str | None, enrollment: str | None) -> str:
    if enrollment:
        return enrollment
    if not campaign:
        raise OperatorError("say which enrollment: --campaign CAMPAIGN or --enrollment ENROLLMENT_ID")
    from enrollstream.adapters.postgres.read_side import latest_enrollment

    target = endpoints(load_settings())

    async def find() -> dict[str, Any] | None:
        conn = await asyncpg.connect(target.database_url)
        try:
            return await latest_enrollment(conn, account, contact, campaign)
        finally:
            await conn.close()

    found = asyncio.run(find())
    if found is None:
        raise OperatorError(
            f"contact {contact!r} has no enrollment in campaign {campaign!r} (account {account!r})"
        )
    return str(found["enrollment_id"])


def _operator_command(kind: str, contact: str, account: str, campaign: str | None, enrollment: str | None,
                      note: str) -> None:  # fmt: skip
    enrollment_id = _enrollment_of(account, contact, campaign, enrollment)
    if kind == "stop":
        _print_result(_send(lambda c: c.stop_enrollment(account, contact, enrollment_id, note=note)))
    else:
        _print_result(_send(lambda c: c.unenroll(account, contact, enrollment_id, note=note)))


@app.command("stop")
@friendly_errors
def stop_command(
    contact: str = typer.Argument(..., help="the contact id"),
    account: str = ACCOUNT,
    campaign: str | None = typer.Option(None, help="stop the contact's newest enrollment in this campaign"),
    enrollment: str | None = typer.Option(None, help="the enrollment id"),
    note: str = typer.Option("", help="why (kept in the timeline)"),
) -> None:
    """Stop an enrollment (seed 000): it ends as stopped, nothing more is sent."""
    _operator_command("stop", contact, account, campaign, enrollment, note)


@app.command("unenroll")
@friendly_errors
def unenroll_command(
    contact: str = typer.Argument(..., help="the contact id"),
    account: str = ACCOUNT,
    campaign: str | None = typer.Option(None, help="unenroll from the newest enrollment in this campaign"),
    enrollment: str | None = typer.Option(None, help="the enrollment id"),
    note: str = typer.Option("", help="why (kept in the timeline)"),
) -> None:
    """Unenroll (seed 004): a step being processed completes, nothing after it is sent."""
    _operator_command("unenroll", contact, account, campaign, enrollment, note)


def _query(run: Callable[[asyncpg.Connection], Any]) -> Any:
    target = endpoints(load_settings())

    async def go() -> Any:
        conn = await asyncpg.connect(target.database_url)
        try:
            return await run(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def _require_campaign(account: str, campaign: str) -> None:
    from enrollstream.operations import known_campaign

    settings = load_settings()
    asyncio.run(
        known_campaign(endpoints(settings).kafka_bootstrap_servers, _topics(settings), account, campaign)
    )


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


@app.command("enrollments")
@friendly_errors
def enrollments_command(
    campaign: str = typer.Argument(..., help="the campaign id"),
    account: str = ACCOUNT,
    status: Annotated[list[str] | None, typer.Option(help="only these statuses (repeatable)")] = None,
    batch: int | None = typer.Option(None, help="only this batch number"),
    step: int | None = typer.Option(None, help="only contacts at this step (1-based)"),
    search: str | None = typer.Option(None, help="contact name contains (case-insensitive)"),
    limit: int = typer.Option(20, min=1, max=1000, help="rows per page"),
    after: str | None = typer.Option(None, help="the cursor printed under the previous page"),
) -> None:
    """The Enrollments page (seed 000): filter by status, batch and step, search by name, 20 per page."""
    from datetime import datetime

    from enrollstream.adapters.postgres.read_side import EnrollmentFilter, PageCursor, enrollments_page

    _require_campaign(account, campaign)
    cursor = None
    if after:
        when, _, enrollment_id = after.partition("/")
        try:
            cursor = PageCursor(datetime.fromisoformat(when), enrollment_id)
        except ValueError:
            raise OperatorError(f"not a page cursor: {after!r}") from None
    where = EnrollmentFilter(statuses=status or None, batch_number=batch, current_step=step, name=search)
    page = _query(lambda conn: enrollments_page(conn, account, campaign, where, cursor, limit))
    table = DataTable("contact", "email", "mobile", "status", "stage", "step", "next execution", "enrolled",
                  "batch", title=f"enrollments of {campaign}")  # fmt: skip
    for row in page.rows:
        indicator = row["next_execution_indicator"] or ""
        why = row["failure_reason"] or row["stop_reason"]  # failed: why; stopped: the stop reason
        shown = f"{row['status']} ({why})" if why else row["status"]
        table.add_row(
            row["contact_name"] or row["contact_id"], row["email"] or "", row["mobile"] or "", shown,
            row["stage"], row["step_label"] or "",
            f"{_when(row['next_execution_at'])} {indicator}".strip(), _when(row["enrolled_at"]),
            f"{row['batch_number']}{' (priority)' if row['priority'] else ''}",
        )  # fmt: skip
    console.print(table)
    if page.next is not None:
        following = f"{page.next.enrolled_at.isoformat()}/{page.next.enrollment_id}"
        console.print(f"next page: --after {following}", markup=False, highlight=False)


@app.command("stats")
@friendly_errors
def stats_command(
    campaign: str = typer.Argument(..., help="the campaign id"), account: str = ACCOUNT
) -> None:
    """The stats cards of a campaign (seed 000): total, active, processing, completed, stopped, ..."""
    from enrollstream.adapters.postgres.read_side import campaign_stats_card

    _require_campaign(account, campaign)
    cards = _query(lambda conn: campaign_stats_card(conn, account, campaign))
    table = DataTable("card", "count", title=f"stats of {campaign}")
    for card in ("total", "active", "processing", "completed", "stopped", "failed", "queued",
                 "awaiting_trigger", "expired", "handed_off", "unenrolled"):  # fmt: skip
        table.add_row(card.replace("_", " "), str(cards.get(card, 0)))
    console.print(table)


_TIMELINE_FIELDS = (
    "kind",
    "reason",
    "stop_reason",
    "note",  # an operator's --note on stop / unenroll
    "step_index",
    "attempt",
    "outcome",
    "detail",
    "due_at",
    "retry_at",
    "rescheduled",
    "will_retry",
)


@app.command("timeline")
@friendly_errors
def timeline_command(
    contact: str = typer.Argument(..., help="the contact id"), account: str = ACCOUNT
) -> None:
    """Every decision about a contact, in order, with the command that caused it: the answer to "why"."""
    from enrollstream.adapters.postgres.read_side import contact_timeline

    rows = _query(lambda conn: contact_timeline(conn, account, contact))
    if not rows:
        raise OperatorError(f"no events for contact {contact!r} in account {account!r}")
    table = DataTable("when", "v", "event", "campaign", "what", "caused by", title=f"timeline of {contact}")
    for row in rows:
        data = row["data"] or {}
        what = ", ".join(f"{k}={data[k]}" for k in _TIMELINE_FIELDS if data.get(k) not in (None, ""))
        table.add_row(_when(row["occurred_at"]), str(row["version"]), row["type"].removesuffix(".v1"),
                      row["campaign_id"] or "", what, row["causation_id"])  # fmt: skip
    console.print(table)


@app.command("why")
@friendly_errors
def why_command(
    contact: str = typer.Argument(..., help="the contact id"),
    account: str = ACCOUNT,
    campaign: str | None = typer.Option(None, help="only what concerns this campaign"),
    words: bool = typer.Option(False, "--words", help="one sentence per decision, with its cause"),
) -> None:
    """Why a contact is where it is: every decision about it in order, the events and the commands that
    changed nothing (refused, duplicate, stale, deferred), each with its command, actor and reason."""
    from enrollstream.adapters.postgres.read_side import contact_why
    from enrollstream.read_models.why import explain

    rows = _query(lambda conn: contact_why(conn, account, contact, campaign))
    if not rows:
        scope = f" in campaign {campaign!r}" if campaign else ""
        raise OperatorError(f"no decisions about contact {contact!r}{scope} in account {account!r}")
    if words:
        for row, sentence in zip(rows, explain(rows), strict=True):
            console.print(f"{_when(row['at'])}  {sentence}", markup=False, highlight=False)
        return
    table = DataTable("when", "v", "decision", "campaign", "what", "command", "by", title=f"why {contact}")
    for row in rows:
        if row["kind"] == "event":
            data = row["data"] or {}
            what = ", ".join(f"{k}={data[k]}" for k in _TIMELINE_FIELDS if data.get(k) not in (None, ""))
            decision = row["what"].removesuffix(".v1")
            if row["status"] not in (None, "accepted"):  # e.g. an Enroll skipped
                decision = Text.assemble(f"{decision} ", (f"({row['status']})", "yellow"))
        else:
            code = f" ({row['code']})" if row["code"] and row["code"] != row["status"] else ""
            decision = Text(f"{row['status']}{code}", style="yellow")
            what = row["reason"]
        command = f"{(row['command_type'] or '').removesuffix('.v1')} {row['command_id']}".strip()
        table.add_row(_when(row["at"]), str(row["version"]), decision, row["campaign_id"] or "", what,
                      command, row["actor"] or "")  # fmt: skip
    console.print(table)


def _parse_time(text: str) -> datetime:
    """An ISO 8601 time (`2026-12-01T10:00:00+01:00`, `2026-12-01 10:00`: UTC without a zone) or `now`."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OperatorError(f"not a time: {text!r} (ISO 8601, e.g. 2026-12-01T10:00:00Z, or now)") from None


@app.command("as-of")
@friendly_errors
def as_of_command(
    timestamp: str = typer.Argument(..., help="T: an ISO 8601 time (UTC without a zone) or `now`"),
    account: str = ACCOUNT,
    campaign: str | None = typer.Option(None, help="the campaign (alone: all its rows and stats cards)"),
    contact: str | None = typer.Option(None, help="one contact (reads its own events only)"),
    limit: int = typer.Option(100, min=1, max=1000, help="rows of a campaign to list (the cards count all)"),
) -> None:
    """The enrollment rows and stats cards as they were at T, rebuilt from the events topic up to T
    (docs/time-travel.md). One contact reads its own events; a campaign rebuilds from the whole topic."""
    from enrollstream.runtime.as_of import AsOfInputError, campaign_as_of, contact_as_of

    if campaign is None and contact is None:
        raise OperatorError("name a campaign (--campaign), a contact (--contact) or both")
    at = _parse_time(timestamp)
    settings = load_settings()
    target = endpoints(settings)
    events_topic = _topics(settings).events
    try:
        if contact is not None:
            found = _query(
                lambda conn: contact_as_of(
                    target.kafka_bootstrap_servers, events_topic, conn, account, contact, at, campaign
                )
            )
        else:
            assert campaign is not None
            _require_campaign(account, campaign)
            with console.status("rebuilding the campaign from the events topic..."):
                found = asyncio.run(
                    campaign_as_of(
                        target.kafka_bootstrap_servers, events_topic, target.database_url, account, campaign,
                        at, limit,
                    )
                )  # fmt: skip
    except AsOfInputError as exc:
        raise OperatorError(str(exc)) from None
    scope = f"contact {contact}" if contact else f"campaign {campaign}"
    table = DataTable("contact", "campaign", "status", "stage", "step", "next execution", "enrolled", "sent",
                      "replied", title=f"{scope} as of {found.at.isoformat()}")  # fmt: skip
    for row in found.rows:
        why = row.failure_reason or row.stop_reason
        table.add_row(
            row.contact_name or row.contact_id, row.campaign_id,
            f"{row.status} ({why})" if why else row.status, row.stage,
            f"{row.current_step} of {row.total_steps}" if row.current_step else "",
            _when(row.next_execution_at), _when(row.enrolled_at), _when(row.sent_at), _when(row.replied_at),
        )  # fmt: skip
    console.print(table)
    if found.cards is not None:
        cards = DataTable("card", "count", title=f"stats of {campaign} as of {found.at.isoformat()}")
        for card, count in found.cards.items():
            cards.add_row(card.replace("_", " "), str(count))
        console.print(cards)
    console.print(f"{found.method}: {found.records_read} event records read", markup=False, highlight=False)
    for note in found.notes:
        console.print(note, markup=False, highlight=False)


@app.command("backtest")
@friendly_errors
def backtest_command(
    definition: Annotated[
        Path, typer.Option("--definition", help="the changed definition, as `campaign apply` takes it")
    ],
    campaign: str = typer.Option(
        ..., "--campaign", help="the campaign whose recorded enrollments are re-run"
    ),
    account: str = ACCOUNT,
    since: str | None = typer.Option(
        None, "--from", help="enrollments from T1 (default: 31 days before --to)"
    ),
    until: str = typer.Option(
        "now", "--to", help="enrollments up to T2, and the simulation's end (default: now)"
    ),
    sample: int = typer.Option(5, min=0, max=50, help="contacts that differ to show with both timelines"),
    max_contacts: int = typer.Option(10_000, min=1, max=100_000, help="refuse a backtest of more contacts"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Re-run the campaign's recorded enrollments (the commands topic: 7 days) under a changed definition
    and under the current one, side by side: what would be sent, skipped, stopped or expired differently.
    Reads only; publishes nothing, sends nothing, writes no table (docs/time-travel.md "Backtest")."""
    import json

    from enrollstream.operations import load_campaign_file
    from enrollstream.runtime.backtest import BacktestInputError, backtest, check_definition_file, report

    settings = load_settings()
    target = endpoints(settings)
    try:
        check_definition_file(definition)
        changed = load_campaign_file(definition)
        with console.status("reading the commands topic and simulating both definitions..."):
            found = asyncio.run(
                backtest(target.kafka_bootstrap_servers, _topics(settings), account, campaign, changed,
                         _parse_time(since) if since is not None else None, _parse_time(until), max_contacts)
            )  # fmt: skip
    except BacktestInputError as exc:
        raise OperatorError(str(exc)) from None
    result = report(found, sample)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    counts = DataTable("", f"current (version {found.baseline.version})", "changed", "difference",
                       title=f"backtest of {campaign}: {result['contacts']} contacts enrolled "
                       f"{found.since.isoformat()} .. {found.until.isoformat()}")  # fmt: skip
    for metric, row in result["counts"].items():  # type: ignore[attr-defined]
        if row["current"] or row["changed"]:
            counts.add_row(metric.replace("_", " "), str(row["current"]), str(row["changed"]),
                           f"{row['difference']:+d}" if row["difference"] else "")  # fmt: skip
    console.print(counts)
    console.print(f"{result['differing_contacts']} of {result['contacts']} contacts would go differently",
                  markup=False, highlight=False)  # fmt: skip
    for contact in result["sample"]:  # type: ignore[attr-defined]
        side = DataTable("current", "changed", title=f"contact {contact['contact_id']}")
        current, changed_lines = contact["current"], contact["changed"]
        for i in range(max(len(current), len(changed_lines))):
            left = current[i] if i < len(current) else None
            right = changed_lines[i] if i < len(changed_lines) else None
            side.add_row(
                *(
                    f"{_when(datetime.fromisoformat(x['at']))}  {x['what']}" if x else ""
                    for x in (left, right)
                )
            )
        console.print(side)
    held = (
        f"the account's commands are held from {result['log_start']}"
        if result["log_start"]
        else "no commands held"
    )
    console.print(f"{result['records_read']} command records read; {held}; nothing was published",
                  markup=False, highlight=False)  # fmt: skip
    if found.out_of_reach:
        missing = found.out_of_reach
        console.print(
            f"out of reach (their Enroll is no longer held, or before --from): {len(missing)} "
            f"contact{'s' if len(missing) > 1 else ''}, e.g. {', '.join(missing[:5])}",
            markup=False,
            highlight=False,
        )
    for note in found.notes:
        console.print(note, markup=False, highlight=False)


@dlq_app.command("list")
@friendly_errors
def dlq_list(
    limit: int = typer.Option(50, min=1, help="show the newest this many"),
    quarantined: bool = typer.Option(
        False,
        "--quarantined",
        "-q",
        help="list the events the projector quarantined (unprojectable_events in PostgreSQL) instead",
    ),
) -> None:
    """The dead letters, newest last: where each came from and why it could not be processed.

    With --quarantined: the events on the events (or command-results) topic that the projector could not
    write to PostgreSQL and set aside, with why (docs/architecture.md "Projector")."""
    from enrollstream.operations import dead_letters, unprojectable_events

    settings = load_settings()
    if quarantined:
        rows = asyncio.run(unprojectable_events(endpoints(settings).database_url, limit))
        table = DataTable("at", "from", "type", "event", "account", "reason", "bytes",
                          title=f"{len(rows)} quarantined events")  # fmt: skip
        for row in rows:
            table.add_row(
                *(
                    str(value)  # DataTable shows it literally
                    for value in (
                        row["at"].isoformat(timespec="seconds"),
                        f"{row['topic']}:{row['partition']}:{row['offset']}",
                        row["type"] or "",
                        row["event_id"] or "",
                        row["account_id"] or "",
                        row["reason"][:120],
                        row["value_size"],
                    )
                )
            )
        console.print(table)
        return
    letters = asyncio.run(dead_letters(endpoints(settings).kafka_bootstrap_servers, _topics(settings)))
    table = DataTable("id", "role", "reason", "from", "error", "bytes", title=f"{len(letters)} dead letters")
    for letter in letters[-limit:]:
        origin = f"{letter.original_topic}:{letter.original_partition}:{letter.original_offset}"
        table.add_row(letter.id, letter.role, letter.reason, origin, letter.error[:60],
                      letter.stored)  # fmt: skip
    console.print(table)


@dlq_app.command("retry")
@friendly_errors
def dlq_retry(
    ids: Annotated[list[str], typer.Argument(help="dead-letter ids (partition:offset) to retry")],
) -> None:
    """Publish dead letters to their original topic again, e.g. after the cause was fixed."""
    from enrollstream.operations import retry_dead_letters

    settings = load_settings()
    retried = asyncio.run(
        retry_dead_letters(endpoints(settings).kafka_bootstrap_servers, _topics(settings), ids)
    )
    for letter in retried:
        console.print(f"retried {letter.id} to {letter.original_topic}", markup=False)


api_key_app = typer.Typer(help="The HTTP API's keys: each belongs to one account (docs/api.md).")
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
@friendly_errors
def api_key_create(
    account: str = typer.Option(..., help="the account the key sees and acts for"),
    label: str = typer.Option("", help="what the key is for (shown by `api-key list`)"),
) -> None:
    """Create a key; it is printed once, alone on the last line (only its hash is kept)."""
    from enrollstream.adapters.postgres.api_keys import create_api_key
    from enrollstream.domain.bounds import MAX_ID_LENGTH

    if not account or len(account) > MAX_ID_LENGTH:
        raise typer.BadParameter(f"an account id of 1 to {MAX_ID_LENGTH} characters", param_hint="--account")
    record, key = _query(lambda conn: create_api_key(conn, account, label))
    err.print(f"key {record.key_id} for account {record.account_id}; store it now, it is not shown again",
              markup=False, highlight=False)  # fmt: skip
    print(key)


@api_key_app.command("list")
@friendly_errors
def api_key_list(account: str | None = typer.Option(None, help="only this account's keys")) -> None:
    """Every key (never the key itself): id, account, label, created, revoked."""
    from enrollstream.adapters.postgres.api_keys import list_api_keys

    keys = _query(lambda conn: list_api_keys(conn, account))
    table = DataTable("key id", "account", "label", "created", "revoked", title=f"{len(keys)} API keys")
    for key in keys:
        table.add_row(key.key_id, key.account_id, key.label, _when(key.created_at),
                      _when(key.revoked_at) if key.revoked_at else "")  # fmt: skip
    console.print(table)


@api_key_app.command("revoke")
@friendly_errors
def api_key_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id, as `api-key list` shows it")],
) -> None:
    """Revoke a key: the next request with it is 401."""
    from enrollstream.adapters.postgres.api_keys import revoke_api_key

    revoked = _query(lambda conn: revoke_api_key(conn, key_id))
    if revoked is None:
        err.print(f"no API key {key_id!r}", markup=False)
        raise typer.Exit(1)
    console.print(f"revoked {revoked.key_id} of account {revoked.account_id}", markup=False, highlight=False)


contacts_app = typer.Typer(
    help="The contact directory of an account: profiles Enrolls by id take (seed 001)."
)
app.add_typer(contacts_app, name="contacts")


@contacts_app.command("put")
@friendly_errors
def contacts_put(
    contact: str = typer.Argument(..., help="the contact id"),
    account: str = ACCOUNT,
    name: str = typer.Option("", help="the contact's name"),
    email: str | None = typer.Option(None, help="the contact's email address"),
    mobile: str | None = typer.Option(None, help="the contact's mobile number"),
    line_type: str = typer.Option("unknown", help="mobile, landline, voip or unknown"),
    time_zone: str | None = typer.Option(None, help="an IANA time zone, e.g. Europe/Berlin"),
    opted_out: bool = typer.Option(False, help="opt the contact out (never undone by a later put)"),
    timeout: float = typer.Option(30.0, help="seconds to wait for the result"),
) -> None:
    """Create or replace a contact's profile (the whole profile) and wait for the result."""
    from pydantic import ValidationError

    try:
        result = _send(
            lambda c: c.put_contact_and_wait(
                account, contact, name=name, email=email, mobile=mobile, line_type=line_type,
                time_zone=time_zone, opted_out=opted_out, timeout=timeout,
            )
        )  # fmt: skip
    except ValidationError as exc:
        problem = exc.errors()[0]
        err.print(f"error: {'.'.join(map(str, problem['loc'][1:]))}: {problem['msg']}", markup=False)
        raise typer.Exit(code=EXIT_REFUSED) from None
    _print_result(result)


@contacts_app.command("show")
@friendly_errors
def contacts_show(contact: str = typer.Argument(..., help="the contact id"), account: str = ACCOUNT) -> None:
    """The contact's profile as the read model has it (`contacts`, migration 0016)."""
    from enrollstream.adapters.postgres.queries import query

    row = _query(lambda conn: conn.fetchrow(query("contact_by_id"), account, contact))
    if row is None:
        err.print(f"contact_not_found: no contact {contact!r} in account {account!r}", markup=False)
        raise typer.Exit(code=EXIT_REFUSED)
    table = DataTable("field", "value", title=f"contact {contact}")
    for field in ("name", "email", "mobile", "line_type", "time_zone", "opted_out", "updated_at"):
        value = row[field]
        table.add_row(field, "" if value is None else _when(value) if field == "updated_at" else str(value))
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
