"""`enrollstream.client`: what an upstream system needs to publish commands and read their outcome.

    async with EnrollstreamClient("127.0.0.1:9092") as client:
        result = await client.enroll("acct-1", "contact-9", "welcome", name="Ada", email="ada@example.org")
        print(result.status)  # accepted / skipped or rejected (with result.code) / duplicate / ...

Commands are published with an idempotent producer, keyed by `account_id/contact_id` like the decider
expects; every command carries a `command_id`, the idempotency key, so publishing an accepted command
again yields a `duplicate` result, never a second effect. Results are read from the results topic,
which the client starts following (from its current end) before it publishes anything, so no result
of its own commands can slip past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from enrollstream.adapters.kafka.topics import Topics, partition_numbers
from enrollstream.domain import BulkEnroll, CommandResult, aggregate_key, parse_command
from enrollstream.domain.commands import ContactCommand, PutContact
from enrollstream.domain.integration import AnyIntegrationEvent, integration_event_adapter


class CommandTimeout(TimeoutError):
    def __init__(self, command_id: str, timeout: float) -> None:
        super().__init__(f"no result for command {command_id} within {timeout}s")
        self.command_id = command_id


def new_command_id() -> str:
    return f"cmd-{uuid.uuid4()}"


def command_key(command: ContactCommand | BulkEnroll) -> str:
    """The record key: one contact's commands go to one partition, so one writer decides them."""
    if isinstance(command, BulkEnroll):
        return f"{command.account_id}/"
    return aggregate_key(command.account_id, command.contact_id)


