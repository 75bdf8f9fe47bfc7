"""What an operator sees without reading code: Prometheus metrics, health and readiness, JSON logs.

The metrics live in the default Prometheus registry, labelled by role, so one process running several
roles (or several services in one test process) shares them. The HTTP server is aiohttp:

- `GET /metrics`  Prometheus text format;
- `GET /healthz`  200 while the process works: its event loop answers, no role has failed and no role is
  stuck (see `Progress`); else 503 with the reason;
- `GET /readyz`   200 once every role has started and until shutdown begins, else 503.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pythonjsonlogger.json import JsonFormatter

COMMANDS = Counter(
    "enrollstream_commands", "Commands decided, by command type and result status", ["type", "status"]
)
DECIDE_SECONDS = Histogram(
    "enrollstream_decide_seconds",
    "Time to decide one command and fold its events (the pure part)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
BATCH_RECORDS = Histogram(
    "enrollstream_batch_records",
    "Records per processed batch",
    ["role"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
TRANSACTIONS = Counter(
    "enrollstream_transactions", "Batch transactions (Kafka or PostgreSQL) by outcome", ["role", "outcome"]
)
STATE_RESTORED_RECORDS = Counter(
    "enrollstream_state_restored_records",
    "Changelog records copied into the decider's state stores on assignment: cold (from the start) or tail",
    ["kind"],
)
DEAD_LETTERS = Counter("enrollstream_dead_letters", "Records sent to the dead-letter topic", ["role"])
CONSUMER_LAG = Gauge(
    "enrollstream_consumer_lag",
    "Records behind the partition's end after the last batch",
    ["role", "partition"],
)
SENDS = Counter(
    "enrollstream_sends",
    "Messages handed to a channel, by outcome; deferred: held back by a sender's rate limit, not handed",
    ["channel", "outcome"],
)
OPEN_PIXEL_LOADS = Counter(
    "enrollstream_open_pixel_loads",
    "Tracking pixel loads by result: published (an OpenDetected), repeat (already published here), "
    "machine (published, flagged as a machine's open), invalid (404), publish_failed, dropped (too many "
    "publishes pending)",
    ["result"],
)
BOUNCE_WEBHOOKS = Counter(
    "enrollstream_bounce_webhooks",
    "Provider bounce/complaint callbacks by format (smtp2go, generic, unknown) and result: accepted, "
    "ignored (not a bounce or complaint), a refusal's reason (unknown_endpoint, unauthorized, "
    "bad_credentials, body_too_large, body_timeout, malformed, invalid_field, bad_timestamp, "
    "unknown_event, unmatched), unavailable, publish_failed, error",
    ["format", "result"],
)
INBOUND_RECEIVED = Counter(
    "enrollstream_inbound_received",
    "Messages the inbound receiver took in, by source (smtp, imap) and outcome: published (on the "
    "inbound-email topic), rejected (refused at RCPT or for its size), failed (not acknowledged: 451 / "
    "polled again), no_account (kept for inspection: no reply address of ours named an account)",
    ["source", "outcome"],
)
INBOUND_AUTO_REPLIES = Counter(
    "enrollstream_inbound_auto_replies",
    "Received mail the inbound role recognised as automatic (not a person's reply), by first signal",
    ["signal"],
)
INBOUND_UNMATCHED = Counter(
    "enrollstream_inbound_unmatched",
    "Received mail that matched nothing of ours, kept for inspection in inbound_unmatched, by kind "
    "(reply, dsn, no_account)",
    ["kind"],
)
QUARANTINED = Counter(
    "enrollstream_quarantined_events",
    "Records the projector could not write, quarantined in unprojectable_events, by topic",
    ["topic"],
)
POSTGRES_RETRIES = Counter(
    "enrollstream_postgres_retries",
    "PostgreSQL connection errors a role waited out and retried, by role",
    ["role"],
)
DUE_TIMERS = Gauge("enrollstream_due_timers", "Timers due and not yet fired (the scheduler's backlog)")
TIMER_LATENESS = Histogram(
    "enrollstream_timer_lateness_seconds",
    "How long after its due time a timer fired",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


RETRIES = Counter(
    "enrollstream_retries",
    "Failed attempts at a batch that will be tried again (a transaction aborted, its producer re-created)",
    ["role"],
)
STUCK_PARTITIONS = Gauge(
    "enrollstream_stuck_partitions",
    "Partitions (or named lanes of work) a role has work on and has not moved past for too long or too"
    " many attempts",
    ["role"],
)


Lane = int | str  # a partition of the role's topic, or a named piece of work ("due timers", "fetching")


@dataclass
class Progress:
    """Whether a role moves forward on the work it has, per lane: what makes /healthz say "stuck".

    A lane is a partition the role consumes (an int), or a named piece of work of a role that has no
    partition of its own (the scheduler's "due timers", the relay's "fetching"). A lane is stuck when the
    same position (an offset; None for work without one) has failed `max_retries` times in a row, or
    when work has been waiting (fetched or claimed, not yet done) for longer than `stuck_after_s`. A
    role that has no work is never stuck, however long it idles.
    """

    role: str
    stuck_after_s: float = 300.0
    max_retries: int = 5
    clock: Callable[[], float] = time.monotonic
    _waiting_since: dict[Lane, float] = field(default_factory=dict)
    _retries: dict[Lane, tuple[int | None, int]] = field(default_factory=dict)  # lane -> (offset, times)

    def working(self, lane: Lane) -> None:
        """Work is there to do: the clock starts unless it already runs."""
        self._waiting_since.setdefault(lane, self.clock())

    def advanced(self, lane: Lane) -> None:
        """Done (committed, published): the lane moved; its clock and its retries start over."""
        self._waiting_since.pop(lane, None)
        self._retries.pop(lane, None)

    def retried(self, lane: Lane, offset: int | None = None) -> int:
        """A failed attempt at `offset`, to be retried; returns how many in a row failed there."""
        RETRIES.labels(self.role).inc()
        last, times = self._retries.get(lane, (offset, 0))
        times = times + 1 if last == offset else 1
        self._retries[lane] = (offset, times)
        return times

    def forget(self, lane: Lane) -> None:
        """No longer ours (revoked)."""
        self.advanced(lane)

    def stuck(self) -> str | None:
        now = self.clock()
        reasons = []
        for lane in sorted(set(self._retries) | set(self._waiting_since), key=_lane_order):
            offset, times = self._retries.get(lane, (None, 0))
            waited = now - self._waiting_since.get(lane, now)
            where = f"partition {lane}" if isinstance(lane, int) else lane
            if times >= self.max_retries:
                at = f"offset {offset} " if offset is not None else ""
                reasons.append(f"{where}: {at}failed {times} times in a row")
            elif waited > self.stuck_after_s:
                what = "records" if isinstance(lane, int) else "work"
                reasons.append(f"{where}: no progress for {waited:.0f}s with {what} waiting")
        STUCK_PARTITIONS.labels(self.role).set(len(reasons))
        return f"{self.role}: " + "; ".join(reasons) if reasons else None


def _lane_order(lane: Lane) -> tuple[int, int, str]:
    return (0, lane, "") if isinstance(lane, int) else (1, 0, lane)


async def record_consumer_lag(role: str, consumer: Any, tp: Any, done: int | None = None) -> None:
    """The lag of one assigned partition after a batch (`done`: the next offset processed) or an idle
    poll: from the consumer's position, which steps over transaction markers, so a drained partition
    whose last records were written in a transaction reads 0, not 1 (the marker's offset)."""
    try:
        position = await consumer.position(tp)
        end = consumer.last_stable_offset(tp)
    except Exception:  # no longer assigned (a rebalance): its next owner reports it
        return
    if end is not None:  # None: the consumer has not seen the partition's end yet
        CONSUMER_LAG.labels(role, str(tp.partition)).set(max(0, end - max(done or 0, position)))


@dataclass
class Probe:
    """What /healthz and /readyz answer from, set by the worker."""

    started: Callable[[], bool]
    stopping: Callable[[], bool]
    failed: Callable[[], str | None]
    stuck: Callable[[], str | None] = lambda: None


class ObservabilityServer:
    def __init__(self, probe: Probe, host: str = "127.0.0.1", port: int = 9464) -> None:
        self.probe = probe
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port: say which one
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        logging.getLogger(__name__).info(
            "metrics and health on http://%s:%d", self.host, self.port, extra={"port": self.port}
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, _: web.Request) -> web.Response:
        failure = self.probe.failed()
        if failure:
            return web.json_response({"status": "failed", "reason": failure}, status=503)
        stuck = self.probe.stuck()
        if stuck:
            return web.json_response({"status": "stuck", "reason": stuck}, status=503)
        return web.json_response({"status": "ok"})

    async def _ready(self, _: web.Request) -> web.Response:
        if self.probe.stopping():
            return web.json_response({"status": "stopping"}, status=503)
        if not self.probe.started():
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ready"})


class _NameRecords(logging.Filter):
    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def configure_logging(fmt: str = "json", level: int = logging.INFO, worker: str | None = None) -> None:
    """JSON lines on stderr (the `extra` fields, such as command_id and event_ids, become keys), or text.
    `worker`: the process's name among its supervisor's children, on every line (key `worker`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        named = "" if worker is None else worker.replace("%", "%%") + " "
        handler.setFormatter(logging.Formatter(f"%(asctime)s {named}%(levelname)s %(name)s: %(message)s"))
    if worker is not None:
        handler.addFilter(_NameRecords(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("enrollstream").setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
