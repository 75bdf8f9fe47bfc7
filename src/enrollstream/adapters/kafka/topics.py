"""The topics enrollstream reads and writes, under one configurable prefix, and their idempotent bootstrap."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


@dataclass(frozen=True)
class Topics:
    """Topic names. Commands, events and aggregate snapshots share one key (`account_id/contact_id`) and one
    partition count, so partition N of each holds the same contacts and one decider owns all three."""

    prefix: str = "enrollstream."

    @property
    def commands(self) -> str:
        return f"{self.prefix}commands"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def aggregates(self) -> str:
        return f"{self.prefix}aggregates-changelog"

    @property
    def campaigns(self) -> str:
        return f"{self.prefix}campaigns"

    @property
    def contact_imports(self) -> str:
        return f"{self.prefix}contact-imports"

    @property
    def command_results(self) -> str:
        return f"{self.prefix}command-results"

    @property
    def integration_events(self) -> str:
        return f"{self.prefix}integration-events"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"

    @property
    def outbound_sms(self) -> str:
        return f"{self.prefix}outbound-sms"

    @property
    def webhook_subscriptions(self) -> str:
        return f"{self.prefix}webhook-subscriptions"

    @property
    def inbound_email(self) -> str:
        return f"{self.prefix}inbound-email"

    @property
    def operator_requests(self) -> str:
        return f"{self.prefix}operator-requests"

    def specs(self, partitions: int) -> list[TopicSpec]:
        compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)}
        week = {"retention.ms": str(7 * DAY_MS)}
        return [
            TopicSpec(self.commands, partitions, week, "commands from upstream systems and the scheduler"),
            TopicSpec(
                self.events,
                partitions,
                {"retention.ms": "-1", "retention.bytes": "-1"},
                "domain events: the source of truth, kept forever",
            ),
            TopicSpec(self.aggregates, partitions, compacted, "latest aggregate snapshot per contact"),
            # One partition: every decider reads the whole campaign table, in order of its versions.
            TopicSpec(self.campaigns, 1, compacted, "campaign definitions, latest version per campaign"),
            # One partition, like campaigns: every decider reads the whole table. One import is one record.
            TopicSpec(
                self.contact_imports,
                1,
                {**compacted, "max.message.bytes": str(8 * 1024 * 1024)},
                "contact imports (contacts with their facts) that BulkEnroll names, latest per import",
            ),
            TopicSpec(self.command_results, partitions, week, "one result per command"),
            TopicSpec(self.integration_events, partitions, week, "public events for webhook relays"),
            TopicSpec(
                self.dead_letters,
                partitions,
                {"retention.ms": str(30 * DAY_MS)},
                "undecodable or invalid records, original bytes and the reason in headers",
            ),
            TopicSpec(self.outbound_sms, partitions, week, "SMS for the gateway relay, keyed by recipient"),
            # One partition, like campaigns: every relay holds the whole table. Key `<account_id> <url>`.
            TopicSpec(
                self.webhook_subscriptions,
                1,
                compacted,
                "webhook subscriptions (url, secret, active) per account, latest per key",
            ),
            TopicSpec(
                self.inbound_email,
                partitions,
                week,
                "received email (InboundEmailReceived) for reply detection, keyed by account",
            ),
            # The console's batch actions outside the enrollment domain (seed 003: add to group, send a
            # message), for a downstream system (docs/console.md). Keyed account_id/contact_id.
            TopicSpec(
                self.operator_requests,
                partitions,
                week,
                "console requests for downstream systems: add contacts to a group, send them a message",
            ),
        ]


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    # A topic just created may show no partitions until its metadata has propagated; ask again briefly.
    counts: dict[str, int] = {}
    for _ in range(200):
        described = await admin.describe_topics(names)
        counts = {entry["topic"]: len(entry["partitions"]) for entry in described}
        if all(counts.get(name) for name in names):
            break
        await asyncio.sleep(0.05)
    return counts


class TopicMismatchError(RuntimeError):
    """An existing topic disagrees with the deployment (for example, its partition count)."""


async def ensure_topics(
    bootstrap: str, topics: Topics, partitions: int, replication_factor: int = 1
) -> list[str]:
    """Create the missing topics; check the existing ones. Safe to run any number of times.

    Returns the names of the topics this call created.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        wanted = topics.specs(partitions)
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted if spec.name not in existing]
        # One request for every missing topic (a round trip to the controller each would be 11).
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.config) for s in missing]
            )
            for name, code, *message in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:  # another process created it since our list
                    error = for_code(code)
                    raise error(f"creating topic {name}: {message[0] if message else error.__name__}")
        actual = await _partition_counts(admin, [spec.name for spec in wanted])
        for spec in wanted:
            if actual.get(spec.name) != spec.partitions:
                raise TopicMismatchError(
                    f"topic {spec.name} has {actual.get(spec.name)} partitions, this deployment expects "
                    f"{spec.partitions} (ENROLLSTREAM_PARTITIONS); "
                    "the partition count is fixed per deployment"
                )
        return created
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Every topic whose name starts with `prefix` (a test's or a bench run's set): deleted, so their
    partitions do not pile up on the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def partition_numbers(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described[0]["partitions"])
