"""The Enrollments console (seeds 000, 003, 004) in a real headless Chromium, driven by Playwright.

One worker (decider, projector, api) over the test's own topics and database; contacts are enrolled
through Enroll commands with inline facts, one of them named `<script>alert(1)</script>`. The browser
signs in with an API key and checks the page against SQL: the cards, the table, the filters, the
search, the pages both ways; stops a contact through the confirmation and sees its row change; sees a
stop made elsewhere arrive without a reload; runs the batch actions; reads the contact's "why". A second
test checks the walls: no key, a revoked key, another account, a POST without the CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.api_keys import create_api_key, revoke_api_key
from enrollstream.api import ApiServer
from enrollstream.client import EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from tests.servers.smtp import RecordingSmtpServer
from tests.support import read_until, running_worker

pytestmark = pytest.mark.acceptance

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by `make` (scripts/install-debian-package.sh)
ACCOUNT, OTHER = "acct-console", "acct-elsewhere"
CAMPAIGN = "welcome"
PULSE = "pulse"  # one second between steps: the page follows its sends live
SENDING_ROLES = ("decider", "projector", "scheduler", "dispatcher", "api")
SCRIPT_NAME = "<script>alert(1)</script>"
ORDINARY = [f"c{i:02d}" for i in range(1, 26)]  # 25 + the <script> contact: two pages of 20
# The screenshots in docs/img are refreshed only when asked (`ENROLLSTREAM_SCREENSHOTS=docs/img`), so a test
# run leaves the tree as it found it; otherwise they go to a temporary directory.
IMG = Path(os.environ.get("ENROLLSTREAM_SCREENSHOTS") or tempfile.mkdtemp(prefix="enrollstream-screenshots-"))


def welcome(
    account: str = ACCOUNT,
    campaign_id: str = CAMPAIGN,
    name: str = "Welcome",
    delays: tuple[str, ...] = ("PT30M", "P2D", "P5D"),
) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": account,
            "version": 1,
            "status": "active",
            "name": name,
            "reply_action": "stop",
            "steps": [
                {"channel": "email", "delay": delay,
                 "content": {"subject": f"Step {n}", "body": "Hello {{ name }}"}}
                for n, delay in enumerate(delays, start=1)
            ],
        }
    )  # fmt: skip


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def console_stack(
    settings: Settings, roles: tuple[str, ...] = ("decider", "projector", "api")
) -> AsyncIterator[tuple[ApiServer, EnrollstreamClient]]:
    """The worker with the api role, the campaigns, and the enrolled contacts (projected)."""
    settings = settings.model_copy(update={"api_port": 0})
    assert settings.kafka_bootstrap_servers and settings.database_url
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    async with running_worker(settings, roles) as worker:
        assert worker.api is not None
        topic = f"{settings.topic_prefix}campaigns"
        await publish_campaign(bootstrap, topic, welcome())
        await publish_campaign(bootstrap, topic, welcome(OTHER, "theirs", "Their campaign"))
        await publish_campaign(
            bootstrap, topic, welcome(campaign_id=PULSE, name="Pulse", delays=("PT1S",) * 3)
        )
        async with EnrollstreamClient(bootstrap, settings.topic_prefix, actor="crm") as client:
            contacts = [(c, f"Contact {c[1:]}", "alice" if i < 10 else "bob") for i, c in enumerate(ORDINARY)]
            contacts.append(("scripted", SCRIPT_NAME, "bob"))
            results = await asyncio.gather(
                *(
                    client.send(
                        client.envelope(
                            "Enroll.v1",
                            ACCOUNT,
                            {
                                "contact_id": contact_id,
                                "campaign_id": CAMPAIGN,
                                "contact": {
                                    "name": name,
                                    "email": f"{contact_id}@example.org",
                                    "mobile": f"+1555000{n:04d}",
                                },
                            },
                            actor=actor,
                        )
                    )
                    for n, (contact_id, name, actor) in enumerate(contacts)
                )
            )
            assert {r.status for r in results} == {"accepted"}, [r.message for r in results]

            async def projected() -> bool:
                conn = await asyncpg.connect(database_url)
                try:
                    total = await conn.fetchval(
                        "select total from campaign_stats where account_id = $1 and campaign_id = $2",
                        ACCOUNT,
                        CAMPAIGN,
                    )
                finally:
                    await conn.close()
                return total == len(contacts)

            await wait_for("the enrollments projected", projected)
            yield worker.api, client


async def sql(database_url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


async def launch(playwright: Any) -> Browser:
    browser: Browser = await playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
    )
    return browser


async def sign_in(page: Page, api: ApiServer, key: str) -> None:
    await page.goto(f"{api.url}/console/campaigns")
    assert page.url.endswith("/console/login"), "without a key the console asks for one"
    await page.fill("input[name=key]", key)
    await page.click("button.primary")
    await page.wait_for_url("**/console/campaigns")


async def rows_of(page: Page) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = await page.eval_on_selector_all(
        "#enrollments tbody tr[data-enrollment]",
        """trs => trs.map(tr => ({id: tr.dataset.enrollment, status: tr.dataset.status,
                                  contact: tr.querySelector('td.contact a').textContent,
                                  step: tr.querySelector('td.step').textContent.trim(),
                                  next: tr.querySelector('td.next').textContent.trim()}))""",
    )
    return rows


async def card(page: Page, key: str) -> int:
    return int(await page.inner_text(f"#live a.card[data-card={key}] .n"))


async def test_the_enrollments_page_in_a_real_browser(
    settings: Settings, database_url: str, smtp_server: RecordingSmtpServer
) -> None:
    key_conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_api_key(key_conn, ACCOUNT, "console test")
    finally:
        await key_conn.close()
    sending = settings.model_copy(
        update={
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "smtp_starttls": False,
            "sender_from": "Acme <hello@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "console-unsubscribe-key-0123456789",
            "scheduler_interval_ms": 100,
        }
    )
    async with console_stack(sending, SENDING_ROLES) as (api, client), async_playwright() as playwright:
        browser = await launch(playwright)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))

        # Sign in: the key goes into a Secure, HttpOnly, SameSite=Strict cookie, which Chromium keeps
        # over http://127.0.0.1 (loopback is a secure context).
        await sign_in(page, api, key)
        cookies = {c["name"]: c for c in await context.cookies()}
        session = cookies["enrollstream_key"]
        assert (session["secure"], session["httpOnly"], session["sameSite"]) == (True, True, "Strict")
        assert await page.locator("text=Their campaign").count() == 0, "another account's campaign"

        # The campaign list -> View Enrollments.
        await page.locator("tr", has_text="Welcome").locator("text=View Enrollments").click()
        await page.wait_for_url(f"**/console/campaigns/{CAMPAIGN}/enrollments")
        counted = dict(
            (await sql(database_url,
                       "select count(*) as total, count(*) filter (where status in ('pending', 'active')) as "
                       "active, count(*) filter (where status = 'stopped') as stopped from enrollments "
                       "where account_id = $1 and campaign_id = $2", ACCOUNT, CAMPAIGN))[0]
        )  # fmt: skip
        assert counted["total"] == 26
        assert await card(page, "total") == counted["total"]
        assert await card(page, "active") == counted["active"]
        for key_name in ("completed", "stopped", "failed", "processing"):
            assert await card(page, key_name) == 0

        # The table: 20 rows, in the page order, "Step 1 of 3", due in 30 minutes: Coming soon.
        order = [r["enrollment_id"] for r in await sql(
            database_url, "select enrollment_id from enrollments where account_id = $1 and campaign_id = $2 "
            "order by enrolled_at, enrollment_id", ACCOUNT, CAMPAIGN)]  # fmt: skip
        first = await rows_of(page)
        assert [r["id"] for r in first] == order[:20]
        assert {r["step"] for r in first} == {"Step 1 of 3"}
        assert all(r["next"].startswith("Coming soon") for r in first)

        # The <script> name is text: shown literally, never run.
        scripted = page.locator("#enrollments td.contact a", has_text=SCRIPT_NAME)
        if await scripted.count() == 0:
            await page.click("#next")
            await page.wait_for_selector("#previous")
        assert await page.locator("#enrollments td.contact a", has_text=SCRIPT_NAME).count() == 1
        assert dialogs == []
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments")

        # Pages forward and back.
        await page.click("#next")
        await page.wait_for_selector("#previous")
        second = await rows_of(page)
        assert [r["id"] for r in second] == order[20:]
        assert await page.locator("#next").count() == 0
        await page.click("#previous")
        await page.wait_for_selector("#next")
        assert [r["id"] for r in await rows_of(page)] == order[:20]
        assert await page.locator("#previous").count() == 0

        # Search by name, filter by step and by enrolling user.
        await page.fill("input[name=q]", "contact 1")
        await page.click("form.filters button")
        await page.wait_for_url("**q=contact+1**")
        found = await rows_of(page)
        expected = await sql(database_url, "select contact_name from enrollments where account_id = $1 and "
                             "contact_name ilike '%contact 1%'", ACCOUNT)  # fmt: skip
        assert sorted(r["contact"] for r in found) == sorted(r["contact_name"] for r in expected)
        assert len(found) == 10  # Contact 10 .. Contact 19
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments?by=alice")
        assert len(await rows_of(page)) == 10
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments?step=2")
        assert await rows_of(page) == []

        # Stop a contact: a confirmation that says it cannot be undone, then the row changes.
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments")
        target = page.locator("#enrollments tbody tr", has_text="Contact 03")
        await target.locator("a", has_text="Stop").click()
        await page.wait_for_selector("text=This cannot be undone.")
        await page.click("#confirm")
        await page.wait_for_url("**notice=**")
        assert "Stop: Contact 03: done" in await page.inner_text("#notice")
        row = page.locator("#enrollments tbody tr", has_text="Contact 03")
        await row.locator("xpath=self::*[@data-status='stopped']").wait_for(timeout=10_000)
        assert "manual" in await row.inner_text()
        await page.locator("#live a.card[data-card=stopped] .n", has_text="1").wait_for(timeout=10_000)

        # The Stopped filter shows it alone.
        await page.click(".tabs a[data-filter=stopped]")
        await page.wait_for_url("**status=stopped**")
        assert [r["contact"] for r in await rows_of(page)] == ["Contact 03"]

        # A stop made elsewhere shows up without a reload (the page polls its live fragment).
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments")
        await page.evaluate("window.notReloaded = true")
        [elsewhere] = await sql(database_url, "select enrollment_id from enrollments where account_id = $1 "
                                "and contact_id = 'c05'", ACCOUNT)  # fmt: skip
        result = await client.stop_enrollment(ACCOUNT, "c05", elsewhere["enrollment_id"])
        assert result.status == "accepted"
        await page.locator("#enrollments tbody tr[data-status=stopped]", has_text="Contact 05").wait_for(
            timeout=15_000
        )
        assert await page.evaluate("window.notReloaded") is True
        await page.screenshot(path=str(IMG / "console-enrollments.png"), full_page=True)

        # Batch: mark two contacts finished (confirmed), add two to a group (an operator request).
        for name in ("Contact 07", "Contact 08"):
            await page.locator("#enrollments tbody tr", has_text=name).locator("input.pick").check()
        assert await page.inner_text("#selected-count") == "2 selected"
        await page.click("button[data-batch=mark_finished]")
        await page.wait_for_selector("text=This cannot be undone.")
        await page.click("#confirm")
        await page.wait_for_url("**notice=**")
        for name in ("Contact 07", "Contact 08"):
            finished = page.locator("#enrollments tbody tr[data-status=stopped]", has_text=name)
            await finished.wait_for(timeout=10_000)
            assert "marked finished" in await finished.inner_text()
            assert "Finished, stopped" in await finished.inner_text()

        for name in ("Contact 09", "Contact 10"):
            await page.locator("#enrollments tbody tr", has_text=name).locator("input.pick").check()
        await page.click("button[data-batch=add_to_group]")
        await page.fill("input[name=group]", "VIP <b>list</b>")
        await page.click("#confirm")
        await page.wait_for_url("**notice=**")
        requests = await read_until(
            api.bootstrap, f"{settings.topic_prefix}operator-requests", lambda rs: len(rs) >= 2, timeout=15
        )
        groups = sorted((json.loads(r.value)["contact_id"], json.loads(r.value)["group"]) for r in requests)
        assert groups == [("c09", "VIP <b>list</b>"), ("c10", "VIP <b>list</b>")]

        # Send message: at most 10 contacts.
        await page.check("#select-all")
        await page.click("button[data-batch=send_message]")
        assert "up to 10 contacts" in await page.inner_text(".problem")

        # The page follows sends as they go out: two contacts of a campaign one second between steps,
        # enrolled while its page is open, reach Completed with their three emails, with no reload.
        await page.goto(f"{api.url}/console/campaigns/{PULSE}/enrollments")
        await page.evaluate("window.notReloaded = true")
        for contact_id, name in (("p1", "Pulse Ada"), ("p2", "Pulse Grace")):
            enrolled = await client.enroll(
                ACCOUNT, contact_id, PULSE, name=name, email=f"{contact_id}@example.org"
            )
            assert enrolled.status == "accepted"
        await page.locator("#live a.card[data-card=completed] .n", has_text="2").wait_for(timeout=30_000)
        assert [r["status"] for r in await rows_of(page)] == ["completed", "completed"]
        assert await page.evaluate("window.notReloaded") is True
        assert len(smtp_server.received_for("p1@example.org")) == 3
        assert len(smtp_server.received_for("p2@example.org")) == 3

        # The contact's "why", in plain words.
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments?q=contact+03")
        await page.click("#enrollments td.contact a")
        timeline = await page.inner_text("#timeline")
        assert "Enrolled by alice in the campaign." in timeline
        assert "Step 1 of 3 scheduled for" in timeline
        assert "Stopped by console: someone stopped it by hand. No more messages will be sent." in timeline
        await page.screenshot(path=str(IMG / "console-contact.png"), full_page=True)

        # The scripted contact's page: its name is the heading's text.
        await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/contacts/scripted")
        assert await page.inner_text("h1") == SCRIPT_NAME
        assert dialogs == []
        await browser.close()


async def test_the_console_keeps_its_walls(settings: Settings, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_api_key(conn, ACCOUNT, "console test")
        other_record, other_key = await create_api_key(conn, OTHER, "elsewhere")
    finally:
        await conn.close()
    async with console_stack(settings) as (api, _), async_playwright() as playwright:
        browser = await launch(playwright)
        context = await browser.new_context()
        page = await context.new_page()

        # A wrong key is refused at the form.
        await page.goto(f"{api.url}/console/login")
        await page.fill("input[name=key]", "es_nope_not-a-key")
        await page.click("button.primary")
        assert "unknown or revoked" in await page.inner_text(".problem")

        await sign_in(page, api, key)
        enrollments = f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments"
        page_answer = await page.goto(enrollments)
        assert page_answer is not None
        policy = page_answer.headers["content-security-policy"]
        scripts = policy.split("script-src")[1].split(";")[0]
        assert scripts.strip().startswith("'nonce-") and "unsafe-inline" not in scripts
        [row] = await sql(database_url, "select enrollment_id from enrollments where account_id = $1 and "
                          "contact_id = 'c01'", ACCOUNT)  # fmt: skip
        stop_url = f"{enrollments}/{row['enrollment_id']}/stop"

        # CSRF: the same session's POST without the token (or with a wrong one) is refused, no effect.
        for form in ({}, {"csrf": "x" * 40}):
            refused = await page.request.post(stop_url, form=form, max_redirects=0)
            assert refused.status == 403
        assert (await sql(database_url, "select status from enrollments where enrollment_id = $1",
                          row["enrollment_id"]))[0]["status"] == "pending"  # fmt: skip

        # Without the session cookie (another site's form cannot send it: SameSite=Strict), to the login.
        async with httpx.AsyncClient(base_url=api.url) as anonymous:
            answer = await anonymous.post(f"/console/campaigns/{CAMPAIGN}/enrollments/x/stop")
            assert answer.status_code in (303, 403)
            assert (await anonymous.get(f"/console/campaigns/{CAMPAIGN}/enrollments")).status_code == 303

        # Another account's key sees neither the campaign nor its contacts.
        other = await browser.new_context()
        other_page = await other.new_page()
        await sign_in(other_page, api, other_key)
        assert await other_page.locator("text=Their campaign").count() == 1
        assert await other_page.locator("text=Welcome").count() == 0
        for path in ("", "/live", f"/{row['enrollment_id']}/stop"):
            answer = await other_page.goto(f"{enrollments}{path}")
            assert answer is not None and answer.status == 404
        answer = await other_page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/contacts/c01")
        assert answer is not None and answer.status == 404

        # A revoked key is signed out on its next request.
        conn = await asyncpg.connect(database_url)
        try:
            await revoke_api_key(conn, other_record.key_id)
        finally:
            await conn.close()
        await other_page.goto(f"{api.url}/console/campaigns")
        assert other_page.url.endswith("/console/login")
        await browser.close()


async def test_the_as_of_view_shows_the_rows_and_cards_as_they_were(
    settings: Settings, database_url: str, topics: Topics
) -> None:
    """Issue 16: alice enrolled, her step 1 sent, then a reply; as of a moment between the send and the
    reply the view shows her active at step 2 of 3, as of now stopped (replied); another account's key
    gets a 404 for the campaign."""
    from tests.integration.test_as_of import ACCOUNT as AS_OF_ACCOUNT
    from tests.integration.test_as_of import BETWEEN, send_a_sequence

    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_api_key(conn, AS_OF_ACCOUNT, "as-of test")
        _, other_key = await create_api_key(conn, OTHER, "elsewhere")
    finally:
        await conn.close()
    assert settings.kafka_bootstrap_servers
    settings = settings.model_copy(update={"api_port": 0})
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, welcome(AS_OF_ACCOUNT))
    async with running_worker(settings, ("decider", "projector", "api")) as worker:
        assert worker.api is not None
        api = worker.api
        await send_a_sequence(settings, topics, worker)
        async with async_playwright() as playwright:
            browser = await launch(playwright)
            page = await (await browser.new_context()).new_page()
            await sign_in(page, api, key)
            await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/enrollments")
            await page.click("#as-of-link")
            await page.fill("input[name=at]", BETWEEN.strftime("%Y-%m-%dT%H:%M:%S"))
            await page.fill("input[name=contact]", "alice")
            await page.click("#as-of-form button")
            await page.wait_for_selector("#as-of-rows")
            alice = page.locator("#as-of-rows tr[data-contact=alice]")
            assert await alice.locator("[data-status]").get_attribute("data-status") == "active"
            assert (await alice.locator("td[data-step]").inner_text()).strip() == "Step 2 of 3"
            assert "timeline index" in await page.inner_text("#as-of-at")

            # The whole campaign then: its cards from a rebuild up to that moment.
            await page.fill("input[name=contact]", "")
            await page.click("#as-of-form button")
            await page.wait_for_selector("#as-of-cards")
            assert await page.inner_text("#as-of-cards [data-card=active] .n") == "2"  # alice and bob
            assert await page.inner_text("#as-of-cards [data-card=stopped] .n") == "0"
            statuses = await page.eval_on_selector_all(
                "#as-of-rows [data-status]", "els => els.map(e => e.dataset.status)"
            )
            assert sorted(statuses) == ["active", "pending"]

            # As of now: the reply stopped her.
            await page.fill("input[name=at]", "2099-01-01T00:00:00")
            await page.click("#as-of-form button")
            await page.wait_for_selector("#as-of-cards")
            assert await page.inner_text("#as-of-cards [data-card=stopped] .n") == "1"
            assert (
                await page.locator("#as-of-rows tr[data-contact=alice] [data-status]").get_attribute(
                    "data-status"
                )
                == "stopped"
            )

            # A time out of bounds is a readable refusal, not an error page.
            answer = await page.goto(f"{api.url}/console/campaigns/{CAMPAIGN}/as-of?at=1999-01-01")
            assert answer is not None and answer.status == 400
            assert "out of range" in await page.inner_text("#problem")

            # Another account's key: no such campaign.
            other = await (await browser.new_context()).new_page()
            await sign_in(other, api, other_key)
            answer = await other.goto(
                f"{api.url}/console/campaigns/{CAMPAIGN}/as-of?at=2099-01-01&contact=alice"
            )
            assert answer is not None and answer.status == 404
            await browser.close()
