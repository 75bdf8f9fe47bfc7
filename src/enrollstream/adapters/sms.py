"""The SMS channel: a pluggable interface and the default, a Kafka topic a gateway relay consumes.

`OutboundSmsTopicChannel` does not talk to an SMS provider. It publishes one `OutboundSms.v1` record
per attempt to `<prefix>outbound-sms`, keyed by the recipient number (so one recipient's messages stay
in order), with the idempotency key in the record and in an `idempotency-key` header. The relay sends
it and must deduplicate by `idempotency_key`: that makes a retry after an ambiguous publish safe, so
unlike SMTP the SMS channel never reports `unknown`: a failed publish is `temporary`.

`sent` here means "accepted by the relay topic"; delivery receipts, if the relay has them, come back
as commands (e.g. BounceDetected) like any other signal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Literal, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.domain.delivery_policy import SendOutcome, SendResult

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_BODY_CHARS = 1600  # ten concatenated segments; longer is a template problem, not a send


class SmsChannel(Protocol):
    async def send(self, to: str, body: str, idempotency_key: str) -> SendResult:
        """Hand one SMS over; the same idempotency key must never yield two messages."""
        ...


class OutboundSms(BaseModel):
    """The record on the outbound-sms topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["OutboundSms.v1"] = "OutboundSms.v1"
    idempotency_key: str = Field(min_length=1)  # e.g. the attempt's message id
    to: str  # E.164
    body: str
    requested_at: AwareDatetime


class OutboundSmsTopicChannel:
    """Publishes to `topics.outbound_sms` with a producer the caller started (and stops)."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics, clock: Callable[[], datetime]) -> None:
        self._producer = producer
        self._topic = topics.outbound_sms
        self._clock = clock

    async def send(self, to: str, body: str, idempotency_key: str) -> SendResult:
        number = to.replace(" ", "").replace("-", "")
        if not _E164.match(number):
            # The contact's number, not our side: no attempt can reach it (the enrollment fails).
            return SendResult(SendOutcome.INVALID_RECIPIENT, f"not an E.164 number: {to!r}")
        if not body.strip():
            return SendResult(SendOutcome.ERROR, "empty SMS body")
        if len(body) > MAX_BODY_CHARS:
            return SendResult(SendOutcome.ERROR, f"SMS body longer than {MAX_BODY_CHARS} characters")
        if not idempotency_key:
            return SendResult(SendOutcome.ERROR, "missing idempotency key")
        record = OutboundSms(
            idempotency_key=idempotency_key, to=number, body=body, requested_at=self._clock()
        )
        try:
            metadata = await self._producer.send_and_wait(
                self._topic,
                record.model_dump_json().encode(),
                key=number.encode(),
                headers=[("idempotency-key", idempotency_key.encode())],
            )
        except KafkaError as exc:
            # Maybe written, maybe not: the relay's deduplication by idempotency key makes a retry safe.
            return SendResult(SendOutcome.TEMPORARY, f"publish to {self._topic}: {type(exc).__name__}: {exc}")
        where = f"{metadata.topic}/{metadata.partition}/{metadata.offset}"
        return SendResult(SendOutcome.SENT, f"queued for the SMS relay at {where}", None, where)
