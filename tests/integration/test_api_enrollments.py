"""Seed 001's Enrollments endpoints and the page's JSON (issue 13), through real HTTP (uvicorn on a socket)
against the real broker and the real worker (decider, projector): enroll a contact by id, bulk enroll an
import, the enrollments in keyset pages with seed 000's and seed 001's filters, replies, skips, the stats
cards, stop / unenroll / mark finished for a selection, a contact's "why", and every error code reachable."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.api import ApiServer
from enrollstream.client import EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, ContactImport
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.contact_imports import publish_contact_import
from tests.api_support import client_for, new_key, running_api
from tests.support import eventually, running_worker

A, B = "acct-a", "acct-b"


def drip(account_id: str, campaign_id: str = "welcome") -> CampaignDefinition:
    # A first step an hour out: nothing is sent (no dispatcher), the enrollments stay pending.
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": account_id,
            "version": 1,
            "name": "Welcome",
            "steps": [
                {"channel": "email", "delay": "PT1H", "content": {"subject": "Hi", "body": "Hello"}},
                {"channel": "email", "delay": "P1D", "content": {"subject": "Again", "body": "Hello again"}},
            ],
        }
    )


def contact_import(account_id: str, contact_import_id: str, n: int) -> ContactImport:
    contacts: list[dict[str, Any]] = [
        {
            "contact_id": f"imp{i:03d}",
            "contact": {"name": f"Imported {i}", "email": f"imp{i:03d}@example.org"},
        }
        for i in range(n)
    ]
    contacts[1]["contact"].pop("email")  # nothing to send an email step to: skipped, missing_address
    return ContactImport.model_validate(
        {"contact_import_id": contact_import_id, "account_id": account_id, "contacts": contacts}
    )


@dataclass
class Api:
    server: ApiServer
    a: httpx.AsyncClient  # account A's key
    b: httpx.AsyncClient  # account B's key
    database_url: str

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def projected(self, sql: str, *args: Any, what: str) -> None:
        """Wait (bounded) until the read model has what the API just answered."""

        async def check() -> bool:
            return bool(await self.rows(sql, *args))

        await eventually(check, timeout=30, what=what)


@contextlib.asynccontextmanager
async def api_stack(
    settings: Settings, topics: Topics, database_url: str, contacts: int = 3, imported: int = 0
) -> AsyncIterator[Api]:
    """Both accounts have a campaign `welcome` (A also `other`), A's directory has c0..c{n-1} (c0
    named with a `<script>`), B's has `b0`; with `imported`, A has the import `import-1`."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    for campaign in (drip(A), drip(A, "other"), drip(B)):
        await publish_campaign(bootstrap, topics.campaigns, campaign)
    if imported:
        await publish_contact_import(
            bootstrap, topics.contact_imports, contact_import(A, "import-1", imported)
        )
    key_a, key_b = await new_key(database_url, A), await new_key(database_url, B)
    async with running_worker(settings):
        async with EnrollstreamClient(bootstrap, topics.prefix, actor="crm") as client:
            for i in range(contacts):
                name = "<script>alert(1)</script>" if i == 0 else f"Contact {i}"
                put = await client.put_contact_and_wait(A, f"c{i}", name=name, email=f"c{i}@example.org")
                assert put.status == "accepted", put
            assert (
                await client.put_contact_and_wait(B, "b0", name="B", email="b0@example.org")
            ).status == "accepted"
        async with (
            running_api(settings) as server,
            client_for(server, key_a) as a,
            client_for(server, key_b) as b,
        ):
            yield Api(server, a, b, database_url)


def error_code(answer: httpx.Response) -> str:
    code: str = answer.json()["error"]["code"]
    return code


