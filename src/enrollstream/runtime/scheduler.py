"""The scheduler: due timers in Postgres out, StepDue / ExpiryDue / WaitTimeout commands in.

The projector keeps one `timers` row per pending timer (migration 0007). An APScheduler interval job
calls `tick(now)`, which claims due rows (`claim_due_timers`: `for update skip locked` and a lease in
`claimed_until`), publishes one command per row to the commands topic, keyed `account_id/contact_id`,
with a deterministic command id, and returns once the broker acknowledged them all.

Nothing here decides anything: the decider drops a command it already processed (same id) and ignores
a stale or early one (`Ignored.STALE` / `DEFERRED`, which records nothing). A row whose command changed
nothing stays in `timers` and fires again, with the same id, once its lease has run out; a row whose
command took effect is removed by the projector when it folds the resulting event. A StepDue's id names
the timer's due time, so a step the decider rescheduled (outside its send window, or deferred by a
sender's rate limit) fires as a new command, while firing the same timer again keeps its id.

Paused campaigns (the latest definition of that account's campaign on the campaigns topic says
`paused`; a campaign is (account, campaign), so another account pausing the same campaign id holds
nothing) are left out of the claim
altogether: their timers stay due and fire on the first tick after a version with status `active` is
published. ExpiryDue and WaitTimeout carry the campaign's pause history (`campaign_pauses`), so the
decider does not count paused time and pushes such a timer back instead of ending the enrollment. Within
an enrollment, rows are published in due order and a step before an expiry due at the same time, so an
expiry never overtakes a step that was due before it. The clock is injected: `tick` takes `now`, the
interval job passes `clock()`.

/healthz reports the scheduler stuck (`Progress`, lane "due timers") when its tick has failed
`stuck_retries` times in a row (PostgreSQL away, the commands not acknowledged by the broker: it cannot
look for due timers, so it cannot tell that there are none), or when one tick has been claiming and
publishing for longer than `stuck_after_s`. A tick that finds nothing due is progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaProducer
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.records import encode, key_bytes
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.errors import Backoff, is_connection_error
from enrollstream.adapters.postgres.queries import query
from enrollstream.domain import (
    ExpiryDue,
    StepDue,
    WaitTimeout,
    aggregate_key,
    step_due_command_id,
    timer_command_id,
)
from enrollstream.domain.campaign import CampaignStatus
from enrollstream.domain.commands import StepDueData, TimerData
from enrollstream.observability import Progress
from enrollstream.read_models.timers import TimerKind
from enrollstream.runtime.campaigns import CampaignCatalog

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
TimerCommand = StepDue | ExpiryDue | WaitTimeout
ACTOR = "scheduler"
DUE_TIMERS = "due timers"  # the scheduler's one lane of work, for Progress


def utc_now() -> datetime:
    return datetime.now(UTC)


class SchedulerService:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        database_url: str,
        catalog: CampaignCatalog,
        *,
        clock: Clock = utc_now,
        interval_ms: int = 500,
        batch: int = 500,
        lease_ms: int = 30_000,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.database_url = database_url
        self.catalog = catalog
        self.clock = clock
        self.interval = timedelta(milliseconds=interval_ms)
        self.batch = batch
        self.lease = timedelta(milliseconds=lease_ms)
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._ticking = asyncio.Lock()  # held by a tick; stopping waits for the one in flight
        self.published = 0
        self._next_backlog_count = 0.0
        self._backoff = Backoff()
        self._retry_at = 0.0  # monotonic; after a lost connection, ticks before it are skipped
        self.progress = Progress("scheduler", stuck_after_s=stuck_after_s, max_retries=stuck_retries)

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(self, stop: asyncio.Event) -> None:
        """The interval job until `stop`; a failed tick is logged and the next one tries again."""
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        scheduler.add_job(
            self._job,
            "interval",
            seconds=self.interval.total_seconds(),
            max_instances=1,  # a slow tick is not overlapped by the next one
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=utc_now(),  # the interval itself runs on the wall clock; `now` is the clock's
        )
        scheduler.start()
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            async with self._ticking:  # let a tick in flight finish publishing before stop() closes
                pass

    async def _job(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            await self._claim_and_count()
        except Exception as exc:
            self.progress.retried(DUE_TIMERS)  # a tick that failed, for whatever reason, did not fire
            if not is_connection_error(exc):
                raise
            # PostgreSQL away: skip ticks for a while (longer each time), then try again. Nothing was
            # claimed that is not given back or leased: a timer fires late, never lost.
            metrics.POSTGRES_RETRIES.labels("scheduler").inc()
            delay = self._backoff.next_delay()
            self._retry_at = time.monotonic() + delay
            log.warning(
                "scheduler: PostgreSQL unavailable (%s: %s); next try in %.1fs",
                type(exc).__name__,
                exc,
                delay,
            )
            return
        self._backoff.reset()

    async def _claim_and_count(self) -> None:
        # Keep claiming while claims come back full, so a backlog drains at the broker's pace. Each tick
        # that returns is progress (a long drain is not "stuck"); one that hangs runs the clock.
        while True:
            self.progress.working(DUE_TIMERS)
            fired = await self.tick(self.clock())
            self.progress.advanced(DUE_TIMERS)
            if len(fired) < self.batch:
                break
        if self._pool is not None and time.monotonic() >= self._next_backlog_count:
            # The backlog gauge: counted now and then, not every tick (a count scans the due index).
            self._next_backlog_count = time.monotonic() + 5.0
            metrics.DUE_TIMERS.set(await self._pool.fetchval(query("count_due_timers"), self.clock()))

    async def tick(self, now: datetime) -> list[TimerCommand]:
        """Claim the rows due at `now` and publish their commands; returns them once acknowledged."""
        async with self._ticking:
            return await self._tick(now)

    async def _tick(self, now: datetime) -> list[TimerCommand]:
        pool, producer = self._pool, self._producer
        assert pool is not None and producer is not None, "start() the scheduler first"
        await self.catalog.catch_up()  # a pause or resume published before this tick counts
        leased_until = now + self.lease
        paused = self.catalog.paused()  # (account, campaign) pairs: another account's pause holds nothing
        rows = await pool.fetch(
            query("claim_due_timers"),
            now,
            leased_until,
            [account_id for account_id, _ in paused],
            [campaign_id for _, campaign_id in paused],
            self.batch,
        )
        if not rows:
            return []
        commands = [self._command(row, now) for row in rows]
        try:
            sent = [
                await producer.send(
                    self.topics.commands,
                    encode(command),
                    key=key_bytes(aggregate_key(command.account_id, command.contact_id)),
                )
                for command in commands
            ]
            await asyncio.gather(*sent)
        except BaseException:
            # Not all of them reached the broker: give the claims back for the next tick (the ones that
            # did arrive are dropped by the decider as duplicates when they fire again).
            with contextlib.suppress(Exception):
                await pool.execute(
                    query("release_timer_claims"),
                    [row["enrollment_id"] for row in rows],
                    [row["kind"] for row in rows],
                    leased_until,
                )
            raise
        self.published += len(commands)
        for row in rows:
            metrics.TIMER_LATENESS.observe(max(0.0, (now - row["due_at"]).total_seconds()))
        return commands

    def _command(self, row: asyncpg.Record, now: datetime) -> TimerCommand:
        enrollment_id: str = row["enrollment_id"]
        kind = TimerKind(row["kind"])
        campaign = self.catalog.get(row["account_id"], row["campaign_id"])
        if kind is TimerKind.STEP_DUE:
            status = campaign.status if campaign is not None else CampaignStatus.ACTIVE
            return StepDue(
                command_id=step_due_command_id(
                    enrollment_id, row["step_index"], row["attempt"], row["due_at"]
                ),
                account_id=row["account_id"],
                issued_at=now,
                actor=ACTOR,
                data=StepDueData(
                    contact_id=row["contact_id"],
                    enrollment_id=enrollment_id,
                    step_index=row["step_index"],
                    attempt=row["attempt"],
                    campaign_status=status,
                ),
            )
        data = TimerData(
            contact_id=row["contact_id"],
            enrollment_id=enrollment_id,
            campaign_pauses=campaign.pauses if campaign is not None else [],
        )
        if kind is TimerKind.EXPIRY:
            return ExpiryDue(
                command_id=timer_command_id("expiry", enrollment_id, row["due_at"]),
                account_id=row["account_id"],
                issued_at=now,
                actor=ACTOR,
                data=data,
            )
        return WaitTimeout(
            command_id=timer_command_id("wait-timeout", enrollment_id, row["due_at"]),
            account_id=row["account_id"],
            issued_at=now,
            actor=ACTOR,
            data=data,
        )
