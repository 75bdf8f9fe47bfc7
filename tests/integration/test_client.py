"""The client library against the real broker and a running worker, including the documented example."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.client import CommandTimeout, EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from tests.support import running_worker

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def welcome(account_id: str = "acct-1") -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "welcome",
            "account_id": account_id,
            "version": 1,
            "steps": [{"channel": "email", "delay": "PT1H", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


async def test_enroll_then_stop_and_the_results_carry_the_outcome(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, welcome())
    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix) as client:
        enrolled = await client.enroll("acct-1", "c1", "welcome", name="Ada", email="ada@example.org")
        assert enrolled.status == "accepted"
        [enrollment_id] = enrolled.enrollment_ids
        again = await client.enroll("acct-1", "c1", "welcome", name="Ada", email="ada@example.org")
        assert (again.status, again.code) == ("rejected", "contact_already_enrolled")
        unknown = await client.enroll("acct-1", "c2", "no-such-campaign", name="Bo")
        assert (unknown.status, unknown.code) == ("rejected", "campaign_not_found")
        stopped = await client.stop_enrollment("acct-1", "c1", enrollment_id, note="by the test")
        assert stopped.status == "accepted"
        # The same command id again: decided once, the second result says duplicate.
        data = {"contact_id": "c3", "campaign_id": "welcome", "contact": {"name": "Cy", "email": "cy@x.org"}}
        command = client.envelope("Enroll.v1", "acct-1", data)
        first, second = await client.send(command), await client.send(command)
        assert (first.status, second.status) == ("accepted", "duplicate")


async def test_no_result_in_time_is_a_clear_timeout(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    async with EnrollstreamClient(bootstrap, topics.prefix) as client:  # no worker: nobody decides
        try:
            await client.enroll("acct-1", "c1", "welcome", command_id="cmd-lonely", timeout=1.0)
        except CommandTimeout as exc:
            assert exc.command_id == "cmd-lonely"
        else:
            raise AssertionError("expected CommandTimeout")


async def test_the_documented_example_runs_as_written(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    example = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert example, "docs/client.md has a python example"
    await publish_campaign(bootstrap, topics.campaigns, welcome())
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ENROLLSTREAM_TOPIC_PREFIX": topics.prefix}
    async with running_worker(settings):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", example.group(1), env=env, stdout=PIPE, stderr=PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode().startswith("accepted ['"), out.decode()
