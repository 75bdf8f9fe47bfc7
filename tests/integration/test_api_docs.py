"""docs/api.md cannot rot: every `curl` example in it runs, in order, against a real stack (the API, the
decider and the projector), and answers the status its comment says."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.api.commands import command_id_for
from enrollstream.client import EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.contact_imports import publish_contact_import
from tests.api_support import new_key, running_api
from tests.integration.test_api_enrollments import A, contact_import, drip
from tests.support import eventually, fetch_one, running_worker

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EXAMPLE = re.compile(r"```sh\n# (\d{3})[^\n]*\n(.*?)```", re.DOTALL)
# Each example's own command line, with curl printing only the status (the body goes to stderr).
CURL_STATUS = "curl() { command curl -s -o /dev/stderr -w '%{http_code}' \"$@\"; }\n"


def examples() -> list[tuple[int, str]]:
    return [(int(status), script) for status, script in EXAMPLE.findall(DOC.read_text())]


def test_every_curl_block_in_the_docs_says_its_status() -> None:
    blocks = DOC.read_text().count("```sh")
    found = examples()
    assert blocks == len(found) >= 20 and all("curl " in script for _, script in found)


async def enrollment_of(database_url: str, contact_id: str) -> str:
    async def projected() -> bool:
        return (
            await fetch_one(database_url, "select 1 from enrollments where contact_id = $1", contact_id)
            is not None
        )

    await eventually(projected, timeout=30, what=f"{contact_id}'s enrollment projected")
    row = await fetch_one(
        database_url, "select enrollment_id from enrollments where contact_id = $1", contact_id
    )
    assert row is not None
    return str(row["enrollment_id"])


@pytest.mark.timeout(300)
async def test_every_curl_example_in_docs_api_md_answers_its_status(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, drip(A))
    await publish_contact_import(bootstrap, topics.contact_imports, contact_import(A, "import-1", 5))
    key = await new_key(database_url, A)
    async with running_worker(settings), running_api(settings) as api:
        async with EnrollstreamClient(bootstrap, topics.prefix) as client:
            put = await client.put_contact_and_wait(A, "c-2", name="Contact", email="c-2@example.org")
            assert put.status == "accepted"  # c-1 is put by the docs' own example
        env = {
            **os.environ,
            "API": api.url,
            "KEY": key,
            "COMMAND_ID": command_id_for(A, "POST /campaigns/welcome/enroll_contact", "enroll-c-1"),
        }
        for status, script in examples():
            if "$ENROLLMENT_ID" in script:
                env["ENROLLMENT_ID"] = await enrollment_of(database_url, "c-1")
            if "$OTHER_ENROLLMENT_ID" in script:
                env["OTHER_ENROLLMENT_ID"] = await enrollment_of(database_url, "imp000")
            if script.startswith('curl -sS "$API/contacts/c-1"'):  # a GET: once the PUT is projected

                async def profile_projected() -> bool:
                    found = await fetch_one(database_url, "select 1 from contacts where contact_id = 'c-1'")
                    return found is not None

                await eventually(profile_projected, timeout=30, what="the documented contact projected")
            if "$COMMAND_ID" in script:

                async def decided() -> bool:
                    return (
                        await fetch_one(
                            database_url, "select 1 from decisions where command_id = $1", env["COMMAND_ID"]
                        )
                        is not None
                    )

                await eventually(decided, timeout=30, what="the documented command decided")
            ran = await asyncio.create_subprocess_exec(
                "bash", "-c", CURL_STATUS + script, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(ran.communicate(), timeout=60)
            assert out.decode()[-3:] == str(status), (script, out.decode(), err.decode())
