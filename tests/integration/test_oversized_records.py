"""Outputs that can never fit, through the real broker: a snapshot that would outgrow one record is refused
with `state_too_large`, a command compressed past the request size becomes a dead letter by reference, a
dead letter the broker cannot take makes /healthz say the decider is stuck. Each partition goes on."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.records import DEAD_LETTER_PREFIX_BYTES, MAX_RECORD_BYTES, header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.observability import ObservabilityServer, Probe
from enrollstream.operations import OperatorError, dead_letters, retry_dead_letters
from enrollstream.runtime.campaigns import campaign_key, publish_campaign
from tests.support import eventually, read_until, running_worker, set_topic_config

ACCOUNT = "acct-big"
AT = datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat()


async def publish_unversioned(bootstrap: str, topic: str, campaign: CampaignDefinition) -> None:
    """Publish `campaign` as publishers did before versions were kept: only under its latest key. Such a
    version may be compacted away after an edit, so snapshots embed it (the fallback) and grow with it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        key = campaign_key(campaign.account_id, campaign.campaign_id)
        await producer.send_and_wait(topic, campaign.model_dump_json().encode(), key=key, partition=0)
    finally:
        await producer.stop()


def html_campaign(campaign_id: str, body_bytes: int) -> CampaignDefinition:
    """A campaign whose one email step is a large HTML newsletter (different text per campaign)."""
    paragraph = f"<p>{campaign_id}: news, offers and a long story about our products.</p>\n"
    body = "<html><body>" + paragraph * (body_bytes // len(paragraph)) + "</body></html>"
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": ACCOUNT,
            "version": 1,
            "steps": [{"channel": "email", "delay": "P1D", "content": {"subject": "News", "body": body}}],
        }
    )


def command(type_: str, contact_id: str, **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": type_,
        "account_id": ACCOUNT,
        "issued_at": AT,
        "actor": "test",
        "data": {"contact_id": contact_id, **data},
    }


def enroll(contact_id: str, campaign_id: str) -> dict[str, Any]:
    contact = {"name": contact_id.title(), "email": f"{contact_id}@example.org"}
    return command("Enroll.v1", contact_id, campaign_id=campaign_id, contact=contact)


async def produce(bootstrap: str, topic: str, value: bytes, key: str, **config: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **config)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def results_by_id(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {json.loads(r.value)["command_id"]: json.loads(r.value) for r in records}


def aborted_transactions() -> float:
    return metrics.TRANSACTIONS.labels("decider", "aborted")._value.get()  # type: ignore[no-any-return]


async def test_a_snapshot_that_would_outgrow_a_record_is_refused_with_state_too_large(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    # Four campaigns of ~290 KB of HTML each, published before versions were kept (so embedded in the
    # snapshot): one contact in all four would need a ~1.2 MB snapshot.
    campaigns = [html_campaign(f"news-{i}", 290_000) for i in range(1, 5)]
    for campaign in campaigns:
        await publish_unversioned(bootstrap, topics.campaigns, campaign)
    key = f"{ACCOUNT}/ada"  # every command on one key, so on one partition, in this order
    enrolls = [enroll("ada", c.campaign_id) for c in campaigns]
    aborted_before = aborted_transactions()
    async with running_worker(settings, roles=("decider",)):
        for e in enrolls:
            await produce(bootstrap, topics.commands, json.dumps(e).encode(), key)
        records = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {e["command_id"] for e in enrolls} <= set(results_by_id(rs)),
            timeout=15,
        )
        results = [results_by_id(records)[e["command_id"]] for e in enrolls]
        assert results[0]["status"] == "accepted"
        refused = [r for r in results if r["status"] == "rejected"]
        assert results[-1] in refused
        assert all(r["code"] == "state_too_large" for r in refused), refused
        assert "nothing was changed" in refused[0]["message"]
        kept = [r for r in results if r["status"] == "accepted"]
        assert results == kept + refused  # accepted until the state was full, refused from there on

        # The next command on that partition is processed: the full contact can still be stopped.
        stop = command("Stop.v1", "ada", enrollment_id=kept[0]["enrollment_ids"][0])
        await produce(bootstrap, topics.commands, json.dumps(stop).encode(), key)
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: stop["command_id"] in results_by_id(rs), timeout=15
        )
        assert results_by_id(records)[stop["command_id"]]["status"] == "accepted"
        # One snapshot per contact per transaction: how many there are depends on how the commands
        # were batched, so wait for the one that has the Stop.
        snapshots = await read_until(
            bootstrap,
            topics.aggregates,
            lambda rs: bool(rs) and stop["command_id"] in json.loads(rs[-1].value)["processed_command_ids"],
            timeout=15,
        )
    # The contact's state is what the accepted commands made of it, and every snapshot fits in a record.
    latest = json.loads(snapshots[-1].value)
    assert len(latest["enrollments"]) == len(kept)
    assert all(len(r.value) < MAX_RECORD_BYTES for r in snapshots)
    assert aborted_transactions() == aborted_before  # refused up front, never produced and retried


