"""Accounts are walls (issue 13): account B's key tries every endpoint with account A's campaign, contact,
enrollment, import and command ids, and gets the same 404s as for ids that do not exist, and no command
changes anything of A's. And invalid bodies and queries are 422 `invalid_request` naming each field."""

from __future__ import annotations

from typing import Any

import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.api.commands import command_id_for
from enrollstream.config import Settings
from tests.integration.test_api_enrollments import A, Api, B, api_stack, error_code
from tests.support import eventually


async def snapshot_of_a(api: Api) -> dict[str, Any]:
    enrollments = await api.rows(
        "select enrollment_id, status, stage, last_version, updated_at from enrollments"
        " where account_id = $1 order by enrollment_id",
        A,
    )
    decisions = await api.rows("select count(*) as n from decisions where account_id = $1", A)
    events = await api.rows("select count(*) as n from enrollment_timeline where account_id = $1", A)
    bulk = await api.rows("select count(*) as n from bulk_enrollments where account_id = $1", A)
    contacts = await api.rows("select * from contacts where account_id = $1 order by contact_id", A)
    return {
        "contacts": [dict(r) for r in contacts],
        "enrollments": [dict(r) for r in enrollments],
        "decisions": decisions[0]["n"],
        "events": events[0]["n"],
        "bulk": bulk[0]["n"],
    }


@pytest.mark.timeout(240)
async def test_another_accounts_key_gets_404_on_every_endpoint_and_changes_nothing(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    async with api_stack(settings, topics, database_url, contacts=2, imported=5) as api:
        created = await api.a.post(
            "/campaigns/welcome/enroll_contact", json={"contact_id": "c0"}, headers={"Idempotency-Key": "k1"}
        )
        assert created.status_code == 200, created.text
        enrollment_id = created.json()["id"]
        a_command = command_id_for(A, "POST /campaigns/welcome/enroll_contact", "k1")

        async def decided() -> bool:  # once the projector has the decision
            return (await api.a.get(f"/commands/{a_command}")).status_code == 200

        await eventually(decided, timeout=30, what="A's command answerable")
        await api.projected(
            "select 1 from enrollments where enrollment_id = $1",
            enrollment_id,
            what="A's enrollment projected",
        )
        before = await snapshot_of_a(api)

        # With A's campaign id: campaign_not_found everywhere, as for a campaign that does not exist.
        selection = {"enrollment_ids": [enrollment_id]}
        attempts: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", "/campaigns/other", None),
            ("POST", "/campaigns/other/enroll", {"contact_import_id": "import-1", "batch_size": 5}),
            ("POST", "/campaigns/other/enroll_contact", {"contact_id": "c1"}),
            ("GET", "/campaigns/other/enrollments", None),
            ("GET", "/campaigns/other/replies", None),
            ("GET", "/campaigns/other/skips", None),
            ("GET", "/campaigns/other/stats", None),
            ("POST", "/campaigns/other/enrollments/stop", selection),
            ("POST", "/campaigns/other/enrollments/unenroll", selection),
            ("POST", "/campaigns/other/enrollments/mark_finished", selection),
            ("GET", "/campaigns/other/contacts/c0/why", None),
        ]
        for method, path, body in attempts:
            answer = await api.b.request(method, path, json=body)
            assert (answer.status_code, error_code(answer)) == (404, "campaign_not_found"), (
                path,
                answer.text,
            )

        # With B's own campaign (B also has a `welcome`) and A's contact, import, enrollment, command ids.
        b_key = {"Idempotency-Key": "b-tries"}
        contact = await api.b.post(
            "/campaigns/welcome/enroll_contact", json={"contact_id": "c1"}, headers=b_key
        )
        assert (contact.status_code, error_code(contact)) == (404, "contact_not_found")
        imported = await api.b.post(
            "/campaigns/welcome/enroll",
            json={"contact_import_id": "import-1", "batch_size": 5},
            headers=b_key,
        )
        assert (imported.status_code, error_code(imported)) == (404, "contact_import_not_found")
        for action in ("stop", "unenroll", "mark_finished"):
            answer = await api.b.post(f"/campaigns/welcome/enrollments/{action}", json=selection)
            assert (answer.status_code, error_code(answer)) == (404, "enrollment_not_found"), action
        contact = await api.b.get("/contacts/c0")
        assert (contact.status_code, error_code(contact)) == (404, "contact_not_found")
        # B putting a contact of the same id makes B's contact; A's is untouched (checked below).
        put = await api.b.put("/contacts/c0", json={"name": "B's own c0"}, headers=b_key)
        assert put.status_code == 200, put.text
        why = await api.b.get("/campaigns/welcome/contacts/c0/why")
        assert (why.status_code, error_code(why)) == (404, "contact_not_found")
        command = await api.b.get(f"/commands/{a_command}")
        assert (command.status_code, error_code(command)) == (404, "command_not_found")
        assert (await api.b.get("/campaigns/welcome/enrollments")).json() == []
        assert (await api.b.get("/campaigns/welcome/skips")).json() == []
        b_stats = (await api.b.get("/campaigns/welcome/stats")).json()
        assert b_stats["total"] == 0

        # B's refused commands are decided and projected (as B's), and nothing of A's moved.
        b_enroll = command_id_for(B, "POST /campaigns/welcome/enroll_contact", "b-tries")
        b_bulk = command_id_for(B, "POST /campaigns/welcome/enroll", "b-tries")
        b_put = command_id_for(B, "PUT /contacts/c0", "b-tries")
        await api.projected(
            "select 1 from decisions where account_id = $1 and command_id = any($2::text[])"
            " having count(*) = 3",
            B,
            [b_enroll, b_bulk, b_put],
            what="B's refused commands projected",
        )
        assert await snapshot_of_a(api) == before
        a_rows = (await api.a.get("/campaigns/welcome/enrollments")).json()
        assert [(r["id"], r["status"], r["lifecycle_status"]) for r in a_rows] == [
            (enrollment_id, "pending", "pending")
        ]