class EnrollstreamClient:
    def __init__(self, bootstrap_servers: str, topic_prefix: str = "enrollstream.", *, actor: str = "api"):
        self.bootstrap = bootstrap_servers
        self.topics = Topics(topic_prefix)
        self.actor = actor
        self._producer: AIOKafkaProducer | None = None
        self._results: AIOKafkaConsumer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}
        self._seen: dict[str, CommandResult] = {}  # results that arrived before anyone asked

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # an unreachable broker: close what was opened, then say so
            raise

    async def _start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=2
        )
        await self._producer.start()
        self._results = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, isolation_level="read_committed", enable_auto_commit=False
        )
        await self._results.start()
        numbers = await partition_numbers(self.bootstrap, self.topics.command_results)
        partitions = [TopicPartition(self.topics.command_results, p) for p in numbers]
        if not partitions:
            raise LookupError(f"topic {self.topics.command_results} not found: run `enrollstream topics`")
        self._results.assign(partitions)
        await self._results.seek_to_end(*partitions)
        for tp in partitions:
            await self._results.position(tp)  # resolve the end now, before anything is published
        self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        if self._results is not None:
            await self._results.stop()
            self._results = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # --- commands -------------------------------------------------------------------------------

    async def publish(self, command: ContactCommand | BulkEnroll | dict[str, Any]) -> str:
        """Validate and publish; returns the command id. Raises pydantic.ValidationError on bad input."""
        parsed = parse_command(command) if isinstance(command, dict) else command
        producer = self._producer
        assert producer is not None, "use `async with EnrollstreamClient(...)` or call start()"
        await producer.send_and_wait(
            self.topics.commands, parsed.model_dump_json().encode(), key=command_key(parsed).encode()
        )
        return parsed.command_id

    async def send(
        self, command: ContactCommand | BulkEnroll | dict[str, Any], timeout: float = 30.0
    ) -> CommandResult:
        """Publish and wait for the command's result."""
        command_id = command["command_id"] if isinstance(command, dict) else command.command_id
        waiter = self._waiter(command_id)
        await self.publish(command)
        return await self._await(command_id, waiter, timeout)

    async def result(self, command_id: str, timeout: float = 30.0) -> CommandResult:
        """The result of a command this client published (or will see published after its start)."""
        return await self._await(command_id, self._waiter(command_id), timeout)

    def envelope(
        self, command_type: str, account_id: str, data: dict[str, Any], **fields: Any
    ) -> dict[str, Any]:
        return {
            "command_id": fields.pop("command_id", None) or new_command_id(),
            "type": command_type,
            "account_id": account_id,
            "issued_at": fields.pop("issued_at", None) or datetime.now(UTC).isoformat(),
            "actor": fields.pop("actor", None) or self.actor,
            "data": data,
        }

    async def enroll(
        self,
        account_id: str,
        contact_id: str,
        campaign_id: str,
        *,
        name: str = "",
        email: str | None = None,
        mobile: str | None = None,
        batch_number: int = 0,
        priority: bool = False,
        command_id: str | None = None,
        timeout: float = 30.0,
    ) -> CommandResult:
        """Seed 001 `enroll_contact`: the contact's facts come from upstream."""
        data = {
            "contact_id": contact_id,
            "campaign_id": campaign_id,
            "contact": {"name": name, "email": email, "mobile": mobile},
            "batch_number": batch_number,
            "priority": priority,
        }
        return await self.send(self.envelope("Enroll.v1", account_id, data, command_id=command_id), timeout)

    async def stop_enrollment(
        self, account_id: str, contact_id: str, enrollment_id: str, *, note: str = "", timeout: float = 30.0
    ) -> CommandResult:
        """Seed 000 "Stop": the enrollment ends as stopped."""
        data = {"contact_id": contact_id, "enrollment_id": enrollment_id, "note": note}
        return await self.send(self.envelope("Stop.v1", account_id, data), timeout)

    async def unenroll(
        self, account_id: str, contact_id: str, enrollment_id: str, *, note: str = "", timeout: float = 30.0
    ) -> CommandResult:
        """Seed 004 "Unenroll": a step being processed completes, nothing after it is sent."""
        data = {"contact_id": contact_id, "enrollment_id": enrollment_id, "note": note}
        return await self.send(self.envelope("Unenroll.v1", account_id, data), timeout)

    # --- the contact directory ------------------------------------------------------------------

    def put_contact_command(
        self,
        account_id: str,
        contact_id: str,
        *,
        name: str = "",
        email: str | None = None,
        mobile: str | None = None,
        line_type: str = "unknown",
        time_zone: str | None = None,
        opted_out: bool = False,
        command_id: str | None = None,
        actor: str | None = None,
    ) -> PutContact:
        """The PutContact.v1 for this profile, validated (pydantic.ValidationError names a field out of
        bounds: a NUL, an overlong name, an unknown time zone)."""
        data = {
            "contact_id": contact_id,
            "name": name,
            "email": email,
            "mobile": mobile,
            "line_type": line_type,
            "time_zone": time_zone,
            "opted_out": opted_out,
        }
        command = parse_command(
            self.envelope("PutContact.v1", account_id, data, command_id=command_id, actor=actor)
        )
        assert isinstance(command, PutContact)
        return command

    async def put_contact(
        self,
        account_id: str,
        contact_id: str,
        *,
        name: str = "",
        email: str | None = None,
        mobile: str | None = None,
        line_type: str = "unknown",
        time_zone: str | None = None,
        opted_out: bool = False,
        command_id: str | None = None,
        actor: str | None = None,
    ) -> str:
        """`PUT /contacts/{contact_id}`: create or replace the contact's profile in the account's directory
        (upsert). Publishes PutContact.v1 and returns its command id; `put_contact_and_wait` also waits
        for the result. `opted_out=True` opts the contact out; False never re-subscribes one."""
        return await self.publish(
            self.put_contact_command(
                account_id, contact_id, name=name, email=email, mobile=mobile, line_type=line_type,
                time_zone=time_zone, opted_out=opted_out, command_id=command_id, actor=actor,
            )
        )  # fmt: skip

    async def put_contact_and_wait(
        self,
        account_id: str,
        contact_id: str,
        *,
        name: str = "",
        email: str | None = None,
        mobile: str | None = None,
        line_type: str = "unknown",
        time_zone: str | None = None,
        opted_out: bool = False,
        command_id: str | None = None,
        actor: str | None = None,
        timeout: float = 30.0,
    ) -> CommandResult:
        """`put_contact`, then its result (status accepted, or rejected with a code)."""
        command = self.put_contact_command(
            account_id, contact_id, name=name, email=email, mobile=mobile, line_type=line_type,
            time_zone=time_zone, opted_out=opted_out, command_id=command_id, actor=actor,
        )  # fmt: skip
        return await self.send(command, timeout)

    async def enroll_contact(
        self,
        account_id: str,
        contact_id: str,
        campaign_id: str,
        *,
        batch_number: int = 0,
        priority: bool = False,
        command_id: str | None = None,
        timeout: float = 30.0,
    ) -> CommandResult:
        """Seed 001 `enroll_contact {contact_id, batch_number, priority}`: the facts come from the contact's
        profile in the account's directory; a contact never put is rejected `contact_not_found`."""
        data = {
            "contact_id": contact_id,
            "campaign_id": campaign_id,
            "batch_number": batch_number,
            "priority": priority,
        }
        return await self.send(self.envelope("Enroll.v1", account_id, data, command_id=command_id), timeout)

    # --- job stages (seed 002) -------------------------------------------------------------------

    async def stage_changed(
        self,
        account_id: str,
        contact_id: str,
        *,
        application_id: str,
        pipeline_id: str,
        stage_id: str,
        entered_at: datetime,
        command_id: str | None = None,
        timeout: float = 30.0,
    ) -> CommandResult:
        """Seed 002: the contact's application was created in, or moved into, a job stage at `entered_at`
        (upstream's time of the move). Publishes StageChanged.v1 and waits for its result: accepted with
        the enrollments made in the account's campaigns linked to the stage, `skipped` (e.g. already
        enrolled), `duplicate` (that entry enrolled before, under any command id) or rejected
        `stage_not_linked`. The facts come from the contact's profile in the account's directory."""
        data = {
            "contact_id": contact_id,
            "application_id": application_id,
            "pipeline_id": pipeline_id,
            "stage_id": stage_id,
            "entered_at": entered_at.isoformat(),
        }
        envelope = self.envelope("StageChanged.v1", account_id, data, command_id=command_id)
        return await self.send(envelope, timeout)

    # --- integration events ---------------------------------------------------------------------

    async def integration_events(self, *, from_beginning: bool = False) -> AsyncIterator[AnyIntegrationEvent]:
        """The public events (`enrollment.sent`, ...), as a relay would read them; runs until cancelled."""
        consumer = AIOKafkaConsumer(
            self.topics.integration_events,
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
        )
        await consumer.start()
        try:
            async for record in consumer:
                yield integration_event_adapter.validate_json(record.value)
        finally:
            await consumer.stop()

    # --- results --------------------------------------------------------------------------------

    def _waiter(self, command_id: str) -> asyncio.Future[CommandResult]:
        future = self._waiting.get(command_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            seen = self._seen.pop(command_id, None)
            if seen is not None:
                future.set_result(seen)
            self._waiting[command_id] = future
        return future

    async def _await(
        self, command_id: str, waiter: asyncio.Future[CommandResult], timeout: float
    ) -> CommandResult:
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            raise CommandTimeout(command_id, timeout) from None
        finally:
            if waiter.done() and self._waiting.get(command_id) is waiter:
                self._waiting.pop(command_id, None)

    async def _follow(self) -> None:
        consumer = self._results
        assert consumer is not None
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    result = CommandResult.model_validate_json(record.value)
                    # Popped on delivery: a waiter that timed out (the HTTP API's 202) is not kept forever.
                    future = self._waiting.pop(result.command_id, None)
                    if future is not None and not future.done():
                        future.set_result(result)
                    elif future is None:
                        self._seen[result.command_id] = result
                        if len(self._seen) > 10_000:  # results of other clients' commands: keep a few
                            self._seen.pop(next(iter(self._seen)))
