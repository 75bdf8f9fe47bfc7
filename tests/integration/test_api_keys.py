"""The HTTP API's keys (issue 13): made by the CLI, hashed at rest, one account each, revocable; and
the API's one error shape. Through uvicorn on a real socket, against the real broker and database."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from tests.api_support import client_for, new_key, running_api

A, B = "acct-a", "acct-b"


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enrollstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200"},
        check=False,
    )


def campaign(account_id: str, campaign_id: str, name: str) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": account_id,
            "version": 1,
            "name": name,
            "steps": [{"channel": "email", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def test_api_key_create_prints_the_key_alone_on_its_last_line_and_keeps_only_its_hash(
    database_url: str,
) -> None:
    created = cli("api-key", "create", "--account", A, "--label", "crm sync", database_url=database_url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("es_") and " " not in key

    async def stored() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch("select * from api_keys")
        finally:
            await conn.close()

    rows = asyncio.run(stored())
    assert len(rows) == 1 and rows[0]["account_id"] == A and rows[0]["label"] == "crm sync"
    assert rows[0]["key_sha256"] == hashlib.sha256(key.encode()).digest()
    assert key not in str(dict(rows[0]))  # the key itself is nowhere at rest

    listed = cli("api-key", "list", database_url=database_url)
    assert listed.returncode == 0 and rows[0]["key_id"] in listed.stdout and key not in listed.stdout
    revoked = cli("api-key", "revoke", rows[0]["key_id"], database_url=database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert cli("api-key", "revoke", "nosuchkey", database_url=database_url).returncode == 1


@pytest.mark.timeout(120)
async def test_a_key_sees_only_its_accounts_campaigns(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign(A, "drip", "A's drip"))
    await publish_campaign(bootstrap, topics.campaigns, campaign(A, "blast-1", "A's news"))
    await publish_campaign(bootstrap, topics.campaigns, campaign(B, "drip", "B's drip"))  # same id, B's
    await publish_campaign(bootstrap, topics.campaigns, campaign(B, "b-only", "B's own"))
    key_a, key_b = await new_key(database_url, A), await new_key(database_url, B)
    async with running_api(settings) as api, client_for(api, key_a) as as_a, client_for(api, key_b) as as_b:
        listed = (await as_a.get("/campaigns")).json()["campaigns"]
        assert [(c["id"], c["name"]) for c in listed] == [("blast-1", "A's news"), ("drip", "A's drip")]
        assert (await as_b.get("/campaigns/drip")).json()["name"] == "B's drip"
        # Another account's campaign is the same 404 as no campaign at all.
        for path in ("/campaigns/b-only", "/campaigns/nope"):
            answer = await as_a.get(path)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "campaign_not_found"


@pytest.mark.timeout(120)
async def test_without_a_live_key_every_request_is_401_in_the_one_error_shape(
    settings: Settings, database_url: str
) -> None:
    key = await new_key(database_url, A)
    async with running_api(settings) as api:
        bad_headers: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer es_000000000000_" + "x" * 43},  # well formed, unknown
            {"Authorization": f"Bearer {key[:-1]}"},
            {"Authorization": f"Basic {key}"},
        ]
        for bad in bad_headers:
            async with client_for(api, None) as client:
                answer = await client.get("/campaigns", headers=bad)
                assert answer.status_code == 401, bad
                assert answer.headers["www-authenticate"] == "Bearer"
                assert answer.json()["error"]["code"] == "unauthorized"
        async with client_for(api, key) as client:
            assert (await client.get("/campaigns")).status_code == 200
            key_id = key.split("_")[1]
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("update api_keys set revoked_at = now() where key_id = $1", key_id)
            finally:
                await conn.close()
            revoked = await client.get("/campaigns")
            assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "unauthorized"
            missing = await client.get("/no/such/route")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_committed_openapi_document_is_the_apps() -> None:
    from enrollstream.api import render_openapi

    committed = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"
    document = render_openapi()
    assert committed.read_text() == document
    assert '"openapi": "3.1' in document and '"/campaigns/{campaign_id}"' in document