@pytest.mark.timeout(240)
async def test_enroll_contact_by_id_lists_it_and_answers_seed_001s_errors(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    async with api_stack(settings, topics, database_url) as api:
        created = await api.a.post(
            "/campaigns/welcome/enroll_contact",
            json={"contact_id": "c1", "batch_number": 1, "priority": True},
        )
        assert created.status_code == 200, created.text
        enrollment = created.json()
        assert enrollment.keys() == {"id", "contact_id", "batch_number", "status"}
        assert (enrollment["contact_id"], enrollment["batch_number"], enrollment["status"]) == (
            "c1",
            1,
            "pending",
        )

        again = await api.a.post("/campaigns/welcome/enroll_contact", json={"contact_id": "c1"})
        assert (again.status_code, error_code(again)) == (422, "contact_already_enrolled")
        unknown = await api.a.post("/campaigns/welcome/enroll_contact", json={"contact_id": "nobody"})
        assert (unknown.status_code, error_code(unknown)) == (404, "contact_not_found")
        no_campaign = await api.a.post("/campaigns/nope/enroll_contact", json={"contact_id": "c1"})
        assert (no_campaign.status_code, error_code(no_campaign)) == (404, "campaign_not_found")

        await api.projected(
            "select 1 from enrollments where enrollment_id = $1", enrollment["id"], what="the enrollment row"
        )
        rows = (await api.a.get("/campaigns/welcome/enrollments")).json()
        assert [(r["id"], r["contact_id"], r["status"], r["batch_number"]) for r in rows] == [
            (enrollment["id"], "c1", "pending", 1)
        ]
        row = rows[0]
        assert row["lifecycle_status"] == "pending" and row["priority"] is True
        assert (row["sent_at"], row["opened_at"], row["replied_at"], row["bounce_reason"]) == (None,) * 4
        assert row["step_label"] == "Step 1 of 2" and row["sender"] is None  # nothing sent yet
        assert (await api.a.get("/campaigns/welcome/enrollments?status=sent")).json() == []
        assert (
            len((await api.a.get("/campaigns/welcome/enrollments?status=pending&batch_number=1")).json()) == 1
        )
        assert (await api.a.get("/campaigns/welcome/enrollments?batch_number=0")).json() == []

        stats = (await api.a.get("/campaigns/welcome/stats")).json()
        assert (stats["total"], stats["active"], stats["stopped"]) == (1, 1, 0)
        why = (await api.a.get("/campaigns/welcome/contacts/c1/why")).json()
        assert why["contact_id"] == "c1"
        whats = [e["what"] for e in why["entries"]]
        assert "ContactEnrolled.v1" in whats and "rejected" in whats  # the second enroll: already enrolled
        refused = next(e for e in why["entries"] if e["what"] == "rejected")
        assert (
            refused["sentence"].startswith("Enroll ")
            and "refused (contact_already_enrolled)" in (refused["sentence"])
        )
        assert f"(Enroll {refused['command_id']} from " in refused["sentence"]  # which command, from whom
        assert (await api.a.get("/campaigns/welcome/replies")).json() == []
        missing = await api.a.get("/campaigns/welcome/contacts/never-seen/why")
        assert (missing.status_code, error_code(missing)) == (404, "contact_not_found")


@pytest.mark.timeout(240)
async def test_bulk_enroll_answers_seed_001s_summary_and_a_retry_with_its_key_answers_the_same(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    async with api_stack(settings, topics, database_url, contacts=0, imported=45) as api:
        request = {"contact_import_id": "import-1", "batch_size": 20}
        headers = {"Idempotency-Key": "import-1-welcome"}
        first = await api.a.post("/campaigns/welcome/enroll", json=request, headers=headers)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert (answer["enrolled"], answer["batches"], answer["batch_size"]) == (44, 3, 20)
        assert [(s["contact_id"], s["email"], s["kind"]) for s in answer["skipped"]] == [
            ("imp001", None, "missing_address")
        ]
        retried = await api.a.post("/campaigns/welcome/enroll", json=request, headers=headers)
        assert retried.status_code == 200 and retried.json() == answer
        bulk_rows = await api.rows("select count(*) as n from bulk_enrollments")
        enrollments = await api.rows("select count(*) as n from enrollments")
        assert (bulk_rows[0]["n"], enrollments[0]["n"]) == (1, 44)  # one effect

        unknown = await api.a.post(
            "/campaigns/welcome/enroll", json={"contact_import_id": "nope", "batch_size": 5}
        )
        assert (unknown.status_code, error_code(unknown)) == (404, "contact_import_not_found")

        skips = (await api.a.get("/campaigns/welcome/skips?kind=missing_address&limit=10")).json()
        assert [(s["contact_id"], s["kind"]) for s in skips] == [("imp001", "missing_address")]
        assert (await api.a.get("/campaigns/welcome/skips?kind=mx_invalid")).json() == []

        # Pages of 20 by default, in a stable order, the next page a Link; every row once.
        seen: list[str] = []
        url: str | None = "/campaigns/welcome/enrollments"
        pages = 0
        while url is not None:
            page = await api.a.get(url)
            assert page.status_code == 200, page.text
            seen += [r["id"] for r in page.json()]
            pages += 1
            link = page.headers.get("link")
            url = None if link is None else re.fullmatch(r'<(.+)>; rel="next"', link).group(1)  # type: ignore[union-attr]
        assert pages == 3 and len(seen) == 44 and len(set(seen)) == 44
        by_batch = await api.a.get("/campaigns/welcome/enrollments?batch_number=3&limit=100")
        assert len(by_batch.json()) == 5 and "link" not in by_batch.headers
        named = (await api.a.get("/campaigns/welcome/enrollments?name=imported 4")).json()
        assert sorted(r["contact_id"] for r in named) == [
            "imp004",
            "imp040",
            "imp041",
            "imp042",
            "imp043",
            "imp044",
        ]
        assert (
            len((await api.a.get("/campaigns/welcome/enrollments?group=active&step=1&limit=100")).json())
            == 44
        )
        assert (await api.a.get("/campaigns/welcome/enrollments?group=stopped")).json() == []
        bad_cursor = await api.a.get("/campaigns/welcome/enrollments?cursor=not-a-cursor")
        assert bad_cursor.status_code == 422
        assert [f["field"] for f in bad_cursor.json()["error"]["fields"]] == ["query.cursor"]


@pytest.mark.timeout(240)
async def test_stop_unenroll_and_mark_finished_a_selection_each_one_command_and_retries_one_effect(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    async with api_stack(settings, topics, database_url, contacts=4) as api:
        ids = []
        for i in range(4):
            created = await api.a.post("/campaigns/welcome/enroll_contact", json={"contact_id": f"c{i}"})
            assert created.status_code == 200, created.text
            ids.append(created.json()["id"])
        await api.projected(
            "select 1 from enrollments having count(*) = 4", what="the four enrollments projected"
        )

        key = {"Idempotency-Key": "stop-c0"}
        stopped = await api.a.post(
            "/campaigns/welcome/enrollments/stop", json={"enrollment_ids": [ids[0]]}, headers=key
        )
        assert stopped.status_code == 200, stopped.text
        [result] = stopped.json()["results"]
        assert (result["enrollment_id"], result["status"], result["code"]) == (ids[0], "accepted", None)
        retried = await api.a.post(
            "/campaigns/welcome/enrollments/stop", json={"enrollment_ids": [ids[0]]}, headers=key
        )
        assert retried.status_code == 200 and retried.json() == stopped.json()
        again = await api.a.post("/campaigns/welcome/enrollments/stop", json={"enrollment_ids": [ids[0]]})
        [refused] = again.json()["results"]
        assert (refused["status"], refused["code"]) == ("rejected", "invalid_transition")

        both = await api.a.post(
            "/campaigns/welcome/enrollments/unenroll",
            json={"enrollment_ids": [ids[1], ids[2]], "note": "asked"},
        )
        assert [r["status"] for r in both.json()["results"]] == ["accepted", "accepted"]
        finished = await api.a.post(
            "/campaigns/welcome/enrollments/mark_finished", json={"enrollment_ids": [ids[3]]}
        )
        assert [r["status"] for r in finished.json()["results"]] == ["accepted"]

        unknown = await api.a.post(
            "/campaigns/welcome/enrollments/stop", json={"enrollment_ids": [ids[3], "nope"]}
        )
        assert (unknown.status_code, error_code(unknown)) == (404, "enrollment_not_found")
        other_campaign = await api.a.post(
            "/campaigns/other/enrollments/stop", json={"enrollment_ids": [ids[3]]}
        )
        assert (other_campaign.status_code, error_code(other_campaign)) == (404, "enrollment_not_found")

        await api.projected(
            "select 1 from enrollments where enrollment_id = $1 and status = 'stopped'",
            ids[3],
            what="the marked-finished enrollment projected",
        )
        rows = await api.rows(
            "select enrollment_id, status, stop_reason from enrollments order by enrollment_id"
        )
        assert {r["enrollment_id"]: (r["status"], r["stop_reason"]) for r in rows} == {
            ids[0]: ("stopped", "manual"),
            ids[1]: ("unenrolled", None),
            ids[2]: ("unenrolled", None),
            ids[3]: ("stopped", "marked_finished"),
        }
        stops = await api.rows(
            "select count(*) as n from enrollment_timeline"
            " where enrollment_id = $1 and type = 'EnrollmentStopped.v1'",
            ids[0],
        )
        assert stops[0]["n"] == 1  # the retried Stop had no second effect
        stopped_group = (await api.a.get("/campaigns/welcome/enrollments?group=stopped")).json()
        assert sorted(r["id"] for r in stopped_group) == sorted([ids[0], ids[3]])
        stats = (await api.a.get("/campaigns/welcome/stats")).json()
        assert (stats["total"], stats["stopped"], stats["unenrolled"], stats["active"]) == (4, 2, 2, 0)


@pytest.mark.timeout(120)
async def test_replies_are_newest_first_with_hours_to_reply_and_only_the_accounts(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    # The replies read model as the projector leaves it after two replies in A's campaign and one in B's
    # (same campaign id); driving real replies needs a dispatcher and an inbound mailbox (test_inbound.py).
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    for campaign in (drip(A), drip(B)):
        await publish_campaign(bootstrap, topics.campaigns, campaign)
    conn = await asyncpg.connect(database_url)
    try:
        for event_id, account, hours, at in (
            ("r1", A, "1.50", "2026-11-02 10:00+00"),
            ("r2", A, None, "2026-11-03 10:00+00"),
            ("r3", B, "9.00", "2026-11-04 10:00+00"),
        ):
            await conn.execute(
                "insert into replies (event_id, account_id, contact_id, campaign_id, enrollment_id,"
                " replied_at, hours_to_reply, first_reply, reply_action, excerpt)"
                " values ($1, $2, 'k-' || $1, 'welcome', 'e-' || $1, $3::text::timestamptz,"
                " $4::text::numeric, true, 'stop', 'ok')",
                event_id, account, at, hours,
            )  # fmt: skip
    finally:
        await conn.close()
    key_a = await new_key(database_url, A)
    async with running_api(settings) as server, client_for(server, key_a) as as_a:
        replies = (await as_a.get("/campaigns/welcome/replies")).json()
        assert [(r["enrollment_id"], r["hours_to_reply"], r["reply_action"]) for r in replies] == [
            ("e-r2", None, "stop"),
            ("e-r1", 1.5, "stop"),
        ]
        assert len((await as_a.get("/campaigns/welcome/replies?limit=1")).json()) == 1


@pytest.mark.timeout(240)
async def test_a_contact_put_over_http_is_read_back_and_enrolled_by_its_id(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    async with api_stack(settings, topics, database_url, contacts=0) as api:
        profile = {"name": "Grace", "email": "grace@example.org", "time_zone": "Europe/Berlin"}
        put = await api.a.put("/contacts/g1", json=profile, headers={"Idempotency-Key": "put-g1"})
        assert put.status_code == 200, put.text
        assert (put.json()["contact_id"], put.json()["status"]) == ("g1", "accepted")
        retried = await api.a.put("/contacts/g1", json=profile, headers={"Idempotency-Key": "put-g1"})
        assert retried.status_code == 200 and retried.json() == put.json()
        await api.projected(
            "select 1 from contacts where account_id = $1 and contact_id = 'g1'", A, what="the contact row"
        )
        read = (await api.a.get("/contacts/g1")).json()
        assert (read["name"], read["email"], read["time_zone"], read["opted_out"]) == (
            "Grace",
            "grace@example.org",
            "Europe/Berlin",
            False,
        )
        enrolled = await api.a.post("/campaigns/welcome/enroll_contact", json={"contact_id": "g1"})
        assert enrolled.status_code == 200 and enrolled.json()["status"] == "pending"

        unknown = await api.a.get("/contacts/nobody")
        assert (unknown.status_code, error_code(unknown)) == (404, "contact_not_found")
        bad = await api.a.put("/contacts/g2", json={"time_zone": "Mars/Olympus", "email": "x" * 321})
        assert bad.status_code == 422
        assert sorted(f["field"] for f in bad.json()["error"]["fields"]) == ["body.email", "body.time_zone"]
        theirs = await api.b.get("/contacts/g1")
        assert (theirs.status_code, error_code(theirs)) == (404, "contact_not_found")


@pytest.mark.timeout(240)
async def test_a_bulk_enroll_needs_no_kafka_producer_contacts_and_the_import_go_over_http(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    """Seed 001's bulk enroll from HTTP alone: the directory has c0..c2 (PUT /contacts), the import lists
    two of them by id, one with inline facts and one unknown id; B's key cannot use A's import."""
    async with api_stack(settings, topics, database_url) as api:
        body = {
            "contacts": [
                {"contact_id": "c1"},
                {"contact_id": "c2"},
                {"contact_id": "inline-1", "contact": {"name": "Inline", "email": "inline@example.org"}},
                {"contact_id": "ghost"},
            ]
        }
        put = await api.a.put("/contact_imports/http-import", json=body)
        assert put.status_code == 200, put.text
        assert put.json() == {"contact_import_id": "http-import", "contacts": 4}

        # The import is A's: B's key enrolling from it finds no such import, and nothing is enrolled.
        foreign = await api.b.post(
            "/campaigns/welcome/enroll", json={"contact_import_id": "http-import", "batch_size": 10}
        )
        assert (foreign.status_code, error_code(foreign)) == (404, "contact_import_not_found")

        enrolled = await api.a.post(
            "/campaigns/welcome/enroll", json={"contact_import_id": "http-import", "batch_size": 10}
        )
        assert enrolled.status_code == 200, enrolled.text
        answer = enrolled.json()
        assert (answer["enrolled"], answer["batches"]) == (3, 1)
        assert [(s["contact_id"], s["kind"]) for s in answer["skipped"]] == [("ghost", "contact_not_found")]
        rows = await api.rows("select account_id, contact_id from enrollments order by contact_id")
        assert [(r["account_id"], r["contact_id"]) for r in rows] == [(A, "c1"), (A, "c2"), (A, "inline-1")]

        # Bounded where it enters: no MX answer from a caller, no empty list, no field it does not know.
        for bad in (
            {"contacts": []},
            {"contacts": [{"contact_id": "x", "mx": {"domain": "a.example", "valid": True}}]},
            {"contacts": [{"contact_id": "a/b"}]},
            {"contacts": [{"contact_id": "x", "contact": {"name": "bad\x00name"}}]},
        ):
            refused = await api.a.put("/contact_imports/bad-import", json=bad)
            assert (refused.status_code, error_code(refused)) == (422, "invalid_request"), bad
        missing = await api.a.post(
            "/campaigns/welcome/enroll", json={"contact_import_id": "bad-import", "batch_size": 10}
        )
        assert error_code(missing) == "contact_import_not_found"  # no refused body was published