@pytest.mark.timeout(240)
async def test_invalid_bodies_queries_and_headers_are_422_invalid_request_naming_each_field(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    async with api_stack(settings, topics, database_url, contacts=0) as api:
        before = await api.rows("select count(*) as n from decisions")
        cases: list[tuple[str, str, Any, dict[str, str], list[str]]] = [
            ("POST", "/campaigns/welcome/enroll_contact", {}, {}, ["body.contact_id"]),
            ("POST", "/campaigns/welcome/enroll_contact", {"contact_id": "a/b"}, {}, ["body.contact_id"]),
            ("POST", "/campaigns/welcome/enroll_contact", {"contact_id": "x" * 257}, {}, ["body.contact_id"]),
            ("POST", "/campaigns/welcome/enroll_contact", {"contact_id": "c\x00"}, {}, ["body.contact_id"]),
            (
                "POST",
                "/campaigns/welcome/enroll_contact",
                {"contact_id": "c1", "batch_number": -1, "priority": "maybe"},
                {},
                ["body.batch_number", "body.priority"],
            ),
            (
                "POST",
                "/campaigns/welcome/enroll_contact",
                {"contact_id": "c1", "batch_number": 2**31},
                {},
                ["body.batch_number"],
            ),
            (
                "POST",
                "/campaigns/welcome/enroll_contact",
                {"contact_id": "c1", "email": "x@y.z"},
                {},
                ["body.email"],
            ),
            ("POST", "/campaigns/welcome/enroll_contact", [1, 2], {}, ["body"]),
            (
                "POST",
                "/campaigns/welcome/enroll_contact",
                {"contact_id": "c1"},
                {"Idempotency-Key": "k" * 300},
                ["header.Idempotency-Key"],
            ),
            (
                "POST",
                "/campaigns/welcome/enroll",
                {"contact_import_id": "i", "batch_size": 0},
                {},
                ["body.batch_size"],
            ),
            ("POST", "/campaigns/welcome/enroll", {"batch_size": 5}, {}, ["body.contact_import_id"]),
            (
                "POST",
                "/campaigns/welcome/enrollments/stop",
                {"enrollment_ids": []},
                {},
                ["body.enrollment_ids"],
            ),
            (
                "POST",
                "/campaigns/welcome/enrollments/stop",
                {"enrollment_ids": [f"e{i}" for i in range(101)]},
                {},
                ["body.enrollment_ids"],
            ),
            ("POST", "/campaigns/welcome/enrollments/pause", {"enrollment_ids": ["e"]}, {}, ["path.action"]),
            ("GET", "/campaigns/welcome/enrollments?status=delivered", None, {}, ["query.status"]),
            ("GET", "/campaigns/welcome/enrollments?limit=0", None, {}, ["query.limit"]),
            (
                "GET",
                "/campaigns/welcome/enrollments?limit=101&batch_number=-1",
                None,
                {},
                ["query.batch_number", "query.limit"],
            ),
            (
                "GET",
                "/campaigns/welcome/enrollments?group=everyone&step=0",
                None,
                {},
                ["query.group", "query.step"],
            ),
            ("GET", "/campaigns/welcome/replies?limit=100000", None, {}, ["query.limit"]),
            ("GET", "/campaigns/welcome/skips?kind=weird", None, {}, ["query.kind"]),
        ]
        for method, path, body, headers, fields in cases:
            answer = await api.a.request(method, path, json=body, headers=headers)
            assert answer.status_code == 422, (path, body, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "invalid_request"
            assert sorted({f["field"] for f in error["fields"]}) == fields, (path, body, error)
        assert await api.rows("select count(*) as n from decisions") == before  # nothing was published
