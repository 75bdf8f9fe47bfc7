"""Past the result bound a write answers 202 with `Location: /commands/{id}` (issue 13): with no decider
running the API cannot wait the command out; once one runs, the Location answers the decision, and the
same POST retried with its Idempotency-Key answers what the decision made, with one effect."""

from __future__ import annotations

import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.client import EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from tests.api_support import client_for, new_key, running_api
from tests.integration.test_api_enrollments import A, drip, error_code
from tests.support import eventually, fetch_one, running_worker


@pytest.mark.timeout(240)
async def test_a_write_not_decided_in_time_is_202_with_a_location_that_answers_once_decided(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, drip(A))
    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix) as client:
        assert (
            await client.put_contact_and_wait(A, "c1", name="Ada", email="ada@example.org")
        ).status == "accepted"
    key = await new_key(database_url, A)
    hurried = settings.model_copy(update={"api_result_timeout_s": 0.5})
    headers = {"Idempotency-Key": "enroll-c1"}
    request = {"contact_id": "c1", "batch_number": 2}
    async with running_api(hurried) as api, client_for(api, key) as as_a:
        pending = await as_a.post("/campaigns/welcome/enroll_contact", json=request, headers=headers)
        assert pending.status_code == 202, pending.text
        location = pending.headers["location"]
        assert location.startswith("/commands/") and pending.json()["location"] == location
        assert pending.json()["command_ids"] == [location.removeprefix("/commands/")]
        not_yet = await as_a.get(location)
        assert (not_yet.status_code, error_code(not_yet)) == (404, "command_not_found")

        async with running_worker(settings):

            async def decided() -> bool:
                return (await as_a.get(location)).status_code == 200

            await eventually(decided, timeout=60, what="the command decided and projected")
            command = (await as_a.get(location)).json()
            assert (command["command_type"], command["status"], command["code"]) == (
                "Enroll.v1",
                "accepted",
                None,
            )
            [enrollment_id] = command["enrollment_ids"]

            answers = []

            async def retried() -> bool:  # each retry is the same command: it may be 202 again, never twice
                answer = await as_a.post("/campaigns/welcome/enroll_contact", json=request, headers=headers)
                answers.append(answer.status_code)
                if answer.status_code == 200:
                    assert answer.json() == {
                        "id": enrollment_id,
                        "contact_id": "c1",
                        "batch_number": 2,
                        "status": "pending",
                    }
                return answer.status_code == 200

            await eventually(retried, timeout=60, what="the retried POST answered")
            assert set(answers) <= {200, 202}
    enrollments = await fetch_one(
        database_url, "select count(*) as n from enrollments where contact_id = 'c1'"
    )
    assert enrollments is not None and enrollments["n"] == 1
