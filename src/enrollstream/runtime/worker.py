"""One process running the chosen roles until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from enrollstream.adapters.dns.mx import MxVerifier, Nameserver
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.mail.bounce_webhooks import InvalidWebhookSettings, parse_endpoints
from enrollstream.api.server import ApiServer
from enrollstream.config import (
    InvalidSettings,
    Settings,
    parse_nameservers,
    require_settings,
    unsubscribe_key_list,
)
from enrollstream.runtime.campaigns import CampaignCatalog
from enrollstream.runtime.contact_imports import ContactImportCatalog
from enrollstream.runtime.decider import DeciderService
from enrollstream.runtime.dispatcher import DispatcherService
from enrollstream.runtime.inbound import InboundService
from enrollstream.runtime.projector import ProjectorService
from enrollstream.runtime.receiver import ReceiverService
from enrollstream.runtime.scheduler import SchedulerService, utc_now
from enrollstream.runtime.unsubscribe_server import UnsubscribeServer
from enrollstream.runtime.webhook_relay import WebhookRelayService
from enrollstream.state import StoreOptions

log = logging.getLogger(__name__)

ROLES = (
    "decider",
    "projector",
    "scheduler",
    "dispatcher",
    "inbound",
    "relay",
    "unsubscribe",
    "api",
    "receiver",
)
# What runs when no roles are named: everything a sequence needs to be decided, projected, fired, sent
# and stopped by a reply (inbound needs no settings and idles on an empty topic). The dispatcher needs
# SMTP and sender settings: missing ones stop the worker at start, named (config.require_settings).
# Opt-in: the relay, a reference for integrators that POSTs to their URLs (one they run themselves would
# deliver each event twice), and the unsubscribe endpoint, which opens a public port. The receiver (SMTP
# listener and IMAP poller for replies, docs/delivery.md "Receiving replies") needs its reply domain.
DEFAULT_ROLES = ("decider", "projector", "scheduler", "dispatcher", "inbound")


class Service(Protocol):
    async def start(self) -> None: ...
    async def run(self, stop: asyncio.Event) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Worker:
    settings: Settings
    bootstrap: str
    database_url: str
    roles: tuple[str, ...] = DEFAULT_ROLES
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], datetime] = utc_now  # the scheduler's "now"; tests inject a manual clock
    decider: DeciderService | None = None
    projector: ProjectorService | None = None
    ready: bool = False  # every role started (readiness)
    failure: str | None = None  # a role failed (health)
    relay: WebhookRelayService | None = None
    unsubscribe: UnsubscribeServer | None = None
    scheduler: SchedulerService | None = None
    dispatcher: DispatcherService | None = None
    inbound: InboundService | None = None
    api: ApiServer | None = None
    receiver: ReceiverService | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)

    async def run(self, started: asyncio.Event | None = None) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles: {', '.join(sorted(unknown))} (known: {', '.join(ROLES)})")
        check_settings(self.settings, self.roles)  # before any topic is touched or record consumed
        await ensure_topics(
            self.bootstrap, self.topics, self.settings.partitions, self.settings.replication_factor
        )
        catalog = CampaignCatalog(self.bootstrap, self.topics.campaigns)
        imports = ContactImportCatalog(self.bootstrap, self.topics.contact_imports)
        services: list[Service] = []
        if "decider" in self.roles or "scheduler" in self.roles:
            await catalog.start()
        if "decider" in self.roles:
            await imports.start()
            self.decider = DeciderService(
                self.bootstrap,
                self.topics,
                self.settings.group_id,
                catalog,
                imports=imports,
                mx=mx_verifier(self.settings),
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                stuck_after_s=self.settings.stuck_after_s,
                stuck_retries=self.settings.stuck_retries,
                max_future_skew=_seconds_or_none(self.settings.command_max_future_skew_s),
                max_age=_seconds_or_none(self.settings.command_max_age_s),
                batch_wait_ms=self.settings.decider_batch_wait_ms,
                state_dir=self.settings.state_dir if self.settings.state_store == "disk" else None,
                state_cache_bytes=self.settings.state_cache_mb * 2**20 * 3 // 4,
                store_options=StoreOptions(memory_bytes=self.settings.state_cache_mb * 2**20 // 4),
            )
            services.append(self.decider)
        if "projector" in self.roles:
            self.projector = ProjectorService(
                self.bootstrap,
                self.topics.events,
                self.database_url,
                self.settings.group_id,
                results_topic=self.topics.command_results,
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                stuck_after_s=self.settings.stuck_after_s,
                stuck_retries=self.settings.stuck_retries,
            )
            services.append(self.projector)
        if "scheduler" in self.roles:
            self.scheduler = SchedulerService(
                self.bootstrap,
                self.topics,
                self.database_url,
                catalog,
                clock=self.clock,
                interval_ms=self.settings.scheduler_interval_ms,
                batch=self.settings.scheduler_batch,
                lease_ms=self.settings.scheduler_lease_ms,
                stuck_after_s=self.settings.stuck_after_s,
                stuck_retries=self.settings.stuck_retries,
            )
            services.append(self.scheduler)
        if "relay" in self.roles:
            self.relay = WebhookRelayService.from_settings(self.settings, self.bootstrap)
            services.append(self.relay)
        if "unsubscribe" in self.roles:
            self.unsubscribe = UnsubscribeServer(
                self.bootstrap,
                self.topics,
                unsubscribe_key_list(self.settings),
                host=self.settings.unsubscribe_host,
                port=self.settings.unsubscribe_port,
                publish_timeout_s=self.settings.unsubscribe_publish_timeout_s,
                idle_timeout_s=self.settings.unsubscribe_idle_timeout_s,
                body_timeout_s=self.settings.unsubscribe_body_timeout_s,
                max_connections=self.settings.unsubscribe_max_connections,
                bounce_webhooks=parse_endpoints(self.settings.bounce_webhooks),
                database_url=self.database_url,
            )
            services.append(self.unsubscribe)
        if "dispatcher" in self.roles:
            self.dispatcher = DispatcherService.from_settings(
                self.settings, self.bootstrap, self.database_url, clock=self.clock
            )
            services.append(self.dispatcher)
        if "inbound" in self.roles:
            self.inbound = InboundService(
                self.bootstrap,
                self.topics,
                self.database_url,
                self.settings.group_id,
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                stuck_after_s=self.settings.stuck_after_s,
                stuck_retries=self.settings.stuck_retries,
                unmatched_max_rows=self.settings.inbound_unmatched_max_rows,
            )
            services.append(self.inbound)
        if "receiver" in self.roles:
            self.receiver = ReceiverService.from_settings(
                self.settings, self.bootstrap, self.database_url, clock=self.clock
            )
            services.append(self.receiver)
        if "api" in self.roles:
            self.api = ApiServer(
                self.bootstrap,
                self.topics,
                self.database_url,
                host=self.settings.api_host,
                port=self.settings.api_port,
                result_timeout_s=self.settings.api_result_timeout_s,
            )
            services.append(self.api)
        try:
            for service in services:
                await service.start()
            self.ready = True
            if started is not None:
                started.set()
            tasks = [asyncio.create_task(service.run(self.stop_event)) for service in services]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            self.stop_event.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    self.failure = repr(task.exception())
                    raise task.exception()  # type: ignore[misc]
        finally:
            for service in reversed(services):
                with contextlib.suppress(Exception):
                    await service.stop()
            await catalog.stop()
            await imports.stop()

    def stop(self) -> None:
        self.stop_event.set()

    def stuck(self) -> str | None:
        """Why a role is stuck (no progress on work it has, or repeated failures at one offset), for
        /healthz; None while every role moves. Each role that consumes or works reports its progress
        (`Progress`: per partition, or per named lane such as the scheduler's due timers); the
        unsubscribe endpoint only answers requests and has no work of its own to be stuck on."""
        reasons = [
            self.decider and self.decider.progress.stuck(),
            self.projector and self.projector.stuck(),
            self.scheduler and self.scheduler.progress.stuck(),
            self.dispatcher and self.dispatcher.progress.stuck(),
            self.inbound and self.inbound.progress.stuck(),
            self.relay and self.relay.progress.stuck(),
            self.receiver and self.receiver.progress.stuck(),
        ]
        return "; ".join(reason for reason in reasons if reason) or None


def check_settings(settings: Settings, roles: Iterable[str]) -> None:
    """What the roles need from the settings, checked before anything connects: InvalidSettings names
    what is missing (MissingSettings) or unusable."""
    roles = tuple(roles)
    require_settings(settings, roles)
    if "dispatcher" in roles:
        try:  # builds the sender identity and SMTP configuration; connects nothing
            DispatcherService.from_settings(settings, "", "")
        except InvalidSettings:
            raise
        except ValueError as exc:
            raise InvalidSettings(f"the dispatcher role cannot use its settings: {exc}") from exc
    if "unsubscribe" in roles:
        try:
            parse_endpoints(settings.bounce_webhooks)
        except InvalidWebhookSettings as exc:
            raise InvalidSettings(f"the unsubscribe role cannot use its settings: {exc}") from exc


def mx_verifier(settings: Settings) -> MxVerifier:
    nameservers = [Nameserver(host, port) for host, port in parse_nameservers(settings.dns_nameservers)]
    return MxVerifier(lambda: datetime.now(UTC), nameservers or None, timeout=settings.dns_timeout_s)


def parse_roles(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_ROLES
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


def _seconds_or_none(seconds: float) -> timedelta | None:
    """A bound in seconds from the settings; 0 means unchecked."""
    return timedelta(seconds=seconds) if seconds > 0 else None