async def test_a_contact_in_campaigns_larger_than_a_record_keeps_a_small_snapshot(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    # The same four ~290 KB campaigns, published with their versions kept: the snapshot refers to them.
    campaigns = [html_campaign(f"news-{i}", 290_000) for i in range(1, 5)]
    for campaign in campaigns:
        await publish_campaign(bootstrap, topics.campaigns, campaign)
    key = f"{ACCOUNT}/ada"
    enrolls = [enroll("ada", c.campaign_id) for c in campaigns]
    async with running_worker(settings, roles=("decider",)):
        for e in enrolls:
            await produce(bootstrap, topics.commands, json.dumps(e).encode(), key)
        records = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {e["command_id"] for e in enrolls} <= set(results_by_id(rs)),
            timeout=15,
        )
    assert [results_by_id(records)[e["command_id"]]["status"] for e in enrolls] == ["accepted"] * 4
    # One snapshot per transaction that changed ada (fewer when several Enrolls shared one): the last
    # holds all four enrollments.
    snapshots = await read_until(
        bootstrap,
        topics.aggregates,
        lambda rs: any(len(json.loads(r.value)["enrollments"]) == 4 for r in rs),
        timeout=15,
    )
    assert len(json.loads(snapshots[-1].value)["enrollments"]) == 4
    assert all(len(s.value) < 4096 for s in snapshots)  # references, not up to 1.2 MB of definitions


async def test_a_command_compressed_past_the_request_size_becomes_a_dead_letter_by_reference(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, html_campaign("small", 100))
    key = f"{ACCOUNT}/bob"
    huge_stop = command("Stop.v1", "bob", enrollment_id="enr-1", note="x" * 2_000_000)
    original = json.dumps(huge_stop).encode()
    assert len(original) > 2 * MAX_RECORD_BYTES * 0.95  # ~2 MB uncompressed, a few KB gzip-compressed
    good = enroll("bob", "small")
    async with running_worker(settings, roles=("decider",)):
        await produce(
            bootstrap, topics.commands, original, key, compression_type="gzip", max_request_size=4 * 2**20
        )
        await produce(bootstrap, topics.commands, json.dumps(good).encode(), key)
        letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 1, timeout=15)
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: good["command_id"] in results_by_id(rs), timeout=15
        )
    assert results_by_id(records)[good["command_id"]]["status"] == "accepted"  # the partition moved on
    [letter] = letters
    assert "exceeds" in (header(letter.headers, "error.reason") or "")
    assert header(letter.headers, "original.truncated") == "true"
    assert header(letter.headers, "original.size") == str(len(original))
    assert header(letter.headers, "original.sha256") == hashlib.sha256(original).hexdigest()
    assert letter.value == original[:DEAD_LETTER_PREFIX_BYTES]
    assert header(letter.headers, "original.topic") == topics.commands

    # `enrollstream dlq list` shows it as kept by reference; `dlq retry` refuses it, saying why.
    [listed] = await dead_letters(bootstrap, topics)
    assert listed.truncated and listed.original_size == len(original)
    assert listed.stored.startswith(f"{DEAD_LETTER_PREFIX_BYTES} of {len(original)} (truncated")
    with pytest.raises(OperatorError, match="cannot be retried"):
        await retry_dead_letters(bootstrap, topics, [listed.id])


async def set_max_message_bytes(bootstrap: str, topic: str, value: int) -> None:
    await set_topic_config(bootstrap, topic, {"max.message.bytes": str(value)})


async def health(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_a_decider_that_cannot_write_a_dead_letter_is_reported_stuck_by_healthz(
    settings: Settings, topics: Topics
) -> None:
    """A dead-letter topic whose max.message.bytes is below any dead letter (a misconfiguration: the
    infrastructure, not the record, is at fault) makes the decider retry the same offset: /healthz turns
    503 "stuck" after `stuck_retries` failures in a row, and 200 again once the topic takes the letter.
    This proves the retry-count signal end to end; the time-based one ("records waiting, no commit for
    stuck_after_s") is the same Progress object's other rule, covered in tests/unit/test_progress.py."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await set_max_message_bytes(bootstrap, topics.dead_letters, 200)
    settings = settings.model_copy(update={"stuck_retries": 3})
    async with running_worker(settings, roles=("decider",)) as worker:
        assert worker.decider is not None
        worker.decider.max_retry_backoff_s = 0.5
        server = ObservabilityServer(
            Probe(started=lambda: worker.ready, stopping=worker.stop_event.is_set,
                  failed=lambda: worker.failure, stuck=worker.stuck),
            port=0,
        )  # fmt: skip
        await server.start()
        try:
            assert (await health(server.port))[0] == 200
            await produce(bootstrap, topics.commands, b"{not json", f"{ACCOUNT}/cyd")

            async def stuck() -> bool:
                return (await health(server.port))[0] == 503

            # Each retry re-creates the producer and re-reads the store: seconds apiece on a loaded machine.
            await eventually(stuck, timeout=60, what="/healthz 503")
            status, body = await health(server.port)
            assert (status, body["status"]) == (503, "stuck"), body
            assert "decider: partition" in body["reason"], body

            await set_max_message_bytes(bootstrap, topics.dead_letters, 1048588)  # fixed

            async def healthy() -> bool:
                return (await health(server.port))[0] == 200

            await eventually(healthy, timeout=60, what="/healthz 200 again")
            letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 1, timeout=10)
            assert [r.value for r in letters] == [b"{not json"]  # written once, when it could be
        finally:
            await server.stop()
